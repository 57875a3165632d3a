using System.Globalization;
using Nestor.Containers.Network;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Engine;

/// <summary>Writes a container's OCI bundle: its config.json, made of the base spec (namespaces, mounts, masked and
/// read-only paths, Docker's default capabilities), then the image's config as the record holds it (Entrypoint + Cmd,
/// Env, WorkingDir, User), then the flags (limits, binds, capabilities, network mode, read-only root).</summary>
public sealed class BundleBuilder(Func<RuntimeSpec>? baseSpec = null)
{
    /// <summary>Docker's default capability set (the 14 of moby's <c>oci/caps/defaults.go</c>).</summary>
    public static readonly IReadOnlyList<string> DefaultCapabilities =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ];

    /// <summary>Every capability of capabilities(7) up to CAP_CHECKPOINT_RESTORE (40), for <c>--privileged</c>.</summary>
    public static readonly IReadOnlyList<string> AllCapabilities =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ];

    /// <summary>The default PATH a container gets when its image sets none (Docker's).</summary>
    public const string DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>The spec for <paramref name="record"/>, whose root is mounted at its merged directory.
    /// <paramref name="etcFiles"/> is where /etc/hostname, /etc/hosts and /etc/resolv.conf for it are written.</summary>
    public RuntimeSpec Build(ContainerRecord record, string etcFiles, bool rootless)
    {
        var spec = baseSpec?.Invoke() ?? MinimalBase(rootless);
        var config = record.Config;
        var host = record.HostConfig;
        spec.Root = new SpecRoot { Path = record.RootFileSystem.MergedDirectory, Readonly = host.ReadonlyRootfs ? true : null };
        spec.Hostname = config.Hostname;
        var process = spec.Process ??= new SpecProcess();
        process.Terminal = config.Tty ? true : null;
        process.Args = [.. config.Entrypoint, .. config.Cmd];
        if (process.Args.Count == 0)
        {
            throw new ContainerEngineException("no command: the image has neither Entrypoint nor Cmd; give one after the image name");
        }
        var environment = new List<string>(config.Env);
        if (!environment.Any(variable => variable.StartsWith("PATH=", StringComparison.Ordinal)))
        {
            environment.Insert(0, DefaultPath);
        }
        environment.Add($"HOSTNAME={config.Hostname}");
        if (config.Tty && !environment.Any(variable => variable.StartsWith("TERM=", StringComparison.Ordinal)))
        {
            environment.Add("TERM=xterm");
        }
        process.Env = environment;
        process.Cwd = config.WorkingDir.Length > 0 ? config.WorkingDir : "/";
        process.User = ResolveUser(config.User, record.RootFileSystem.MergedDirectory);
        var capabilities = Capabilities(host);
        process.Capabilities = new SpecCapabilities
        {
            Bounding = capabilities,
            Effective = capabilities,
            Permitted = capabilities,
        };

        var linux = spec.Linux ??= new SpecLinux();
        linux.Namespaces ??= [];
        if (host.NetworkMode == NetworkMode.Host)
        {
            linux.Namespaces.RemoveAll(ns => ns.Type == "network");
        }
        else if (!linux.Namespaces.Any(ns => ns.Type == "network"))
        {
            linux.Namespaces.Add(new SpecNamespace { Type = "network" });
        }
        if (host.Privileged)
        {
            // Docker's --privileged: nothing masked or read-only, every device allowed.
            linux.MaskedPaths = null;
            linux.ReadonlyPaths = null;
            linux.Seccomp = null;
        }
        if (!rootless)
        {
            linux.CgroupsPath = $"/nestor/{record.Id}";
            var resources = linux.Resources ??= new SpecResources();
            resources.Devices ??= [new SpecDeviceCgroup { Allow = host.Privileged, Access = "rwm" }];
            if (host.Memory > 0)
            {
                resources.Memory = new SpecMemory { Limit = host.Memory };
            }
            if (host.NanoCpus > 0)
            {
                const ulong period = 100_000;
                resources.Cpu = new SpecCpu { Period = period, Quota = (long)(host.NanoCpus * (long)period / 1_000_000_000) };
            }
            if (host.PidsLimit > 0)
            {
                resources.Pids = new SpecPids { Limit = host.PidsLimit };
            }
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
        return spec;
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

    /// <summary>The capability set: Docker's default 14 (every one with <c>--privileged</c>), then
    /// <c>--cap-drop</c>, then <c>--cap-add</c>; names with or without <c>CAP_</c>, any case, or <c>ALL</c>.</summary>
    public static List<string> Capabilities(ContainerHostConfiguration host)
    {
        if (host.Privileged)
        {
            return [.. AllCapabilities];
        }
        var set = new List<string>(DefaultCapabilities);
        foreach (string drop in host.CapDrop.Select(Normalize))
        {
            if (drop == "CAP_ALL")
            {
                set.Clear();
            }
            else
            {
                set.Remove(drop);
            }
        }
        foreach (string add in host.CapAdd.Select(Normalize))
        {
            if (add == "CAP_ALL")
            {
                return [.. AllCapabilities];
            }
            if (!AllCapabilities.Contains(add))
            {
                throw new ContainerEngineException($"unknown capability '{add}' (capabilities(7) names them, e.g. NET_ADMIN)");
            }
            if (!set.Contains(add))
            {
                set.Add(add);
            }
        }
        return set;
    }

    private static string Normalize(string name)
    {
        string upper = name.Trim().ToUpperInvariant();
        return upper.StartsWith("CAP_", StringComparison.Ordinal) ? upper : $"CAP_{upper}";
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

    /// <summary>The base the engine uses until the security part's default spec is wired in: the runtime-spec's
    /// usual file systems, Docker's masked and read-only paths, and a new pid, ipc, uts, mount and network namespace
    /// (user namespace with the caller's subordinate ids when rootless).</summary>
    public static RuntimeSpec MinimalBase(bool rootless)
    {
        var mounts = new List<SpecMount>
        {
            new() { Destination = "/proc", Type = "proc", Source = "proc" },
            new() { Destination = "/dev", Type = "tmpfs", Source = "tmpfs", Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            new() { Destination = "/dev/pts", Type = "devpts", Source = "devpts",
                Options = rootless ? ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] : ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            new() { Destination = "/dev/shm", Type = "tmpfs", Source = "shm", Options = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            new() { Destination = "/dev/mqueue", Type = "mqueue", Source = "mqueue", Options = ["nosuid", "noexec", "nodev"] },
        };
        if (rootless)
        {
            mounts.Add(new() { Destination = "/sys", Type = "none", Source = "/sys", Options = ["rbind", "nosuid", "noexec", "nodev", "ro"] });
        }
        else
        {
            mounts.Add(new() { Destination = "/sys", Type = "sysfs", Source = "sysfs", Options = ["nosuid", "noexec", "nodev", "ro"] });
            mounts.Add(new() { Destination = "/sys/fs/cgroup", Type = "cgroup", Source = "cgroup", Options = ["nosuid", "noexec", "nodev", "relatime", "ro"] });
        }
        var namespaces = new List<SpecNamespace>
        {
            new() { Type = "pid" }, new() { Type = "ipc" }, new() { Type = "uts" }, new() { Type = "mount" }, new() { Type = "network" },
        };
        var linux = new SpecLinux
        {
            Namespaces = namespaces,
            MaskedPaths = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"],
            ReadonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        };
        if (rootless)
        {
            namespaces.Add(new() { Type = "user" });
            var (uidStart, uidCount) = SubordinateRange("/etc/subuid");
            var (gidStart, gidCount) = SubordinateRange("/etc/subgid");
            uint uid = Native.EngineCalls.GetEffectiveUserId();
            linux.UidMappings = [new() { ContainerID = 0, HostID = uid, Size = 1 }];
            linux.GidMappings = [new() { ContainerID = 0, HostID = uid, Size = 1 }];
            if (uidCount > 0)
            {
                linux.UidMappings.Add(new() { ContainerID = 1, HostID = uidStart, Size = uidCount });
            }
            if (gidCount > 0)
            {
                linux.GidMappings.Add(new() { ContainerID = 1, HostID = gidStart, Size = gidCount });
            }
        }
        return new RuntimeSpec { Mounts = mounts, Linux = linux, Process = new SpecProcess() };
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
        string uid = Native.EngineCalls.GetEffectiveUserId().ToString(CultureInfo.InvariantCulture);
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
