using Nestor.Containers.Images;
using Nestor.Containers.Registry;
using TemporaryDirectory = Nestor.Containers.Tests.Images.TemporaryDirectory;

namespace Nestor.Containers.Tests.Registry;

/// <summary>Pull and push through the local <see cref="ImageStore"/> (not a bare layout): an image imported from a
/// busybox root file system goes to docker-registry and comes back into a fresh store as the same image.</summary>
public class ImageStoreTransferTests(OpenRegistryFixture fixture) : IClassFixture<OpenRegistryFixture>
{
    private readonly RegistryServer server = fixture.Server;

    /// <summary>Same manifest digest, same image id, the name the pull gave it, and a root file system with the
    /// imported files (busybox's bytes, the sh link, /etc/passwd).</summary>
    [Fact]
    public async Task ImportedImageRoundTripsThroughTheRegistry()
    {
        using var directory = new TemporaryDirectory("registry-store");
        string rootfs = directory.Combine("rootfs");
        TemporaryDirectory.MakeBusyboxRoot(rootfs);
        var source = ImageStore.Open(directory.Combine("source"));
        var imported = source.ImportRootFileSystem(rootfs, "busybox:registry");
        var destination = ImageReference.Parse($"{server.Address}/store/busybox:v1");
        var transfer = new ImageTransfer(new RegistryClientOptions());

        var pushed = await transfer.PushAsync(new ImageStoreContentStore(source), "busybox:registry", destination);
        Assert.Equal(imported.ManifestDigest, pushed.ManifestDigest);
        Assert.Contains($"{server.Address}/store/busybox:v1", source.Resolve(imported.Id).References);

        var target = ImageStore.Open(directory.Combine("target"));
        var pulled = await transfer.PullAsync(destination, new ImageStoreContentStore(target));
        Assert.Equal(imported.ManifestDigest, pulled.ManifestDigest);
        var image = target.Resolve($"{server.Address}/store/busybox:v1");
        Assert.Equal(imported.Id, image.Id);
        Assert.Equal(imported.LayerDiffIds, image.LayerDiffIds);
        Assert.Equal([$"{server.Address}/store/busybox:v1"], image.References);

        var root = target.CreateRootFileSystem(image, directory.Combine("container"));
        string lower = Assert.Single(root.LowerDirectories);
        Assert.Equal(File.ReadAllBytes("/bin/busybox"), File.ReadAllBytes(Path.Combine(lower, "bin", "busybox")));
        Assert.Equal("busybox", new FileInfo(Path.Combine(lower, "bin", "sh")).LinkTarget);
        Assert.Equal(File.ReadAllText(Path.Combine(rootfs, "etc", "passwd")), File.ReadAllText(Path.Combine(lower, "etc", "passwd")));
    }

    /// <summary>Pushing a name the store does not have says so and sends nothing.</summary>
    [Fact]
    public async Task PushOfAnUnknownImageSaysSo()
    {
        using var directory = new TemporaryDirectory("registry-store-missing");
        var store = ImageStore.Open(directory.Combine("store"));
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(new RegistryClientOptions())
            .PushAsync(new ImageStoreContentStore(store), "nothing:here", ImageReference.Parse($"{server.Address}/store/nothing")));
        Assert.Equal(RegistryFailure.ManifestUnknown, e.Failure);
        Assert.Contains("nothing:here", e.Message);
    }
}
