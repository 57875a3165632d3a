using System.Diagnostics;
using System.Globalization;
using Nestor.Containers.Engine;
using Nestor.Containers.Images;
using Nestor.Host;

namespace Nestor.Containers.Build;

/// <summary>What <c>nestor build</c> does differently for an unprivileged user. Nothing is mounted on the host: RUN
/// steps are rootless containers of the engine (their overlay mounted by Nestor's runtime in the container's own user
/// and mount namespaces, user_namespaces(7); the kernel allows overlayfs there since 5.11), and COPY and ADD write
/// straight into the step's fresh upper directory, looking the state's files up in its layers. Container root is the
/// user and container ids 1… the user's subordinate range (/etc/subuid, /etc/subgid), so files container root owns
/// belong to the user on the host; other owners (<c>COPY --chown=33</c>, a RUN's <c>chown</c>) are set, and every
/// layer read, in a user namespace that maps the range (<c>unshare --map-root-user --map-auto</c>, as
/// <c>podman unshare</c>), which records the owners as the container sees them.</summary>
public static class RootlessBuild
{
    private static readonly string[] Unshare = ["unshare", "--user", "--map-root-user", "--map-auto"];

    /// <summary>Refuses a build by a user without a subordinate range in /etc/subuid or /etc/subgid, naming the file
    /// and the line to add (newuidmap(1) and newgidmap(1) map only what those files grant; a build needs more ids
    /// than the user's own: packages own files as other users).</summary>
    public static void CheckSubordinateIds(string subuid = "/etc/subuid", string subgid = "/etc/subgid")
    {
        uint uid = IdentityCalls.EffectiveUserId();
        string name = UserName(uid);
        foreach (string file in new[] { subuid, subgid })
        {
            if (!HasRange(file, name, uid))
            {
                throw new BuildException(
                    $"rootless nestor build needs subordinate ids, and {file} has no range for {name} (uid {uid})",
                    $"ask an administrator to add the line '{name}:100000:65536' to {file} (or run usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}); newuidmap and newgidmap (Debian's uidmap package) must be installed");
            }
        }
        foreach (string tool in new[] { "newuidmap", "newgidmap" })
        {
            if (!new[] { "/usr/bin", "/bin", "/usr/sbin", "/sbin" }.Any(directory => File.Exists(Path.Combine(directory, tool))))
            {
                throw new BuildException($"rootless nestor build needs {tool}, which is not installed", "install Debian's uidmap package (apt-get install uidmap)");
            }
        }
    }

    /// <summary>Whether <paramref name="file"/> has a <c>NAME:START:COUNT</c> (or <c>UID:…</c>) line with COUNT &gt; 0.</summary>
    public static bool HasRange(string file, string name, uint uid)
    {
        if (!File.Exists(file))
        {
            return false;
        }
        string id = uid.ToString(CultureInfo.InvariantCulture);
        return File.ReadLines(file).Select(line => line.Split(':')).Any(fields => fields.Length == 3
            && (fields[0] == name || fields[0] == id)
            && uint.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out uint count) && count > 0);
    }

    private static string UserName(uint uid)
    {
        string id = uid.ToString(CultureInfo.InvariantCulture);
        return File.Exists("/etc/passwd")
            ? File.ReadLines("/etc/passwd").Select(line => line.Split(':')).FirstOrDefault(fields => fields.Length > 2 && fields[2] == id)?[0] ?? id
            : id;
    }

    /// <summary>The layer of <paramref name="upper"/>, read by <c>nestor __layer-diff</c> in a user namespace that
    /// maps the subordinate ids (so that every file is readable and its owner is the container's), stored as an
    /// uncompressed tar blob and unpacked.</summary>
    internal static (OciDescriptor Descriptor, string DiffId) WriteLayer(ImageStore store, IReadOnlyList<string> nestorCommand, string upper)
    {
        string spool = Path.Combine(store.Layout.TemporaryDirectory, "layer-" + Guid.NewGuid().ToString("N") + ".tar");
        try
        {
            using var stream = new FileStream(spool, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16);
            RootlessStorage.WriteLayerDiff(nestorCommand, upper, stream);
            stream.Position = 0;
            using (store.Lock())
            {
                return store.WriteUncompressedLayer(stream);
            }
        }
        catch (ContainerEngineException exception)
        {
            throw new BuildException(exception.Message, "check /etc/subuid and /etc/subgid for this user", exception);
        }
        finally
        {
            File.Delete(spool);
        }
    }

    /// <summary>Gives the files COPY wrote (<paramref name="owners"/>: host path, container uid and gid) their
    /// owners, in a user namespace mapping container ids as the container does; files of container root already
    /// belong to the user.</summary>
    public static void ApplyOwners(IReadOnlyList<(string Path, uint Uid, uint Gid)> owners)
    {
        foreach (var group in owners.Where(o => o.Uid != 0 || o.Gid != 0).GroupBy(o => (o.Uid, o.Gid)))
        {
            var start = new ProcessStartInfo(Unshare[0]) { RedirectStandardInput = true, RedirectStandardError = true };
            foreach (string word in Unshare.Skip(1).Concat(["--", "xargs", "-0", "chown", "-h",
                $"{group.Key.Uid.ToString(CultureInfo.InvariantCulture)}:{group.Key.Gid.ToString(CultureInfo.InvariantCulture)}", "--"]))
            {
                start.ArgumentList.Add(word);
            }
            using var process = Process.Start(start) ?? throw new BuildException("unshare could not be started", "install util-linux");
            var error = process.StandardError.ReadToEndAsync();
            foreach (var (path, _, _) in group)
            {
                process.StandardInput.Write(path);
                process.StandardInput.Write('\0');
            }
            process.StandardInput.Close();
            process.WaitForExit();
            if (process.ExitCode != 0)
            {
                throw new BuildException($"--chown={group.Key.Uid}:{group.Key.Gid}: could not give the copied files that owner in a user namespace with the subordinate ids (unshare --map-root-user --map-auto chown, status {process.ExitCode}): {error.Result.Trim()}",
                    "check that /etc/subuid and /etc/subgid give this user a range that holds the id (ids above the range cannot be mapped)");
            }
        }
    }

    /// <summary>A state's files as its overlay would show them, without mounting it: an upper directory over lower
    /// ones (topmost first), overlayfs's whiteouts (a 0/0 character device, as <see cref="Storage.LayerUnpacker"/>
    /// makes them in either mode) hiding what is below. Opaque directories are not looked at: an entry below a
    /// directory a higher layer made opaque is still found.</summary>
    public sealed class LayerView(string upper, IReadOnlyList<string> lowers)
    {
        /// <summary>The layers, the writable one first.</summary>
        private IEnumerable<string> Layers => new[] { upper }.Concat(lowers.Reverse());

        /// <summary>The host path of the topmost entry at <paramref name="path"/> (no link followed), or null when no
        /// layer has it or a whiteout hides it.</summary>
        public string? Find(string path)
        {
            string relative = path.Trim('/');
            if (relative.Length == 0)
            {
                return upper;
            }
            foreach (string layer in Layers)
            {
                string full = Path.Combine(layer, relative);
                if (FileSystemCalls.TryLStat(full) is { } status)
                {
                    bool whiteout = (status.Mode & FileSystemCalls.S_IFMT) == 0x2000 && status.RawDevice == 0;
                    return whiteout ? null : full;
                }
            }
            return null;
        }

        /// <summary><paramref name="path"/> with the links of its directories resolved in the view (an absolute
        /// target from the root, a relative one from the link's directory), as the kernel would in the merged root;
        /// a link in the last component is not followed (one walk, <see cref="Runtime.PathJoin.Resolve"/>).</summary>
        public string ResolveParents(string path) =>
            Runtime.PathJoin.Resolve(path, candidate => Find(candidate) is { } found ? new FileInfo(found).LinkTarget : null, followLast: false);

        /// <summary>The directories from the topmost missing one down to <paramref name="target"/> that the view
        /// lacks (none when the target exists).</summary>
        public IEnumerable<string> MissingPaths(string target)
        {
            var missing = new List<string>();
            for (string path = target; path.Length > 1; path = Path.GetDirectoryName(path) ?? "/")
            {
                if (Find(path) is not null)
                {
                    break;
                }
                missing.Add(path);
            }
            return missing;
        }

        /// <summary>Makes <paramref name="path"/> and its parents in the upper directory where the view lacks them or
        /// has them only below, with the mode of the lower directory (new ones 0755), so that the merged root shows
        /// the same directories.</summary>
        public void MakeDirectories(string path)
        {
            string current = "";
            foreach (string part in ResolveParents(path.TrimEnd('/') + "/.").Split('/', StringSplitOptions.RemoveEmptyEntries))
            {
                if (part == ".")
                {
                    continue;
                }
                current += "/" + part;
                string inUpper = Path.Combine(upper, current.TrimStart('/'));
                if (Directory.Exists(inUpper))
                {
                    continue;
                }
                uint mode = Find(current) is { } below && Directory.Exists(below) ? FileSystemCalls.LStat(below).Mode & 0xfff : 0x1ed;
                Directory.CreateDirectory(inUpper);
                FileSystemCalls.Chmod(inUpper, mode);
            }
        }
    }
}
