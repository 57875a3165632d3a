using System.Formats.Tar;
using System.Text;
using Nestor.Host;

namespace Nestor.Containers.Storage;

/// <summary>Turns a directory into a layer tar (image-spec layer.md, "Changesets"): a whole root file system, or an
/// overlay's upper directory, whose kernel whiteouts become OCI whiteouts again: a character device 0/0 named NAME
/// becomes an empty <c>.wh.NAME</c>, a directory marked opaque (<c>trusted.overlay.opaque</c> or
/// <c>user.overlay.opaque</c> = <c>y</c>) is followed by <c>DIR/.wh..wh..opq</c>. The tar is deterministic for a given
/// directory: entries sorted by ordinal name, parents before children, PAX headers without user or group names or
/// access and change times; owners, modes, modification times (to the nanosecond) and extended attributes are kept
/// (a commit must preserve what the container wrote), so two trees differing only in those give different layers.
/// Files with several links are written once and then as hard links to the first name.</summary>
public static class LayerDiff
{
    /// <summary>Writes the tar of <paramref name="directory"/>'s contents (not the directory itself) to
    /// <paramref name="output"/>. With <paramref name="owners"/> (a rootless store), owners are written as the
    /// container's ids rather than the host's.</summary>
    public static void Write(string directory, Stream output, IdMapping? owners = null)
    {
        directory = Path.GetFullPath(directory);
        var firstNames = new Dictionary<(ulong Device, ulong Inode), string>();
        long start = output.CanSeek ? output.Position : -1;
        using (var writer = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true))
        {
            new Walk(writer, firstNames, owners).WriteChildren(directory, "");
        }
        if (output.CanSeek && output.Position == start)
        {
            // No change (a RUN that wrote nothing): TarWriter writes no end-of-archive for no entries, but a layer
            // is still a tar, two zero blocks (POSIX ustar), as docker's and podman's empty layers are.
            output.Write(new byte[1024]);
        }
    }

    private sealed record Walk(TarWriter Writer, Dictionary<(ulong, ulong), string> FirstNames, IdMapping? Owners)
    {
        public void WriteChildren(string directory, string prefix)
        {
            var writer = Writer;
            var firstNames = FirstNames;
            var names = Directory.EnumerateFileSystemEntries(directory).Select(Path.GetFileName).Cast<string>()
                .Order(StringComparer.Ordinal).ToList();
            foreach (string name in names)
            {
                string path = Path.Combine(directory, name);
                string entryName = prefix + name;
                var stat = FileSystemCalls.LStat(path);
                uint type = stat.Mode & FileSystemCalls.S_IFMT;
                if (type == FileSystemCalls.S_IFCHR && stat.RawDevice == 0)
                {
                    var whiteout = NewEntry(TarEntryType.RegularFile, prefix + ".wh." + name, stat);
                    whiteout.Mode = (UnixFileMode)0x1a4;
                    writer.WriteEntry(whiteout);
                    continue;
                }
                switch (type)
                {
                    case FileSystemCalls.S_IFDIR:
                        var directoryEntry = NewEntry(TarEntryType.Directory, entryName + "/", stat, ExtendedAttributesOf(path));
                        writer.WriteEntry(directoryEntry);
                        if (IsOpaque(path))
                        {
                            var opaque = NewEntry(TarEntryType.RegularFile, entryName + "/.wh..wh..opq", stat);
                            opaque.Mode = (UnixFileMode)0x1a4;
                            writer.WriteEntry(opaque);
                        }
                        WriteChildren(path, entryName + "/");
                        break;
                    case FileSystemCalls.S_IFREG:
                        if (stat.LinkCount > 1 && firstNames.TryGetValue((stat.Device, stat.Inode), out var first))
                        {
                            var link = NewEntry(TarEntryType.HardLink, entryName, stat);
                            link.LinkName = first;
                            writer.WriteEntry(link);
                            break;
                        }
                        if (stat.LinkCount > 1)
                        {
                            firstNames[(stat.Device, stat.Inode)] = entryName;
                        }
                        var file = NewEntry(TarEntryType.RegularFile, entryName, stat, ExtendedAttributesOf(path));
                        using (var content = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16))
                        {
                            file.DataStream = content;
                            writer.WriteEntry(file);
                        }
                        break;
                    case FileSystemCalls.S_IFLNK:
                        var symbolic = NewEntry(TarEntryType.SymbolicLink, entryName, stat);
                        symbolic.LinkName = new FileInfo(path).LinkTarget ?? "";
                        writer.WriteEntry(symbolic);
                        break;
                    case FileSystemCalls.S_IFCHR or FileSystemCalls.S_IFBLK or FileSystemCalls.S_IFIFO:
                        var device = NewEntry(type switch
                        {
                            FileSystemCalls.S_IFCHR => TarEntryType.CharacterDevice,
                            FileSystemCalls.S_IFBLK => TarEntryType.BlockDevice,
                            _ => TarEntryType.Fifo,
                        }, entryName, stat);
                        if (type != FileSystemCalls.S_IFIFO)
                        {
                            var (major, minor) = FileSystemCalls.SplitDevice(stat.RawDevice);
                            device.DeviceMajor = (int)major;
                            device.DeviceMinor = (int)minor;
                        }
                        writer.WriteEntry(device);
                        break;
                    default:
                        break; // sockets are not file-system content (image-spec layer.md lists no socket type)
                }
            }
        }

        private PaxTarEntry NewEntry(TarEntryType type, string name, FileSystemCalls.Stat stat, Dictionary<string, string>? extendedAttributes = null)
        {
            var modified = DateTimeOffset.FromUnixTimeSeconds(stat.ModifySeconds).AddTicks(stat.ModifyNanoseconds / 100);
            return new PaxTarEntry(type, name, extendedAttributes ?? [])
            {
                Uid = (int)(Owners?.ContainerUid(stat.Uid) ?? stat.Uid),
                Gid = (int)(Owners?.ContainerGid(stat.Gid) ?? stat.Gid),
                Mode = (UnixFileMode)(stat.Mode & 0xfff),
                ModificationTime = modified,
            };
        }

        private static bool IsOpaque(string path) =>
            FileSystemCalls.GetXattr(path, "trusted.overlay.opaque") is [(byte)'y']
            || FileSystemCalls.GetXattr(path, "user.overlay.opaque") is [(byte)'y'];

        /// <summary>Copies a file's extended attributes into PAX records (<c>SCHILY.xattr.NAME</c>, as GNU tar and Docker
        /// write them), except overlayfs's own (<c>*.overlay.*</c>, which describe the upper directory, not the file) and
        /// values that are not valid UTF-8 (PAX records are text; .NET cannot write raw bytes there).</summary>
        private static Dictionary<string, string> ExtendedAttributesOf(string path)
        {
            var attributes = new Dictionary<string, string>(StringComparer.Ordinal);
            var strict = new UTF8Encoding(false, throwOnInvalidBytes: true);
            foreach (string name in FileSystemCalls.ListXattrs(path).Order(StringComparer.Ordinal))
            {
                if (name.StartsWith("trusted.overlay.", StringComparison.Ordinal) || name.StartsWith("user.overlay.", StringComparison.Ordinal))
                {
                    continue;
                }
                if (FileSystemCalls.GetXattr(path, name) is not { } value)
                {
                    continue;
                }
                try
                {
                    attributes["SCHILY.xattr." + name] = strict.GetString(value);
                }
                catch (DecoderFallbackException)
                {
                    // skipped: see above
                }
            }
            return attributes;
        }
    }
}
