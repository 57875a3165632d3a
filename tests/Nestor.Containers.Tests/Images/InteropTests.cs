using System.Text.Json;
using Nestor.Containers.Images;

namespace Nestor.Containers.Tests.Images;

/// <summary>Nestor's archives and layouts read by the real tools (Debian's podman, skopeo, umoci) and theirs read by
/// Nestor. Podman runs on a private storage root (vfs driver) inside the test's directory, so no image is left in the
/// machine's podman store.</summary>
public class InteropTests
{
    private sealed class Podman(TemporaryDirectory directory)
    {
        public string Run(params string[] arguments) => TemporaryDirectory.Run("podman",
            ["--root", directory.Combine("proot"), "--runroot", directory.Combine("prun"), "--storage-driver", "vfs", .. arguments]);
    }

    private static (TemporaryDirectory, ImageStore, StoredImage, string Name) Busybox(string purpose)
    {
        var directory = new TemporaryDirectory(purpose);
        var store = ImageStore.Open(directory.Combine("store"));
        string name = $"localhost/nestor-interop-{Guid.NewGuid().ToString("N")[..8]}:v1";
        return (directory, store, ImageBootstrap.Busybox(store, name), name);
    }

    private static string Save(ImageStore store, string name, ImageArchiveFormat format, string path)
    {
        using var file = File.Create(path);
        ImageArchive.Save(store, [name], file, format);
        return path;
    }

    /// <summary>podman loads Nestor's docker-archive and oci-archive under the image's name and id, runs a container
    /// from it, and its own save of the image loads back into Nestor with the same config and files.</summary>
    [Theory]
    [InlineData(ImageArchiveFormat.DockerArchive, "docker-archive")]
    [InlineData(ImageArchiveFormat.OciArchive, "oci-archive")]
    public void PodmanLoadsRunsAndSavesBack(ImageArchiveFormat format, string podmanFormat)
    {
        var (directory, store, image, name) = Busybox("podman-" + podmanFormat);
        using var _ = directory;
        var podman = new Podman(directory);
        try
        {
            string archive = Save(store, name, format, directory.Combine("nestor.tar"));
            Assert.Contains(name, podman.Run("load", "-i", archive));
            Assert.Equal(image.Id, "sha256:" + podman.Run("image", "inspect", "--format", "{{.Id}}", name).Trim());
            string passwd = podman.Run("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                name, "cat", "/etc/passwd");
            Assert.Equal(File.ReadAllText(Path.Combine(store.LayerDirectory(image.LayerDiffIds[0]), "etc", "passwd")), passwd);

            string back = directory.Combine("podman.tar");
            podman.Run("save", "--format", podmanFormat, "-o", back, name);
            var other = ImageStore.Open(directory.Combine("other"));
            using (var file = File.OpenRead(back))
            {
                var (loaded, loadedName) = Assert.Single(ImageArchive.Load(other, file));
                Assert.Equal(image.Id, loaded.Id);
                Assert.Equal(ImageReference.Parse(name).FamiliarName, loadedName);
                Assert.Equal(image.LayerDiffIds, loaded.LayerDiffIds);
            }
            Assert.Equal(store.Layout.ReadBlob(image.Id), other.Layout.ReadBlob(image.Id));
            Assert.Equal(File.ReadAllBytes(Path.Combine(store.LayerDirectory(image.LayerDiffIds[0]), "bin", "busybox")),
                File.ReadAllBytes(Path.Combine(other.LayerDirectory(image.LayerDiffIds[0]), "bin", "busybox")));
        }
        finally
        {
            try
            {
                podman.Run("rmi", "-f", name);
            }
            catch (InvalidOperationException)
            {
                // not loaded: nothing to remove
            }
        }
    }

    /// <summary>skopeo copies Nestor's oci-archive and docker-archive into a dir: layout with the same config digest,
    /// and copies that back into both archive formats, which Nestor loads as the same image.</summary>
    [Fact]
    public void SkopeoCopiesBothWays()
    {
        var (directory, store, image, name) = Busybox("skopeo");
        using var _ = directory;
        var other = ImageStore.Open(directory.Combine("other"));
        foreach (var (format, transport) in new[] { (ImageArchiveFormat.OciArchive, "oci-archive"), (ImageArchiveFormat.DockerArchive, "docker-archive") })
        {
            string archive = Save(store, name, format, directory.Combine(transport + ".tar"));
            string copied = directory.Combine(transport + "-dir");
            TemporaryDirectory.Run("skopeo", "--insecure-policy", "copy", $"{transport}:{archive}", $"dir:{copied}");
            using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(copied, "manifest.json")));
            Assert.Equal(image.Id, manifest.RootElement.GetProperty("config").GetProperty("digest").GetString());

            string again = directory.Combine(transport + "-again.tar");
            string target = transport == "oci-archive" ? $"oci-archive:{again}:{name}" : $"docker-archive:{again}:{name}";
            TemporaryDirectory.Run("skopeo", "--insecure-policy", "copy", $"dir:{copied}", target);
            using var file = File.OpenRead(again);
            var (loaded, loadedName) = Assert.Single(ImageArchive.Load(other, file));
            Assert.Equal(image.Id, loaded.Id);
            Assert.Equal(ImageReference.Parse(name).FamiliarName, loadedName);
        }
    }

    /// <summary>umoci unpacks an image from the store's own directory (it is an OCI layout) and from a saved
    /// oci-archive, into a runtime bundle whose root has the image's files.</summary>
    [Fact]
    public void UmociUnpacksTheLayout()
    {
        var (directory, store, image, name) = Busybox("umoci");
        using var _ = directory;
        string full = ImageReference.Parse(name).ToString();
        string bundle = directory.Combine("bundle");
        TemporaryDirectory.Run("umoci", "unpack", "--image", $"{store.Root}:{full}", bundle);
        Assert.Equal(File.ReadAllBytes(Path.Combine(store.LayerDirectory(image.LayerDiffIds[0]), "etc", "passwd")),
            File.ReadAllBytes(Path.Combine(bundle, "rootfs", "etc", "passwd")));
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(bundle, "config.json")));
        Assert.Equal("sh", config.RootElement.GetProperty("process").GetProperty("args")[0].GetString());

        string layout = directory.Combine("saved-layout");
        Directory.CreateDirectory(layout);
        System.Formats.Tar.TarFile.ExtractToDirectory(Save(store, name, ImageArchiveFormat.OciArchive, directory.Combine("oci.tar")), layout, false);
        string second = directory.Combine("bundle2");
        TemporaryDirectory.Run("umoci", "unpack", "--image", $"{layout}:{full}", second);
        Assert.True(File.Exists(Path.Combine(second, "rootfs", "bin", "busybox")));
    }
}
