using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using Nestor.Containers.Runtime;
using Nestor.Host;

namespace Nestor.Containers.Build;

/// <summary>Owner and mode COPY and ADD give what they write (<c>--chown</c>, <c>--chmod</c>); null keeps the
/// reference's defaults: uid and gid 0, the source's permission bits.</summary>
public sealed record CopyAttributes(uint Uid = 0, uint Gid = 0, uint? Mode = null);

/// <summary>Writes COPY and ADD sources into a stage's mounted root, as the Dockerfile reference describes them: a
/// directory's contents (not the directory itself) are copied, files keep their permission bits and modification
/// times, symbolic links are copied as links, new parent directories are made 0755 root, and every destination is
/// resolved inside the root (a link in the image cannot send a copy outside it). ADD unpacks a local tar archive,
/// uncompressed or compressed with gzip, bzip2 or xz, into the destination directory.</summary>
public static class FileCopier
{
    /// <summary>Rootless: the owners to give later, in a user namespace (<see cref="RootlessBuild.ApplyOwners"/>),
    /// since an unprivileged user cannot chown to another id. Per thread: one COPY runs on one thread.</summary>
    [ThreadStatic]
    private static List<(string Path, uint Uid, uint Gid)>? deferredOwners;

    /// <summary>Until disposed, the owners this thread's copies set are added to <paramref name="owners"/> instead.</summary>
    public static IDisposable DeferOwners(List<(string Path, uint Uid, uint Gid)> owners)
    {
        deferredOwners = owners;
        return new Deferral();
    }

    private sealed class Deferral : IDisposable
    {
        public void Dispose() => deferredOwners = null;
    }

    private static void Chown(string path, uint uid, uint gid)
    {
        if (deferredOwners is { } owners)
        {
            owners.Add((path, uid, gid));
            return;
        }
        FileSystemCalls.LChown(path, uid, gid);
    }

    /// <summary>Copies <paramref name="source"/> (a context path) to the path <paramref name="destination"/> inside
    /// <paramref name="root"/>; <paramref name="isExcluded"/> is asked about every entry below a directory by its
    /// context-relative path (<paramref name="relative"/> is the source's own).</summary>
    public static void Copy(string root, string source, string relative, string destination, CopyAttributes attributes,
        Func<string, bool> isExcluded)
    {
        var stat = FileSystemCalls.LStat(source);
        uint type = stat.Mode & FileSystemCalls.S_IFMT;
        string target = Resolve(root, destination);
        switch (type)
        {
            case FileSystemCalls.S_IFDIR:
                // A link to a directory (Debian's /bin -> usr/bin) is copied into, as the kernel would follow it.
                target = PathJoin.InRoot(root, destination);
                MakeDirectory(target, attributes.Mode ?? stat.Mode & 0xfff, attributes);
                foreach (string name in Directory.EnumerateFileSystemEntries(source).Select(Path.GetFileName).Cast<string>().Order(StringComparer.Ordinal))
                {
                    string inner = relative.Length == 0 ? name : relative + "/" + name;
                    if (!isExcluded(inner))
                    {
                        Copy(root, Path.Combine(source, name), inner, destination.TrimEnd('/') + "/" + name, attributes, isExcluded);
                    }
                }
                SetTimes(target, stat);
                break;
            case FileSystemCalls.S_IFREG:
                RemoveNonDirectory(target, destination);
                using (var input = new FileStream(source, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16))
                using (var output = new FileStream(target, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
                {
                    input.CopyTo(output);
                }
                Chown(target, attributes.Uid, attributes.Gid);
                FileSystemCalls.Chmod(target, attributes.Mode ?? stat.Mode & 0xfff);
                SetTimes(target, stat);
                break;
            case FileSystemCalls.S_IFLNK:
                RemoveNonDirectory(target, destination);
                File.CreateSymbolicLink(target, new FileInfo(source).LinkTarget ?? "");
                Chown(target, attributes.Uid, attributes.Gid);
                SetTimes(target, stat);
                break;
            default:
                break; // sockets, fifos and devices of the context are not copied (BuildKit copies only these three)
        }
    }

    /// <summary>Whether <paramref name="path"/> is a tar archive ADD unpacks: by its first bytes, gzip (1f 8b), bzip2
    /// (<c>BZh</c>), xz (fd <c>7zXZ</c> 00) or an uncompressed tar (<c>ustar</c> at offset 257, POSIX.1-2001).</summary>
    public static bool IsArchive(string path)
    {
        if (!File.Exists(path) || new FileInfo(path).LinkTarget is not null)
        {
            return false;
        }
        var compression = CompressionOf(path);
        if (compression != "")
        {
            return true;
        }
        using var file = File.OpenRead(path);
        Span<byte> header = stackalloc byte[263];
        return file.ReadAtLeast(header, header.Length, throwOnEndOfStream: false) == header.Length && header[257..262].SequenceEqual("ustar"u8);
    }

    private static string CompressionOf(string path)
    {
        using var file = File.OpenRead(path);
        Span<byte> magic = stackalloc byte[6];
        int read = file.ReadAtLeast(magic, 6, throwOnEndOfStream: false);
        if (read >= 2 && magic[0] == 0x1f && magic[1] == 0x8b)
        {
            return "gzip";
        }
        if (read >= 3 && magic[..3].SequenceEqual("BZh"u8))
        {
            return "bzip2";
        }
        if (read >= 6 && magic.SequenceEqual((ReadOnlySpan<byte>)[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))
        {
            return "xz";
        }
        return "";
    }

    /// <summary>Unpacks the archive <paramref name="archive"/> into the directory <paramref name="destination"/>
    /// inside <paramref name="root"/>, keeping the entries' owners, modes and times (as <c>tar -x</c> as root does);
    /// names are resolved inside the root, so <c>../</c> and absolute names cannot leave it. bzip2 and xz are read
    /// through Debian's <c>bzip2</c> and <c>xz</c> (the base library has neither).</summary>
    public static void Unpack(string root, string archive, string destination)
    {
        string compression = CompressionOf(archive);
        Process? decompressor = null;
        Stream input;
        if (compression is "bzip2" or "xz")
        {
            var start = new ProcessStartInfo(compression) { RedirectStandardOutput = true, RedirectStandardError = true };
            start.ArgumentList.Add("-dc");
            start.ArgumentList.Add(archive);
            try
            {
                decompressor = Process.Start(start);
            }
            catch (System.ComponentModel.Win32Exception exception)
            {
                throw new BuildException($"ADD {Path.GetFileName(archive)}: {compression} is needed to unpack it but cannot be run ({exception.Message})", $"install Debian's {(compression == "xz" ? "xz-utils" : "bzip2")}");
            }
            input = decompressor!.StandardOutput.BaseStream;
        }
        else
        {
            input = File.OpenRead(archive);
            if (compression == "gzip")
            {
                input = new GZipStream(input, CompressionMode.Decompress);
            }
        }
        try
        {
            MakeDirectory(Resolve(root, destination), 0x1ed, new CopyAttributes());
            using var reader = new TarReader(input);
            var directoryTimes = new List<(string Path, DateTimeOffset Time)>();
            while (reader.GetNextEntry() is { } entry)
            {
                string name = BuildContext.Clean(entry.Name);
                if (name.Length == 0)
                {
                    continue;
                }
                string path = destination.TrimEnd('/') + "/" + name;
                string target = Resolve(root, path);
                switch (entry.EntryType)
                {
                    case TarEntryType.Directory:
                        MakeDirectory(target, (uint)entry.Mode, new CopyAttributes((uint)entry.Uid, (uint)entry.Gid, (uint)entry.Mode));
                        directoryTimes.Add((target, entry.ModificationTime));
                        continue;
                    case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                        RemoveNonDirectory(target, path);
                        using (var output = new FileStream(target, FileMode.CreateNew, FileAccess.Write))
                        {
                            entry.DataStream?.CopyTo(output);
                        }
                        FileSystemCalls.Chmod(target, (uint)entry.Mode);
                        break;
                    case TarEntryType.SymbolicLink:
                        RemoveNonDirectory(target, path);
                        File.CreateSymbolicLink(target, entry.LinkName);
                        break;
                    case TarEntryType.HardLink:
                        RemoveNonDirectory(target, path);
                        FileSystemCalls.Link(Resolve(root, destination.TrimEnd('/') + "/" + BuildContext.Clean(entry.LinkName)), target);
                        continue;
                    default:
                        continue; // devices and fifos in an ADDed archive are left out (a build makes no device nodes)
                }
                Chown(target, (uint)entry.Uid, (uint)entry.Gid);
                FileSystemCalls.SetTimes(target, entry.ModificationTime, entry.ModificationTime);
            }
            foreach (var (path, time) in Enumerable.Reverse(directoryTimes))
            {
                FileSystemCalls.SetTimes(path, time, time);
            }
        }
        catch (Exception exception) when (exception is InvalidDataException or FormatException or EndOfStreamException)
        {
            throw new BuildException($"ADD {Path.GetFileName(archive)}: not a valid tar archive ({exception.Message})", "check the archive with tar -tf");
        }
        finally
        {
            input.Dispose();
            if (decompressor is not null)
            {
                decompressor.WaitForExit();
                decompressor.Dispose();
            }
        }
    }

    /// <summary>Makes the directory <paramref name="path"/> inside <paramref name="root"/> and its missing parents
    /// (0755, root), returning the host path. Used for WORKDIR and COPY's destination directories.</summary>
    public static string MakeDirectories(string root, string path)
    {
        string current = "";
        foreach (string part in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            current += "/" + part;
            string target = Resolve(root, current);
            if (!Directory.Exists(target))
            {
                MakeDirectory(target, 0x1ed, new CopyAttributes());
            }
        }
        return Resolve(root, path);
    }

    /// <summary>The host path of <paramref name="path"/> in the container's root: every link resolved inside it but
    /// the last component, whose parents are made.</summary>
    private static string Resolve(string root, string path)
    {
        string parent = Path.GetDirectoryName("/" + path.Trim('/')) ?? "/";
        if (parent != "/")
        {
            string current = "";
            foreach (string part in parent.Split('/', StringSplitOptions.RemoveEmptyEntries))
            {
                current += "/" + part;
                string target = PathJoin.InRoot(root, current);
                if (!Directory.Exists(target))
                {
                    if (Path.Exists(target))
                    {
                        throw new BuildException($"cannot copy to {path}: {current} exists and is not a directory", "choose a destination below a directory");
                    }
                    MakeDirectory(target, 0x1ed, new CopyAttributes());
                }
            }
        }
        return PathJoin.InRoot(root, path, followLast: false);
    }

    private static void MakeDirectory(string target, uint mode, CopyAttributes attributes)
    {
        if (Directory.Exists(target))
        {
            return; // an existing directory keeps its owner and mode (COPY merges into it)
        }
        if (Path.Exists(target))
        {
            File.Delete(target);
        }
        Directory.CreateDirectory(target);
        Chown(target, attributes.Uid, attributes.Gid);
        FileSystemCalls.Chmod(target, attributes.Mode ?? mode);
    }

    private static void RemoveNonDirectory(string target, string shown)
    {
        if (Directory.Exists(target) && new DirectoryInfo(target).LinkTarget is null)
        {
            throw new BuildException($"cannot copy a file to {shown}: a directory is there", "end the destination with / to copy into the directory");
        }
        if (FileSystemCalls.TryLStat(target) is not null)
        {
            File.Delete(target);
        }
    }

    private static void SetTimes(string target, FileSystemCalls.Stat stat)
    {
        var modified = DateTimeOffset.FromUnixTimeSeconds(stat.ModifySeconds).AddTicks(stat.ModifyNanoseconds / 100);
        FileSystemCalls.SetTimes(target, modified, modified);
    }
}
