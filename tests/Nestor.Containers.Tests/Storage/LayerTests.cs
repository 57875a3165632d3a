using System.Formats.Tar;
using Nestor.Containers.Storage;
using Nestor.Containers.Tests.Images;
using Nestor.Host;

namespace Nestor.Containers.Tests.Storage;

public class LayerTests
{
    private static readonly LayerUnpackOptions AsRoot = new(Rootless: false);

    private static MemoryStream Tar(params TarEntry[] entries)
    {
        var stream = new MemoryStream();
        using (var writer = new TarWriter(stream, leaveOpen: true))
        {
            foreach (var entry in entries)
            {
                writer.WriteEntry(entry);
            }
        }
        stream.Position = 0;
        return stream;
    }

    private static PaxTarEntry File(string name, string content, int uid = 0, int gid = 0, int mode = 0x1a4)
    {
        return new PaxTarEntry(TarEntryType.RegularFile, name)
        {
            DataStream = new MemoryStream(System.Text.Encoding.UTF8.GetBytes(content)),
            Uid = uid,
            Gid = gid,
            Mode = (UnixFileMode)mode,
            ModificationTime = new DateTimeOffset(2001, 2, 3, 4, 5, 6, TimeSpan.Zero),
        };
    }

    /// <summary>Owners, modes (set-user-ID included), times, extended attributes, hard and symbolic links, devices and
    /// fifos come out of the tar as it says.</summary>
    [Fact]
    public void UnpackKeepsMetadataLinksAndDevices()
    {
        using var directory = new TemporaryDirectory("unpack");
        var time = new DateTimeOffset(2001, 2, 3, 4, 5, 6, TimeSpan.Zero);
        var attributed = new PaxTarEntry(TarEntryType.RegularFile, "etc/attributed",
            new Dictionary<string, string> { ["SCHILY.xattr.user.nestor"] = "value" })
        { DataStream = new MemoryStream([1, 2, 3]), Mode = (UnixFileMode)0x1a4, ModificationTime = time };
        using var tar = Tar(
            new PaxTarEntry(TarEntryType.Directory, "etc/") { Mode = (UnixFileMode)0x1c0, ModificationTime = time, Uid = 7, Gid = 8 },
            File("etc/secret", "s", uid: 1234, gid: 5678, mode: 0x9ed), // 4755
            attributed,
            new PaxTarEntry(TarEntryType.HardLink, "etc/secret-link") { LinkName = "etc/secret" },
            new PaxTarEntry(TarEntryType.SymbolicLink, "etc/symbolic") { LinkName = "/etc/secret", ModificationTime = time },
            new PaxTarEntry(TarEntryType.CharacterDevice, "dev/null") { DeviceMajor = 1, DeviceMinor = 3, Mode = (UnixFileMode)0x1b6 },
            new PaxTarEntry(TarEntryType.Fifo, "run/pipe") { Mode = (UnixFileMode)0x180 });
        string root = directory.Combine("root");
        LayerUnpacker.Unpack(tar, root, AsRoot);
        var secret = FileSystemCalls.LStat(Path.Combine(root, "etc", "secret"));
        Assert.Equal((1234u, 5678u), (secret.Uid, secret.Gid));
        Assert.Equal(0x9edu, secret.Mode & 0xfff);
        Assert.Equal(time.ToUnixTimeSeconds(), secret.ModifySeconds);
        Assert.Equal(2ul, secret.LinkCount);
        Assert.Equal(secret.Inode, FileSystemCalls.LStat(Path.Combine(root, "etc", "secret-link")).Inode);
        var etc = FileSystemCalls.LStat(Path.Combine(root, "etc"));
        Assert.Equal((7u, 8u, 0x1c0u), (etc.Uid, etc.Gid, etc.Mode & 0xfff));
        Assert.Equal(time.ToUnixTimeSeconds(), etc.ModifySeconds); // set after its children were made
        Assert.Equal("/etc/secret", new FileInfo(Path.Combine(root, "etc", "symbolic")).LinkTarget);
        Assert.Equal("value"u8.ToArray(), FileSystemCalls.GetXattr(Path.Combine(root, "etc", "attributed"), "user.nestor"));
        var device = FileSystemCalls.LStat(Path.Combine(root, "dev", "null"));
        Assert.Equal(FileSystemCalls.S_IFCHR, device.Mode & FileSystemCalls.S_IFMT);
        Assert.Equal((1u, 3u), FileSystemCalls.SplitDevice(device.RawDevice));
        Assert.Equal(FileSystemCalls.S_IFIFO, FileSystemCalls.LStat(Path.Combine(root, "run", "pipe")).Mode & FileSystemCalls.S_IFMT);
    }

    /// <summary>An entry whose name climbs out with ../ and a hard link to a file outside are refused, naming the
    /// entry; an entry below a symbolic link to an absolute path lands inside the root, not on the host.</summary>
    [Fact]
    public void PathTraversalIsRefused()
    {
        using var directory = new TemporaryDirectory("traversal");
        string root = directory.Combine("root");
        var climb = Assert.Throws<LayerException>(() => LayerUnpacker.Unpack(Tar(File("a/../../escaped", "x")), root, AsRoot));
        Assert.Contains("'a/../../escaped'", climb.Message);
        Assert.Contains("path traversal", climb.Message);
        Assert.False(System.IO.File.Exists(directory.Combine("escaped")));
        var link = Assert.Throws<LayerException>(() => LayerUnpacker.Unpack(
            Tar(new PaxTarEntry(TarEntryType.HardLink, "passwd") { LinkName = "../../../../etc/passwd" }), root, AsRoot));
        Assert.Contains("path traversal", link.Message);
        string outside = directory.Combine("outside");
        Directory.CreateDirectory(outside);
        LayerUnpacker.Unpack(Tar(
            new PaxTarEntry(TarEntryType.SymbolicLink, "jump") { LinkName = outside },
            File("jump/planted", "x")), root, AsRoot);
        Assert.False(System.IO.File.Exists(Path.Combine(outside, "planted")));
        Assert.True(System.IO.File.Exists(Path.Combine(root, outside.TrimStart('/'), "planted")));
    }

    /// <summary>OCI whiteouts become overlayfs's: .wh.NAME a character device 0/0, .wh..wh..opq the opaque attribute
    /// (trusted.overlay.opaque as root, user.overlay.opaque rootless).</summary>
    [Fact]
    public void WhiteoutsBecomeOverlayForm()
    {
        using var directory = new TemporaryDirectory("whiteout");
        string root = directory.Combine("root");
        LayerUnpacker.Unpack(Tar(File("dir/.wh.gone", ""), File("opaque/.wh..wh..opq", ""), File("opaque/kept", "k")), root, AsRoot);
        var whiteout = FileSystemCalls.LStat(Path.Combine(root, "dir", "gone"));
        Assert.Equal(FileSystemCalls.S_IFCHR, whiteout.Mode & FileSystemCalls.S_IFMT);
        Assert.Equal(0ul, whiteout.RawDevice);
        Assert.False(System.IO.File.Exists(Path.Combine(root, "dir", ".wh.gone")));
        Assert.Equal("y"u8.ToArray(), FileSystemCalls.GetXattr(Path.Combine(root, "opaque"), "trusted.overlay.opaque"));
        Assert.False(System.IO.File.Exists(Path.Combine(root, "opaque", ".wh..wh..opq")));
        string rootless = directory.Combine("rootless");
        LayerUnpacker.Unpack(Tar(File("opaque/.wh..wh..opq", "")), rootless, new LayerUnpackOptions(Rootless: true));
        Assert.Equal("y"u8.ToArray(), FileSystemCalls.GetXattr(Path.Combine(rootless, "opaque"), "user.overlay.opaque"));
    }

    /// <summary>A directory written as a layer and unpacked again gives the same tree, and writing it twice gives the
    /// same bytes; kernel whiteouts and opaque directories come back as .wh. entries.</summary>
    [Fact]
    public void LayerDiffRoundTripsAndIsDeterministic()
    {
        using var directory = new TemporaryDirectory("diff");
        string upper = directory.Combine("upper");
        TemporaryDirectory.MakeBusyboxRoot(upper);
        Directory.CreateDirectory(Path.Combine(upper, "opaque"));
        Assert.Equal(0, FileSystemCalls.SetXattr(Path.Combine(upper, "opaque"), "trusted.overlay.opaque", "y"u8));
        Assert.Equal(0, FileSystemCalls.Mknod(Path.Combine(upper, "etc", "deleted"), FileSystemCalls.S_IFCHR, 0, 0));
        FileSystemCalls.Link(Path.Combine(upper, "etc", "passwd"), Path.Combine(upper, "etc", "passwd-link"));
        FileSystemCalls.LChown(Path.Combine(upper, "etc", "passwd"), 42, 43);
        using var first = new MemoryStream();
        using var second = new MemoryStream();
        LayerDiff.Write(upper, first);
        LayerDiff.Write(upper, second);
        Assert.Equal(first.ToArray(), second.ToArray());

        first.Position = 0;
        var names = new List<string>();
        using (var reader = new TarReader(first, leaveOpen: true))
        {
            while (reader.GetNextEntry() is { } entry)
            {
                names.Add(entry.Name);
            }
        }
        Assert.Contains("etc/.wh.deleted", names);
        Assert.Contains("opaque/.wh..wh..opq", names);
        Assert.True(names.IndexOf("etc/") < names.IndexOf("etc/passwd"));

        first.Position = 0;
        string unpacked = directory.Combine("unpacked");
        LayerUnpacker.Unpack(first, unpacked, AsRoot);
        foreach (var relative in new[] { "bin/busybox", "bin/sh", "etc/passwd", "etc/passwd-link", "etc/deleted", "opaque" })
        {
            var original = FileSystemCalls.LStat(Path.Combine(upper, relative));
            var copy = FileSystemCalls.LStat(Path.Combine(unpacked, relative));
            Assert.Equal((original.Mode, original.Uid, original.Gid, original.RawDevice, original.Size), (copy.Mode, copy.Uid, copy.Gid, copy.RawDevice, copy.Size));
            if ((original.Mode & FileSystemCalls.S_IFMT) != FileSystemCalls.S_IFDIR && relative != "etc/deleted") // a whiteout's time is not kept
            {
                Assert.Equal((original.ModifySeconds, original.ModifyNanoseconds / 100), (copy.ModifySeconds, copy.ModifyNanoseconds / 100));
            }
        }
        Assert.Equal(FileSystemCalls.LStat(Path.Combine(unpacked, "etc", "passwd")).Inode, FileSystemCalls.LStat(Path.Combine(unpacked, "etc", "passwd-link")).Inode);
        Assert.Equal("busybox", new FileInfo(Path.Combine(unpacked, "bin", "sh")).LinkTarget);
        Assert.Equal("y"u8.ToArray(), FileSystemCalls.GetXattr(Path.Combine(unpacked, "opaque"), "trusted.overlay.opaque"));
    }

    /// <summary>A rootless store writes owners as the container sees them: the user as 0, its subordinate ids from 1,
    /// anything else as the overflow id 65534.</summary>
    [Fact]
    public void RootlessLayersRecordContainerOwners()
    {
        using var directory = new TemporaryDirectory("owners");
        string upper = directory.Combine("upper");
        Directory.CreateDirectory(upper);
        var mapping = new IdMapping(HostUid: 1001, HostGid: 1001, SubordinateUidStart: 100000, SubordinateUidCount: 65536,
            SubordinateGidStart: 100000, SubordinateGidCount: 65536);
        foreach (var (name, host) in new[] { ("user", 1001u), ("subordinate", 100005u), ("stranger", 5u) })
        {
            System.IO.File.WriteAllText(Path.Combine(upper, name), name);
            FileSystemCalls.LChown(Path.Combine(upper, name), host, host);
        }
        using var tar = new MemoryStream();
        LayerDiff.Write(upper, tar, mapping);
        tar.Position = 0;
        var owners = new Dictionary<string, (int, int)>();
        using (var reader = new TarReader(tar))
        {
            while (reader.GetNextEntry() is { } entry)
            {
                owners[entry.Name] = (entry.Uid, entry.Gid);
            }
        }
        Assert.Equal((0, 0), owners["user"]);
        Assert.Equal((6, 6), owners["subordinate"]);
        Assert.Equal((65534, 65534), owners["stranger"]);
    }
}
