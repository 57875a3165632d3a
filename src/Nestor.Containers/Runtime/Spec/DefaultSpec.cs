using System.Globalization;
using Nestor.Containers.Security;

namespace Nestor.Containers.Runtime.Spec;

/// <summary>What a container's defaults are changed by (Docker's <c>run</c> flags).</summary>
public sealed record DefaultSpecOptions
{
    /// <summary><c>--privileged</c>: every capability, no seccomp filter, no masked or read-only paths, /sys and the
    /// cgroup file system writable, every host device node and all devices allowed in the devices cgroup.</summary>
    public bool Privileged { get; init; }

    /// <summary>Run by an unprivileged user: a user namespace with <see cref="UidMappings"/>/<see cref="GidMappings"/>
    /// (default: the caller's uid and gid as root inside), /sys bind-mounted read-only instead of a new sysfs, no
    /// cgroup mount, no devpts gid, and no cgroup resources unless <see cref="CgroupsDelegated"/>.</summary>
    public bool Rootless { get; init; }

    /// <summary>Rootless only: the caller owns a delegated cgroup (cgroup v2 with delegation), so limits can be set.</summary>
    public bool CgroupsDelegated { get; init; }

    public IReadOnlyList<SpecIdMapping>? UidMappings { get; init; }
    public IReadOnlyList<SpecIdMapping>? GidMappings { get; init; }

    /// <summary><c>--memory</c> in bytes.</summary>
    public long? Memory { get; init; }

    /// <summary><c>--memory-swap</c> in bytes (memory plus swap; -1 unlimited). Docker's default when only
    /// <see cref="Memory"/> is given: twice the memory.</summary>
    public long? MemorySwap { get; init; }

    /// <summary><c>--cpus</c>: a CFS quota of <c>cpus × 100000</c> µs per 100000 µs period.</summary>
    public double? Cpus { get; init; }

    /// <summary><c>--cpu-shares</c>.</summary>
    public ulong? CpuShares { get; init; }

    /// <summary><c>--pids-limit</c>.</summary>
    public long? PidsLimit { get; init; }

    public IReadOnlyList<string>? CapAdd { get; init; }
    public IReadOnlyList<string>? CapDrop { get; init; }

    public string? Hostname { get; init; }
    public IReadOnlyList<string>? Env { get; init; }
    public string Cwd { get; init; } = "/";
    public uint Uid { get; init; }
    public uint Gid { get; init; }
    public bool Terminal { get; init; }
    public bool ReadonlyRootfs { get; init; }
    public bool NoNewPrivileges { get; init; }

    /// <summary>linux.cgroupsPath; null leaves it to the runtime.</summary>
    public string? CgroupsPath { get; init; }
}

/// <summary>A default config.json the way <c>runc spec</c> makes one, with Docker's defaults (moby's
/// oci/defaults.go and daemon/oci_linux.go as documented by <c>docker run</c>'s reference).</summary>
public static class DefaultSpec
{
    /// <summary>The PATH Docker gives a container whose image sets none.</summary>
    public const string DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>The runtime-spec version DefaultSpec writes: 1.0.2, the newest that every supported runtime accepts
    /// (Debian bookworm's crun 1.8 refuses any ociVersion but 1.0.x; the fields written here all exist in 1.0.2).</summary>
    public const string OciVersion = "1.0.2";

    /// <summary>CFS period <see cref="DefaultSpecOptions.Cpus"/> is a fraction of (µs).</summary>
    public const ulong CpuPeriod = 100000;

    /// <summary>Paths masked (an empty read-only file or tmpfs over them): kernel memory, keys, timers, firmware and
    /// host hardware details a container has no business reading.</summary>
    public static IReadOnlyList<string> MaskedPaths { get; } =
    [
        "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ];

    /// <summary>Paths mounted read-only: the kernel's tunables and the magic SysRq trigger.</summary>
    public static IReadOnlyList<string> ReadonlyPaths { get; } =
        ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

    /// <summary>The devices cgroup rules: deny everything, allow mknod of any node (so images can carry device files)
    /// and read/write/mknod of the runtime-spec's default devices (config-linux.md, "Default Devices": null, zero,
    /// full, random, urandom, tty, console, ptmx), the pseudo-terminals and /dev/net/tun, as Docker does.</summary>
    public static IReadOnlyList<SpecDeviceCgroup> DefaultDeviceRules { get; } =
    [
        new() { Allow = false, Access = "rwm" },
        new() { Allow = true, Type = "c", Access = "m" },
        new() { Allow = true, Type = "b", Access = "m" },
        Rule(1, 3), Rule(1, 5), Rule(1, 7), Rule(1, 8), Rule(1, 9), Rule(5, 0), Rule(5, 1), Rule(5, 2),
        new() { Allow = true, Type = "c", Major = 136, Access = "rwm" },
        Rule(10, 200),
    ];

    /// <summary>The namespaces Docker creates: pid, ipc, uts, mount, network and cgroup; user only rootless; never time.</summary>
    public static IReadOnlyList<string> DefaultNamespaces { get; } = ["pid", "network", "ipc", "uts", "mount", "cgroup"];

    /// <summary>A config.json for <paramref name="args"/> in <paramref name="rootfs"/> (a path, relative to the bundle
    /// or absolute).</summary>
    public static RuntimeSpec Create(string rootfs, IReadOnlyList<string> args, DefaultSpecOptions? options = null)
    {
        options ??= new DefaultSpecOptions();
        // --privileged: every capability the runtime can pass on, i.e. those in its own bounding set (a runtime cannot
        // grant one it lacks: on some hosts even root has no CAP_SYS_RESOURCE).
        var capabilities = options.Privileged
            ? Capabilities.All.Where(Capabilities.ReadCurrent().Bounding!.Contains).ToList()
            : Capabilities.Resolve(Capabilities.DockerDefault, options.CapAdd, options.CapDrop).ToList();
        var env = new List<string>();
        if (options.Env is null || !options.Env.Any(e => e.StartsWith("PATH=", StringComparison.Ordinal)))
        {
            env.Add(DefaultPath);
        }
        if (options.Terminal)
        {
            env.Add("TERM=xterm");
        }
        env.AddRange(options.Env ?? []);

        var spec = new RuntimeSpec
        {
            OciVersion = OciVersion,
            Root = new SpecRoot { Path = rootfs, Readonly = options.ReadonlyRootfs ? true : null },
            Hostname = options.Hostname,
            Process = new SpecProcess
            {
                Terminal = options.Terminal,
                User = new SpecUser { Uid = options.Uid, Gid = options.Gid },
                Args = [.. args],
                Env = env,
                Cwd = options.Cwd,
                Capabilities = Capabilities.ToSpec(capabilities),
                NoNewPrivileges = options.NoNewPrivileges,
            },
            Mounts = Mounts(options),
            Linux = new SpecLinux
            {
                Namespaces = [.. DefaultNamespaces.Select(type => new SpecNamespace { Type = type })],
                CgroupsPath = options.CgroupsPath,
                Resources = Resources(options),
                Seccomp = options.Privileged ? null : SeccompProfiles.Default(capabilities),
                MaskedPaths = options.Privileged ? null : [.. MaskedPaths],
                ReadonlyPaths = options.Privileged ? null : [.. ReadonlyPaths],
                Devices = options.Privileged ? HostDevices() : null,
            },
        };
        if (options.Rootless)
        {
            spec.Linux.Namespaces.Add(new SpecNamespace { Type = "user" });
            spec.Linux.UidMappings = [.. options.UidMappings ?? [new SpecIdMapping { ContainerID = 0, HostID = CurrentId("-u"), Size = 1 }]];
            spec.Linux.GidMappings = [.. options.GidMappings ?? [new SpecIdMapping { ContainerID = 0, HostID = CurrentId("-g"), Size = 1 }]];
        }
        return spec;
    }

    private static List<SpecMount> Mounts(DefaultSpecOptions options)
    {
        string sysAccess = options.Privileged ? "rw" : "ro";
        var devpts = new List<string> { "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620" };
        if (!options.Rootless)
        {
            devpts.Add("gid=5"); // group tty; a rootless container has no gid 5 mapped
        }
        var mounts = new List<SpecMount>
        {
            new() { Destination = "/proc", Type = "proc", Source = "proc", Options = ["nosuid", "noexec", "nodev"] },
            new() { Destination = "/dev", Type = "tmpfs", Source = "tmpfs", Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            new() { Destination = "/dev/pts", Type = "devpts", Source = "devpts", Options = devpts },
            new() { Destination = "/dev/shm", Type = "tmpfs", Source = "shm", Options = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            new() { Destination = "/dev/mqueue", Type = "mqueue", Source = "mqueue", Options = ["nosuid", "noexec", "nodev"] },
        };
        if (options.Rootless)
        {
            // A user namespace may not mount a new sysfs for a network namespace it does not own the device model of;
            // runc's rootless spec binds the host's, read-only.
            mounts.Add(new() { Destination = "/sys", Type = "none", Source = "/sys", Options = ["rbind", "nosuid", "noexec", "nodev", "ro"] });
        }
        else
        {
            mounts.Add(new() { Destination = "/sys", Type = "sysfs", Source = "sysfs", Options = ["nosuid", "noexec", "nodev", sysAccess] });
            mounts.Add(new() { Destination = "/sys/fs/cgroup", Type = "cgroup", Source = "cgroup", Options = ["nosuid", "noexec", "nodev", "relatime", sysAccess] });
        }
        return mounts;
    }

    private static SpecResources? Resources(DefaultSpecOptions options)
    {
        bool limits = options.Memory is not null || options.Cpus is not null || options.PidsLimit is not null || options.CpuShares is not null;
        if (options.Rootless && !options.CgroupsDelegated)
        {
            if (limits)
            {
                throw new ContainerSecurityException(
                    "--memory, --cpus, --cpu-shares and --pids-limit need a cgroup this user may write, and a rootless container has none here: " +
                    "run as root, or on a cgroup v2 host start the command in a delegated cgroup (systemd-run --user --scope -p Delegate=yes …)");
            }
            return null;
        }
        var resources = new SpecResources
        {
            Devices = options.Privileged ? [new SpecDeviceCgroup { Allow = true, Access = "rwm" }] : [.. DefaultDeviceRules],
        };
        if (options.Rootless)
        {
            resources.Devices = null; // the devices controller needs CAP_SYS_ADMIN in the host's namespace
        }
        if (options.Memory is { } memory)
        {
            resources.Memory = new SpecMemory { Limit = memory, Swap = options.MemorySwap ?? memory * 2 };
        }
        if (options.Cpus is not null || options.CpuShares is not null)
        {
            resources.Cpu = new SpecCpu { Shares = options.CpuShares };
            if (options.Cpus is { } cpus)
            {
                if (cpus <= 0)
                {
                    throw new ContainerSecurityException($"--cpus {cpus.ToString(CultureInfo.InvariantCulture)}: the number of CPUs must be positive (e.g. --cpus 1.5)");
                }
                resources.Cpu.Quota = (long)Math.Round(cpus * CpuPeriod);
                resources.Cpu.Period = CpuPeriod;
            }
        }
        if (options.PidsLimit is { } pids)
        {
            resources.Pids = new SpecPids { Limit = pids };
        }
        return resources;
    }

    private static SpecDeviceCgroup Rule(long major, long minor) =>
        new() { Allow = true, Type = "c", Major = major, Minor = minor, Access = "rwm" };

    // --privileged: every device node of the host (from /sys/dev, whose entries are MAJOR:MINOR with DEVNAME in their
    // uevent), except the defaults the runtime creates itself and the pseudo-terminals (the container has its own).
    private static List<SpecDevice> HostDevices()
    {
        var defaults = new HashSet<string>(StringComparer.Ordinal)
        {
            "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/console", "/dev/ptmx",
        };
        var devices = new List<SpecDevice>();
        foreach (var (directory, type) in new[] { ("/sys/dev/char", "c"), ("/sys/dev/block", "b") })
        {
            if (!Directory.Exists(directory))
            {
                continue;
            }
            foreach (string entry in Directory.EnumerateFileSystemEntries(directory).Order(StringComparer.Ordinal))
            {
                string[] numbers = Path.GetFileName(entry).Split(':');
                string? name = ReadDeviceName(Path.Combine(entry, "uevent"));
                if (numbers.Length != 2 || name is null)
                {
                    continue;
                }
                string path = "/dev/" + name;
                if (defaults.Contains(path) || path.StartsWith("/dev/pts/", StringComparison.Ordinal) || !File.Exists(path))
                {
                    continue;
                }
                devices.Add(new SpecDevice
                {
                    Type = type,
                    Path = path,
                    Major = long.Parse(numbers[0], CultureInfo.InvariantCulture),
                    Minor = long.Parse(numbers[1], CultureInfo.InvariantCulture),
                    FileMode = OperatingSystem.IsWindows() ? null : (uint)File.GetUnixFileMode(path),
                    Uid = 0,
                    Gid = 0,
                });
            }
        }
        return devices;
    }

    private static string? ReadDeviceName(string uevent)
    {
        try
        {
            return File.ReadLines(uevent).FirstOrDefault(l => l.StartsWith("DEVNAME=", StringComparison.Ordinal))?["DEVNAME=".Length..];
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    // The caller's real uid/gid from /proc/self/status ("Uid:\treal\teffective…"), no P/Invoke needed.
    private static uint CurrentId(string which)
    {
        string prefix = which == "-u" ? "Uid:" : "Gid:";
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith(prefix, StringComparison.Ordinal));
        return uint.Parse(line[prefix.Length..].Split('\t', StringSplitOptions.RemoveEmptyEntries)[0], CultureInfo.InvariantCulture);
    }
}
