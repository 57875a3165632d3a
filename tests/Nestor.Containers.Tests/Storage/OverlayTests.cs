using Nestor.Containers.Images;
using Nestor.Containers.Storage;
using Nestor.Containers.Tests.Images;
using Nestor.Host;

namespace Nestor.Containers.Tests.Storage;

public class OverlayTests
{
    /// <summary>Three layers, mounted as an overlay: the second deletes a file (whiteout) and the third replaces a
    /// directory's contents (opaque); the merged root shows exactly what the top layer says. The layers are made by
    /// Commit from overlay upper directories, so the whiteouts go kernel form → .wh. tar → kernel form.</summary>
    [Fact]
    public void WhiteoutsAndOpaqueDirectoriesShowThroughTheOverlay()
    {
        using var directory = new TemporaryDirectory("whiteout-overlay");
        var store = ImageStore.Open(directory.Combine("store"));
        string rootfs = directory.Combine("rootfs");
        TemporaryDirectory.MakeBusyboxRoot(rootfs);
        Directory.CreateDirectory(Path.Combine(rootfs, "data"));
        File.WriteAllText(Path.Combine(rootfs, "data", "old-1"), "1");
        File.WriteAllText(Path.Combine(rootfs, "data", "old-2"), "2");
        File.WriteAllText(Path.Combine(rootfs, "etc", "doomed"), "bye");
        var base_ = store.ImportRootFileSystem(rootfs, "layers:base");

        // Layer 2: delete /etc/doomed in a mounted container root; its upper gets the kernel's whiteout.
        var second = CommitChanges(store, base_, directory.Combine("c1"), merged => File.Delete(Path.Combine(merged, "etc", "doomed")), "layers:second", "rm /etc/doomed");
        // Layer 3: replace /data by a new directory: the kernel marks it opaque in the upper.
        var third = CommitChanges(store, second, directory.Combine("c2"), merged =>
        {
            Directory.Delete(Path.Combine(merged, "data"), recursive: true);
            Directory.CreateDirectory(Path.Combine(merged, "data"));
            File.WriteAllText(Path.Combine(merged, "data", "new"), "n");
        }, "layers:third", "replace /data");
        Assert.Equal(3, third.LayerDiffIds.Count);
        Assert.Equal(["layers:third"], third.References);

        var root = store.CreateRootFileSystem(third, directory.Combine("c3"));
        Assert.Equal(3, root.LowerDirectories.Count);
        root.Mount();
        try
        {
            Assert.False(File.Exists(Path.Combine(root.MergedDirectory, "etc", "doomed")));
            Assert.True(File.Exists(Path.Combine(root.MergedDirectory, "etc", "passwd")));
            Assert.Equal(["new"], Directory.EnumerateFileSystemEntries(Path.Combine(root.MergedDirectory, "data")).Select(Path.GetFileName));
        }
        finally
        {
            OverlayMount.Unmount(root.MergedDirectory);
        }
        // and the lower image is unchanged
        var baseRoot = store.CreateRootFileSystem(base_, directory.Combine("c4"));
        baseRoot.Mount();
        try
        {
            Assert.True(File.Exists(Path.Combine(baseRoot.MergedDirectory, "etc", "doomed")));
            Assert.Equal(2, Directory.EnumerateFileSystemEntries(Path.Combine(baseRoot.MergedDirectory, "data")).Count());
        }
        finally
        {
            OverlayMount.Unmount(baseRoot.MergedDirectory);
        }
        var history = store.ReadConfiguration(third).History!;
        Assert.Equal(["replace /data", "rm /etc/doomed"], history.AsEnumerable().Reverse().Take(2).Select(h => h.CreatedBy));
    }

    private static StoredImage CommitChanges(ImageStore store, StoredImage parent, string containerDirectory, Action<string> change, string reference, string createdBy)
    {
        var root = store.CreateRootFileSystem(parent, containerDirectory);
        root.Mount();
        try
        {
            change(root.MergedDirectory);
        }
        finally
        {
            OverlayMount.Unmount(root.MergedDirectory);
        }
        return store.Commit(parent, root.UpperDirectory, parent.Config, reference, createdBy);
    }

    /// <summary>Layers unpacked for a rootless store (opaque directories marked user.overlay.opaque, whiteouts as
    /// 0/0 devices) give the right merged view when the unprivileged user mounts them with userxattr in its own user
    /// and mount namespace.</summary>
    [Fact]
    public void RootlessOverlayReadsUserXattrWhiteouts()
    {
        using var directory = new TemporaryDirectory("rootless-overlay");
        var rootless = new LayerUnpackOptions(Rootless: true);
        LayerUnpacker.Unpack(Tar(("gone/file", "f"), ("dir/old", "o"), ("kept", "k")), directory.Combine("base"), rootless);
        LayerUnpacker.Unpack(Tar(("gone/.wh.file", ""), ("dir/.wh..wh..opq", ""), ("dir/new", "n")), directory.Combine("top"), rootless);
        foreach (var name in new[] { "upper", "work", "merged" })
        {
            Directory.CreateDirectory(directory.Combine(name));
            FileSystemCalls.LChown(directory.Combine(name), RootlessUid, RootlessUid);
        }
        var root = new ContainerRootFileSystem([directory.Combine("base"), directory.Combine("top")], directory.Combine("upper"),
            directory.Combine("work"), directory.Combine("merged"));
        string script = $"mount -t overlay overlay -o {root.MountOptions},userxattr {root.MergedDirectory} && cd {root.MergedDirectory} && ls gone dir . | tr '\\n' ' '";
        string listing = TemporaryDirectory.Run("runuser", "-u", "nestor-rootless", "--", "unshare", "-Urm", "sh", "-c", script);
        Assert.Equal(".: dir gone kept  dir: new  gone: ", listing); // ls lists its arguments sorted
    }

    /// <summary>The uid of the rootless test user the machine set-up makes (scripts/install-prerequisites).</summary>
    private static uint RootlessUid => uint.Parse(TemporaryDirectory.Run("id", "-u", "nestor-rootless").Trim(), System.Globalization.CultureInfo.InvariantCulture);

    private static MemoryStream Tar(params (string Name, string Content)[] files)
    {
        var stream = new MemoryStream();
        using (var writer = new System.Formats.Tar.TarWriter(stream, leaveOpen: true))
        {
            foreach (var (name, content) in files)
            {
                writer.WriteEntry(new System.Formats.Tar.PaxTarEntry(System.Formats.Tar.TarEntryType.RegularFile, name)
                {
                    DataStream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(content)),
                    Mode = (UnixFileMode)0x1a4,
                });
            }
        }
        stream.Position = 0;
        return stream;
    }
}
