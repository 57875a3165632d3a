using System.Text.Json;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;
using Nestor.Host;

namespace Nestor.Containers.Tests.Registry;

/// <summary>What Nestor pushes is read by Debian's skopeo and podman, and what skopeo pushes Nestor pulls.</summary>
public class RegistryInteroperabilityTests(OpenRegistryFixture fixture) : IClassFixture<OpenRegistryFixture>
{
    private readonly RegistryServer server = fixture.Server;

    /// <summary><c>skopeo inspect</c> of a Nestor push reports the manifest digest, the layer and the config's
    /// platform.</summary>
    [Fact]
    public async Task SkopeoInspectsWhatNestorPushed()
    {
        using var source = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        var made = TestImages.AddBusybox(store, "local/skopeo", "skopeo-inspect");
        var reference = ImageReference.Parse($"{server.Address}/interop/inspect:v1");
        await new ImageTransfer(new RegistryClientOptions()).PushAsync(store, "local/skopeo", reference);

        using var inspect = JsonDocument.Parse(RegistryServer.Run("skopeo", ["inspect", "--tls-verify=false", $"docker://{reference}"]));
        Assert.Equal(made.ManifestDigest, inspect.RootElement.GetProperty("Digest").GetString());
        Assert.Equal(made.LayerDigest, inspect.RootElement.GetProperty("Layers")[0].GetString());
        Assert.Equal("amd64", inspect.RootElement.GetProperty("Architecture").GetString());
    }

    /// <summary>An OCI layout (Nestor's own, written by the test) copied INTO the registry by <c>skopeo copy</c> is
    /// pulled by Nestor with the digest skopeo reports writing.</summary>
    [Fact]
    public async Task NestorPullsWhatSkopeoCopied()
    {
        using var layout = new TestImages.TemporaryDirectory();
        using var target = new TestImages.TemporaryDirectory();
        var made = TestImages.AddBusybox(new OciLayoutContentStore(layout.Path), "skopeo-source", "skopeo-copy");
        string digestFile = Path.Combine(layout.Path, "..", Path.GetFileName(layout.Path) + ".digest");
        var reference = ImageReference.Parse($"{server.Address}/interop/copied:v1");
        try
        {
            RegistryServer.Run("skopeo", ["copy", "--quiet", "--dest-tls-verify=false", "--digestfile", digestFile,
                $"oci:{layout.Path}:skopeo-source", $"docker://{reference}"]);
            string written = File.ReadAllText(digestFile).Trim();

            var pulled = await new ImageTransfer(new RegistryClientOptions()).PullAsync(reference, new OciLayoutContentStore(target.Path));
            Assert.Equal(written, pulled.ManifestDigest);
            Assert.True(new OciLayoutContentStore(target.Path).HasBlob(made.LayerDigest));
        }
        finally
        {
            File.Delete(digestFile);
        }
    }

    /// <summary>A Docker schema 2 image (skopeo converts the OCI layout with <c>--format v2s2</c>) pulls into the
    /// image store with skopeo's digest and resolves there; pushed on to another repository it keeps its Docker media
    /// type, so the registry stores the same digest.</summary>
    [Fact]
    public async Task DockerSchemaTwoPullsIntoTheStoreAndPushesUnchanged()
    {
        using var layout = new TestImages.TemporaryDirectory();
        using var stores = new TestImages.TemporaryDirectory();
        TestImages.AddBusybox(new OciLayoutContentStore(layout.Path), "schema2", "docker-schema2");
        string digestFile = Path.Combine(stores.Path, "digest");
        var reference = ImageReference.Parse($"{server.Address}/interop/schema2:v1");
        RegistryServer.Run("skopeo", ["copy", "--quiet", "--format", "v2s2", "--dest-tls-verify=false", "--digestfile", digestFile,
            $"oci:{layout.Path}:schema2", $"docker://{reference}"]);
        string written = File.ReadAllText(digestFile).Trim();
        var transfer = new ImageTransfer(new RegistryClientOptions());

        var store = ImageStore.Open(Path.Combine(stores.Path, "store"));
        var pulled = await transfer.PullAsync(reference, new ImageStoreContentStore(store));
        Assert.Equal(written, pulled.ManifestDigest);
        Assert.Equal(written, store.Resolve(reference.ToString()).ManifestDigest);
        var local = new ImageStoreContentStore(store).FindManifest(reference.ToString())!;
        Assert.Equal(OciMediaTypes.DockerManifest, local.MediaType);

        var onward = ImageReference.Parse($"{server.Address}/interop/schema2-onward:v1");
        await transfer.PushAsync(new ImageStoreContentStore(store), reference.ToString(), onward);
        using var client = new RegistryClient(server.Address);
        var served = await client.GetManifestAsync(onward.Repository, "v1");
        Assert.Equal(written, served.Digest);
        Assert.Equal(OciMediaTypes.DockerManifest, served.MediaType);
    }

    /// <summary>An unprivileged user (nestor-rootless) pulls with the built command into its own store
    /// ($XDG_DATA_HOME/nestor/images), which then lists the image under the pulled name.</summary>
    [Fact]
    public async Task UnprivilegedUserPullsIntoItsOwnStore()
    {
        using var source = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        var made = TestImages.AddBusybox(store, "local/rootless", "rootless");
        var reference = ImageReference.Parse($"{server.Address}/interop/rootless:v1");
        await new ImageTransfer(new RegistryClientOptions()).PushAsync(store, "local/rootless", reference);
        using var data = new TestImages.TemporaryDirectory();
        RegistryServer.Run("chown", ["nestor-rootless:", data.Path]);
        string nestor = Path.Combine(AppContext.BaseDirectory, "nestor");
        string[] asUser = ["-u", "nestor-rootless", "--", "env", "HOME=/home/nestor-rootless", $"XDG_DATA_HOME={data.Path}",
            "REGISTRY_AUTH_FILE=/nonexistent/auth.json", nestor, "image"];

        string digest = RegistryServer.Run("runuser", [.. asUser, "pull", "--quiet", reference.ToString()]).Trim();
        Assert.Equal(made.ManifestDigest, digest);
        Assert.Contains("interop/rootless", RegistryServer.Run("runuser", [.. asUser, "ls"]));
        string index = Path.Combine(data.Path, "nestor", "images", "index.json");
        Assert.Equal(uint.Parse(RegistryServer.Run("id", ["-u", "nestor-rootless"]).Trim()), FileSystemCalls.LStat(index).Uid);
    }

    /// <summary><c>podman pull</c> of a Nestor push stores the same manifest digest; the image is removed after.</summary>
    [Fact]
    public async Task PodmanPullsWhatNestorPushed()
    {
        using var source = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        string tag = "t" + Guid.NewGuid().ToString("N")[..10];
        var made = TestImages.AddBusybox(store, "local/podman", "podman-" + tag);
        var reference = ImageReference.Parse($"{server.Address}/interop/podman:{tag}");
        await new ImageTransfer(new RegistryClientOptions()).PushAsync(store, "local/podman", reference);
        try
        {
            RegistryServer.Run("podman", ["pull", "--quiet", "--tls-verify=false", reference.ToString()]);
            string digest = RegistryServer.Run("podman", ["image", "inspect", "--format", "{{.Digest}}", reference.ToString()]).Trim();
            Assert.Equal(made.ManifestDigest, digest);
        }
        finally
        {
            try
            {
                RegistryServer.Run("podman", ["rmi", "--force", reference.ToString()]);
            }
            catch (Exception)
            {
                // Nothing to remove when the pull itself failed; the assertion above already says why.
            }
        }
    }
}
