using Nestor.Containers.Images;
using Nestor.Containers.Storage;

namespace Nestor.Containers.Tests.Images;

public class ImageStoreTests
{
    /// <summary>An imported root file system is found by its name, its id and an id prefix, is listed, and keeps the
    /// store a valid OCI layout (oci-layout, index.json naming it with the full reference).</summary>
    [Fact]
    public void ImportResolveAndList()
    {
        using var directory = new TemporaryDirectory("import");
        string rootfs = directory.Combine("rootfs");
        TemporaryDirectory.MakeBusyboxRoot(rootfs);
        var store = ImageStore.Open(directory.Combine("store"));
        var image = store.ImportRootFileSystem(rootfs, "busybox:test");
        Assert.Equal(["busybox:test"], image.References);
        Assert.Single(image.LayerDiffIds);
        Assert.Equal(image.Id, store.Resolve("docker.io/library/busybox:test").Id);
        Assert.Equal(image.Id, store.Resolve(image.Id[7..19]).Id);
        Assert.Equal(image.Id, store.Resolve(image.Id).Id);
        Assert.Throws<ImageNotFoundException>(() => store.Resolve("busybox:other"));
        Assert.Equal(image.Id, Assert.Single(store.List()).Id);
        var (refName, _) = Assert.Single(OciLayout.Open(store.Root).ReadManifests());
        Assert.Equal("docker.io/library/busybox:test", refName);
        Assert.True(File.Exists(Path.Combine(store.LayerDirectory(image.LayerDiffIds[0]), "bin", "busybox")));
    }

    /// <summary>A tag adds a name, removing one name keeps the image, removing the last deletes it and its blobs.</summary>
    [Fact]
    public void TagAndRemove()
    {
        using var directory = new TemporaryDirectory("tag");
        string rootfs = directory.Combine("rootfs");
        TemporaryDirectory.MakeBusyboxRoot(rootfs);
        var store = ImageStore.Open(directory.Combine("store"));
        var image = store.ImportRootFileSystem(rootfs, "busybox:one");
        store.Tag("busybox:one", "localhost:5000/x/y:two");
        Assert.Equal(["busybox:one", "localhost:5000/x/y:two"], store.Resolve("busybox:one").References);
        Assert.Throws<ImageStoreException>(() => store.Remove(image.Id, force: false));
        Assert.Equal(["Untagged: busybox:one"], store.Remove("busybox:one", force: false));
        Assert.Equal(image.Id, store.Resolve("localhost:5000/x/y:two").Id);
        var report = store.Remove("localhost:5000/x/y:two", force: false);
        Assert.Contains("Deleted: " + image.Id, report);
        Assert.Empty(store.List());
        Assert.False(store.Layout.HasBlob(image.Id));
        Assert.False(Directory.Exists(store.LayerDirectory(image.LayerDiffIds[0])));
    }

    /// <summary>The overlay root made from an image shows the image's files, and writes land in the upper directory.</summary>
    [Fact]
    public void RootFileSystemMountsAsOverlay()
    {
        using var directory = new TemporaryDirectory("overlay");
        string rootfs = directory.Combine("rootfs");
        TemporaryDirectory.MakeBusyboxRoot(rootfs);
        var store = ImageStore.Open(directory.Combine("store"));
        var image = store.ImportRootFileSystem(rootfs, "busybox:overlay");
        var root = store.CreateRootFileSystem(image, directory.Combine("container"));
        root.Mount();
        try
        {
            Assert.Equal("root:x:0:0:root:/root:/bin/sh\n", File.ReadAllText(Path.Combine(root.MergedDirectory, "etc", "passwd")));
            File.WriteAllText(Path.Combine(root.MergedDirectory, "etc", "hostname"), "written\n");
            Assert.True(File.Exists(Path.Combine(root.UpperDirectory, "etc", "hostname")));
            Assert.False(File.Exists(Path.Combine(store.LayerDirectory(image.LayerDiffIds[0]), "etc", "hostname")));
        }
        finally
        {
            OverlayMount.Unmount(root.MergedDirectory);
        }
    }
}
