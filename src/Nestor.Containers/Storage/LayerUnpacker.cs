using System.Formats.Tar;
using System.Text;
using Nestor.Host;

namespace Nestor.Containers.Storage;

/// <summary>How a layer is unpacked.</summary>
/// <param name="Rootless">The caller is not root: owners are left as the caller's (a rootless container maps its root to
/// the caller, so files owned by the caller appear owned by root inside), device nodes other than whiteouts are
/// skipped, and opaque directories are marked with <c>user.overlay.opaque</c> for an overlay mounted with
/// <c>userxattr</c> (overlayfs.rst, "User xattr").</param>
public sealed record LayerUnpackOptions(bool Rootless)
{
    /// <summary>Options for the calling process: rootless unless it is root.</summary>
    public static LayerUnpackOptions ForCurrentUser() => new(!Environment.IsPrivilegedProcess);

    /// <summary>The extended attribute that marks an opaque directory for this mode.</summary>
    public string OpaqueAttribute => Rootless ? "user.overlay.opaque" : "trusted.overlay.opaque";
}

/// <summary>A layer tar cannot be unpacked safely (path traversal, a hard link out of the layer, a malformed entry).</summary>
public sealed class LayerException(string message) : Exception(message);

/// <summary>Unpacks a layer tar (image-spec layer.md) into a directory in overlayfs form: owners, modes, times,
/// extended attributes, hard and symbolic links, devices and fifos as the tar says; OCI whiteouts turned into what
/// overlayfs reads (overlayfs.rst, "whiteouts and opaque directories"): <c>.wh.NAME</c> becomes a character device 0/0
/// named NAME, <c>.wh..wh..opq</c> sets the opaque attribute on its directory. Entries are refused when their name
/// climbs out of the root (<c>../</c>), and every parent is resolved inside the root, symbolic links included (an
/// absolute link target is taken relative to the layer root, as the container will see it), so that no entry can be
/// written outside the directory.</summary>
public static class LayerUnpacker
{
    private const string WhiteoutPrefix = ".wh.";
    private const string OpaqueWhiteout = ".wh..wh..opq";

    /// <summary>Unpacks <paramref name="tar"/> (uncompressed) into <paramref name="destination"/>, created if missing.
    /// Reads the stream to its end so that a hash of it covers the whole tar.</summary>
    public static void Unpack(Stream tar, string destination, LayerUnpackOptions options)
    {
        destination = Path.GetFullPath(destination);
        Directory.CreateDirectory(destination);
        var directoryTimes = new List<(string Path, DateTimeOffset Time)>();
        using (var reader = new TarReader(tar, leaveOpen: true))
        {
            while (reader.GetNextEntry(copyData: false) is { } entry)
            {
                UnpackEntry(entry, destination, options, directoryTimes);
            }
        }
        tar.CopyTo(Stream.Null);
        // A directory's time is set last: creating its children changed it.
        for (int i = directoryTimes.Count - 1; i >= 0; i--)
        {
            FileSystemCalls.SetTimes(directoryTimes[i].Path, directoryTimes[i].Time, directoryTimes[i].Time);
        }
    }

    /// <summary>The components of an entry's name, refusing one that climbs out of the root.</summary>
    internal static string[] SplitEntryName(string name)
    {
        var components = name.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(c => c != ".").ToArray();
        if (components.Contains(".."))
        {
            throw new LayerException($"the layer entry '{name}' climbs out of the layer's root with '..' (path traversal): the layer is refused");
        }
        if (components.Any(c => c.Contains('\0')))
        {
            throw new LayerException($"the layer entry '{name}' has a NUL character in its name: the layer is refused");
        }
        return components;
    }

    private static void UnpackEntry(TarEntry entry, string root, LayerUnpackOptions options, List<(string, DateTimeOffset)> directoryTimes)
    {
        if (entry.EntryType is TarEntryType.GlobalExtendedAttributes)
        {
            return;
        }
        string[] components = SplitEntryName(entry.Name);
        if (components.Length == 0)
        {
            if (entry.EntryType == TarEntryType.Directory)
            {
                ApplyMetadata(entry, root, options, directoryTimes);
            }
            return;
        }
        string parent = ResolveInside(root, components[..^1], create: true, entry.Name);
        string baseName = components[^1];
        if (baseName == OpaqueWhiteout)
        {
            int errno = FileSystemCalls.SetXattr(parent, options.OpaqueAttribute, "y"u8);
            if (errno != 0)
            {
                throw new Host.HostCallException($"setting {options.OpaqueAttribute} on {parent} (an opaque directory of the layer)", errno);
            }
            return;
        }
        if (baseName.StartsWith(WhiteoutPrefix, StringComparison.Ordinal))
        {
            string hidden = Path.Combine(parent, baseName[WhiteoutPrefix.Length..]);
            RemoveExisting(hidden);
            int errno = FileSystemCalls.Mknod(hidden, FileSystemCalls.S_IFCHR, 0, 0);
            if (errno != 0)
            {
                throw new Host.HostCallException($"mknod of the whiteout {hidden} (character device 0/0)", errno);
            }
            return;
        }
        string path = Path.Combine(parent, baseName);
        var existing = FileSystemCalls.TryLStat(path);
        bool existingIsDirectory = existing is { } e && (e.Mode & FileSystemCalls.S_IFMT) == FileSystemCalls.S_IFDIR;
        if (existing is not null && !(existingIsDirectory && entry.EntryType == TarEntryType.Directory))
        {
            RemoveExisting(path);
        }
        switch (entry.EntryType)
        {
            case TarEntryType.Directory:
                if (!existingIsDirectory)
                {
                    Directory.CreateDirectory(path);
                }
                break;
            case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                using (var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
                {
                    entry.DataStream?.CopyTo(file);
                }
                break;
            case TarEntryType.SymbolicLink:
                File.CreateSymbolicLink(path, entry.LinkName);
                break;
            case TarEntryType.HardLink:
                string[] targetComponents = SplitEntryName(entry.LinkName);
                if (targetComponents.Length == 0)
                {
                    throw new LayerException($"the layer entry '{entry.Name}' is a hard link to the layer's root: the layer is refused");
                }
                string targetParent = ResolveInside(root, targetComponents[..^1], create: false, entry.LinkName);
                FileSystemCalls.Link(Path.Combine(targetParent, targetComponents[^1]), path);
                return; // a hard link shares its target's metadata
            case TarEntryType.CharacterDevice or TarEntryType.BlockDevice or TarEntryType.Fifo:
                uint type = entry.EntryType switch
                {
                    TarEntryType.CharacterDevice => FileSystemCalls.S_IFCHR,
                    TarEntryType.BlockDevice => FileSystemCalls.S_IFBLK,
                    _ => FileSystemCalls.S_IFIFO,
                };
                int errno = FileSystemCalls.Mknod(path, type | 0x180, (uint)((PosixTarEntry)entry).DeviceMajor, (uint)((PosixTarEntry)entry).DeviceMinor);
                if (errno == FileSystemCalls.EPERM && options.Rootless && type != FileSystemCalls.S_IFIFO)
                {
                    return; // rootless: no device nodes (the runtime bind-mounts the host's devices instead)
                }
                if (errno != 0)
                {
                    throw new Host.HostCallException($"mknod of {path}", errno);
                }
                break;
            default:
                return; // sparse, multi-volume and other GNU oddities carry no file Nestor can make
        }
        ApplyMetadata(entry, path, options, directoryTimes);
    }

    private static void ApplyMetadata(TarEntry entry, string path, LayerUnpackOptions options, List<(string, DateTimeOffset)> directoryTimes)
    {
        bool isLink = entry.EntryType == TarEntryType.SymbolicLink;
        if (!options.Rootless)
        {
            FileSystemCalls.LChown(path, (uint)entry.Uid, (uint)entry.Gid);
        }
        if (entry is PaxTarEntry pax)
        {
            foreach (var (key, value) in pax.ExtendedAttributes)
            {
                if (!key.StartsWith("SCHILY.xattr.", StringComparison.Ordinal))
                {
                    continue;
                }
                string name = key["SCHILY.xattr.".Length..];
                // PAX stores the value as text; GNU tar and Go's archive/tar put the raw bytes there, which .NET
                // reads as Latin-1-preserving UTF-8 where valid. Refused names (trusted.* rootless, security.* on
                // some file systems) are skipped: they cannot be held by this store.
                FileSystemCalls.SetXattr(path, name, Encoding.UTF8.GetBytes(value));
            }
        }
        if (!isLink)
        {
            // After chown: chown clears set-user-ID and set-group-ID bits (chown(2)).
            FileSystemCalls.Chmod(path, (uint)entry.Mode);
        }
        if (entry.EntryType == TarEntryType.Directory)
        {
            directoryTimes.Add((path, entry.ModificationTime));
        }
        else
        {
            FileSystemCalls.SetTimes(path, entry.ModificationTime, entry.ModificationTime);
        }
    }

    private static void RemoveExisting(string path)
    {
        var existing = FileSystemCalls.TryLStat(path);
        if (existing is null)
        {
            return;
        }
        if ((existing.Value.Mode & FileSystemCalls.S_IFMT) == FileSystemCalls.S_IFDIR)
        {
            Directory.Delete(path, recursive: true);
        }
        else
        {
            File.Delete(path);
        }
    }

    /// <summary>Resolves directory components below <paramref name="root"/> the way the container will see them:
    /// symbolic links are followed with absolute targets taken from the root and <c>..</c> stopping at the root, so the
    /// result never leaves it. Missing directories are created when <paramref name="create"/>.</summary>
    internal static string ResolveInside(string root, IEnumerable<string> components, bool create, string entryName)
    {
        var pending = new LinkedList<string>(components);
        var resolved = new List<string>();
        int linksFollowed = 0;
        while (pending.First is { } node)
        {
            string component = node.Value;
            pending.RemoveFirst();
            if (component is "" or ".")
            {
                continue;
            }
            if (component == "..")
            {
                if (resolved.Count > 0)
                {
                    resolved.RemoveAt(resolved.Count - 1);
                }
                continue;
            }
            string candidate = Path.Combine(root, Path.Combine([.. resolved, component]));
            var stat = FileSystemCalls.TryLStat(candidate);
            if (stat is null)
            {
                if (!create)
                {
                    throw new LayerException($"the layer entry '{entryName}' names '{candidate[root.Length..]}', which the layer has not created");
                }
                Directory.CreateDirectory(candidate);
                resolved.Add(component);
                continue;
            }
            uint type = stat.Value.Mode & FileSystemCalls.S_IFMT;
            if (type == FileSystemCalls.S_IFLNK)
            {
                if (++linksFollowed > 40)
                {
                    throw new LayerException($"the layer entry '{entryName}' goes through more than 40 symbolic links (ELOOP)");
                }
                string target = new FileInfo(candidate).LinkTarget ?? "";
                if (target.StartsWith('/'))
                {
                    resolved.Clear();
                }
                foreach (string part in target.Split('/', StringSplitOptions.RemoveEmptyEntries).Reverse())
                {
                    pending.AddFirst(part);
                }
                continue;
            }
            if (type != FileSystemCalls.S_IFDIR)
            {
                throw new LayerException($"the layer entry '{entryName}' needs '{candidate[root.Length..]}' to be a directory, but it is not");
            }
            resolved.Add(component);
        }
        return resolved.Count == 0 ? root : Path.Combine(root, Path.Combine([.. resolved]));
    }
}
