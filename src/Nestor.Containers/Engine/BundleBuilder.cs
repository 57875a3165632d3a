using System.Globalization;
using Nestor.Containers.Network;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>Writes a container's OCI bundle: its config.json, made of the security part's default spec
/// (<see cref="DefaultSpec"/>: Docker's namespaces, mounts, masked and read-only paths, 14 capabilities, seccomp
/// profile, devices cgroup), given the image's config as the record holds it (Entrypoint + Cmd, Env, WorkingDir,
/// User) and the flags (limits, capabilities, read-only root, privileged), then what only the engine knows: the
/// network mode, bind mounts, /etc/hostname, /etc/hosts and /etc/resolv.conf, the cgroup path.</summary>
public sealed class BundleBuilder
{
    /// <summary>The spec for <paramref name="record"/>, whose root is mounted at its merged directory.
    /// <paramref name="etcFiles"/> is where /etc/hostname, /etc/hosts and /etc/resolv.conf for it are written.</summary>
    public RuntimeSpec Build(ContainerRecord record, string etcFiles, bool rootless)
    {
        var config = record.Config;
        var host = record.HostConfig;
        var args = config.Entrypoint.Concat(config.Cmd).ToList();
        if (args.Count == 0)
        {
            throw new ContainerEngineException("no command: the image has neither Entrypoint nor Cmd; give one after the image name");
        }
        var user = ResolveUser(config.User, rootless ? UserDatabaseRoot(record.RootFileSystem) : record.RootFileSystem.MergedDirectory);
        var environment = new List<string>(config.Env) { $"HOSTNAME={config.Hostname}" };
        IReadOnlyList<SpecIdMapping>? uidMappings = null, gidMappings = null;
        if (rootless)
        {
            uidMappings = Mappings("/etc/subuid");
            gidMappings = Mappings("/etc/subgid");
        }
        RuntimeSpec spec;
        try
        {
            spec = DefaultSpec.Create(record.RootFileSystem.MergedDirectory, args, new DefaultSpecOptions
            {
                Privileged = host.Privileged,
                Rootless = rootless,
                UidMappings = uidMappings,
                GidMappings = gidMappings,
                Memory = host.Memory > 0 ? host.Memory : null,
                Cpus = host.NanoCpus > 0 ? host.NanoCpus / 1e9 : null,
                PidsLimit = host.PidsLimit > 0 ? host.PidsLimit : null,
                CapAdd = host.CapAdd,
                CapDrop = host.CapDrop,
                Hostname = config.Hostname,
                Env = environment,
                Cwd = config.WorkingDir.Length > 0 ? config.WorkingDir : "/",
                Uid = user.Uid,
                Gid = user.Gid,
                Terminal = config.Tty,
                ReadonlyRootfs = host.ReadonlyRootfs,
                CgroupsPath = rootless ? null : $"/nestor/{record.Id}",
            });
        }
        catch (Exception exception) when (exception is ContainerSecurityException or ArgumentException)
        {
            throw new ContainerEngineException(exception.Message, exception);
        }
        spec.Process!.User.AdditionalGids = user.AdditionalGids;
        var linux = spec.Linux!;
        linux.Namespaces ??= [];
        if (host.NetworkMode == NetworkMode.Host)
        {
            linux.Namespaces.RemoveAll(ns => ns.Type == "network");
        }
        var mounts = spec.Mounts ??= [];
        foreach (string bind in host.Binds)
        {
            var (source, destination, readOnly) = ParseBind(bind);
            mounts.Add(new SpecMount
            {
                Destination = destination,
                Type = "bind",
                Source = source,
                Options = readOnly ? ["rbind", "ro"] : ["rbind", "rw"],
            });
        }
        foreach (string tmpfs in host.Tmpfs)
        {
            int colon = tmpfs.IndexOf(':');
            // Docker's --tmpfs defaults: nosuid, nodev, noexec off (builds run what they unpack there), mode 1777.
            List<string> options = ["nosuid", "nodev", "mode=1777"];
            if (colon > 0)
            {
                options.AddRange(tmpfs[(colon + 1)..].Split(',', StringSplitOptions.RemoveEmptyEntries));
            }
            mounts.Add(new SpecMount { Destination = colon > 0 ? tmpfs[..colon] : tmpfs, Type = "tmpfs", Source = "tmpfs", Options = options });
        }
        WriteEtcFiles(record, etcFiles);
        foreach (string file in new[] { "hostname", "hosts", "resolv.conf" })
        {
            if (!mounts.Any(mount => mount.Destination == $"/etc/{file}"))
            {
                mounts.Add(new SpecMount { Destination = $"/etc/{file}", Type = "bind", Source = Path.Combine(etcFiles, file), Options = ["rbind", "rw"] });
            }
        }
        spec.Annotations ??= [];
        spec.Annotations["org.nestor.container.name"] = record.Name;
        spec.Annotations["org.nestor.image"] = record.ImageId;
        if (rootless)
        {
            // An unprivileged user cannot mount overlayfs on the host: Nestor's runtime mounts it in the container's
            // user and mount namespaces (userxattr: the store unpacked rootless layers with user.overlay.* xattrs).
            if (host.Runtime != "nestor")
            {
                throw new ContainerEngineException($"rootless containers need Nestor's runtime: {host.Runtime} does not honour {Runtime.RuntimeAnnotations.RootOverlay}, and an unprivileged user cannot mount the overlay root on the host; drop --runtime {host.Runtime} or run as root");
            }
            spec.Annotations[Runtime.RuntimeAnnotations.RootOverlay] = record.RootFileSystem.MountOptions + ",userxattr";
        }
        return spec;
    }

    /// <summary>Refuses unknown capability names in <c>--cap-add</c>/<c>--cap-drop</c> (the engine's error, 125).</summary>
    public static void CheckCapabilities(ContainerHostConfiguration host)
    {
        try
        {
            Capabilities.Resolve(Capabilities.DockerDefault, host.CapAdd, host.CapDrop);
        }
        catch (Exception exception) when (exception is ContainerSecurityException or ArgumentException or KeyNotFoundException)
        {
            throw new ContainerEngineException(exception.Message, exception);
        }
    }

    /// <summary>Rootless, the overlay is mounted only inside the container (<see cref="Runtime.RuntimeAnnotations.RootOverlay"/>),
    /// so /etc/passwd is read from the topmost layer that has it (upper first, as overlayfs(5) would show it).</summary>
    private static string UserDatabaseRoot(ContainerRootLayers root) =>
        new[] { root.UpperDirectory }.Concat(Enumerable.Reverse(root.LowerDirectories))
            .FirstOrDefault(directory => File.Exists(Path.Combine(directory, "etc/passwd"))) ?? root.MergedDirectory;

    /// <summary>Rootless: container root is the caller, container ids 1… the caller's subordinate range
    /// (user_namespaces(7); newuidmap(1) writes such a map for an unprivileged user).</summary>
    private static List<SpecIdMapping> Mappings(string file)
    {
        uint id = IdentityCalls.EffectiveUserId();
        if (file.EndsWith("subgid", StringComparison.Ordinal))
        {
            id = IdentityCalls.EffectiveGroupId();
        }
        var mappings = new List<SpecIdMapping> { new() { ContainerID = 0, HostID = id, Size = 1 } };
        var (start, count) = SubordinateRange(file);
        if (count > 0)
        {
            mappings.Add(new() { ContainerID = 1, HostID = start, Size = count });
        }
        return mappings;
    }

    /// <summary><c>--tmpfs PATH[:size=BYTES]</c>: an absolute path and only the size option (the others are fixed).</summary>
    public static string CheckTmpfs(string tmpfs)
    {
        int colon = tmpfs.IndexOf(':');
        string path = colon > 0 ? tmpfs[..colon] : tmpfs;
        string options = colon > 0 ? tmpfs[(colon + 1)..] : "";
        bool sizeOnly = options.Length == 0 || (options.StartsWith("size=", StringComparison.Ordinal)
            && ulong.TryParse(options[5..], NumberStyles.None, CultureInfo.InvariantCulture, out ulong size) && size > 0);
        return path.StartsWith('/') && sizeOnly ? tmpfs
            : throw new ContainerEngineException($"bad --tmpfs '{tmpfs}': give an absolute path, optionally with :size=BYTES (e.g. /tmp:size=67108864)");
    }

    /// <summary><c>HOST:CONTAINER[:ro|rw]</c>; the host side must be an absolute path (named volumes are not
    /// supported).</summary>
    public static (string Source, string Destination, bool ReadOnly) ParseBind(string bind)
    {
        string[] parts = bind.Split(':');
        if (parts.Length is < 2 or > 3 || !parts[0].StartsWith('/') || !parts[1].StartsWith('/')
            || (parts.Length == 3 && parts[2] is not ("ro" or "rw")))
        {
            throw new ContainerEngineException($"bad volume '{bind}': give -v /HOST/PATH:/CONTAINER/PATH[:ro] (absolute paths; named volumes are not supported)");
        }
        if (!Path.Exists(parts[0]))
        {
            throw new ContainerEngineException($"bad volume '{bind}': {parts[0]} does not exist on the host");
        }
        return (parts[0], parts[1], parts.Length == 3 && parts[2] == "ro");
    }

    /// <summary><c>-u</c>: <c>uid[:gid]</c> or <c>name[:group]</c>, names looked up in the container's /etc/passwd and
    /// /etc/group, as Docker does; an unknown name is the engine's error.</summary>
    public static SpecUser ResolveUser(string user, string rootDirectory)
    {
        if (user.Length == 0)
        {
            return new SpecUser { Uid = 0, Gid = 0 };
        }
        string[] parts = user.Split(':', 2);
        uint uid;
        uint? gid = null;
        if (uint.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out uint numericUid))
        {
            uid = numericUid;
            var entry = FindEntry(Path.Combine(rootDirectory, "etc/passwd"), fields => fields[2] == parts[0]);
            if (entry is not null && uint.TryParse(entry[3], CultureInfo.InvariantCulture, out uint primary))
            {
                gid = primary;
            }
        }
        else
        {
            var entry = FindEntry(Path.Combine(rootDirectory, "etc/passwd"), fields => fields[0] == parts[0])
                ?? throw new ContainerEngineException($"unable to find user {parts[0]}: no matching entries in the container's /etc/passwd");
            uid = uint.Parse(entry[2], CultureInfo.InvariantCulture);
            gid = uint.Parse(entry[3], CultureInfo.InvariantCulture);
        }
        if (parts.Length == 2)
        {
            if (uint.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out uint numericGid))
            {
                gid = numericGid;
            }
            else
            {
                var group = FindEntry(Path.Combine(rootDirectory, "etc/group"), fields => fields[0] == parts[1])
                    ?? throw new ContainerEngineException($"unable to find group {parts[1]}: no matching entries in the container's /etc/group");
                gid = uint.Parse(group[2], CultureInfo.InvariantCulture);
            }
        }
        return new SpecUser { Uid = uid, Gid = gid ?? 0 };
    }

    private static string[]? FindEntry(string file, Func<string[], bool> match)
    {
        if (!File.Exists(file))
        {
            return null;
        }
        foreach (string line in File.ReadLines(file))
        {
            string[] fields = line.Split(':');
            if (fields.Length >= 4 && match(fields))
            {
                return fields;
            }
        }
        return null;
    }

    private static void WriteEtcFiles(ContainerRecord record, string directory)
    {
        Directory.CreateDirectory(directory);
        string hostname = record.Config.Hostname;
        File.WriteAllText(Path.Combine(directory, "hostname"), hostname + "\n");
        string address = record.Network?.Address ?? "127.0.1.1";
        File.WriteAllText(Path.Combine(directory, "hosts"),
            $"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n");
        string resolv = File.Exists("/etc/resolv.conf") ? File.ReadAllText("/etc/resolv.conf") : "";
        File.WriteAllText(Path.Combine(directory, "resolv.conf"), resolv);
    }

    /// <summary>The calling user's subordinate id range from /etc/subuid or /etc/subgid (user_namespaces(7),
    /// subuid(5)); (0, 0) when it has none.</summary>
    public static (uint Start, uint Count) SubordinateRange(string file)
    {
        if (!File.Exists(file))
        {
            return (0, 0);
        }
        string user = Environment.UserName;
        string uid = IdentityCalls.EffectiveUserId().ToString(CultureInfo.InvariantCulture);
        foreach (string line in File.ReadLines(file))
        {
            string[] fields = line.Split(':');
            if (fields.Length == 3 && (fields[0] == user || fields[0] == uid)
                && uint.TryParse(fields[1], CultureInfo.InvariantCulture, out uint start) && uint.TryParse(fields[2], CultureInfo.InvariantCulture, out uint count))
            {
                return (start, count);
            }
        }
        return (0, 0);
    }
}
