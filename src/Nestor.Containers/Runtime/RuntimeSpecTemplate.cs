using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>runc's <c>spec</c> shape without capabilities, rlimits or seccomp (the runtime's tests use it to check
/// namespaces and mounts alone; <c>nestor oci spec</c> writes DefaultSpec's Docker defaults) (pid, network, ipc, uts, mount and cgroup namespaces; proc, /dev tmpfs,
/// devpts, shm, mqueue, sysfs and read-only cgroup mounts; runc's masked and read-only paths), and with
/// <c>rootless</c> a user namespace mapping the caller to root and no network namespace, so /sys is bound.</summary>
internal static class RuntimeSpecTemplate
{
    /// <summary>runc's maskedPaths.</summary>
    public static readonly IReadOnlyList<string> MaskedPaths =
    [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
    ];

    /// <summary>runc's readonlyPaths.</summary>
    public static readonly IReadOnlyList<string> ReadonlyPaths =
    [
        "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    ];

    public static RuntimeSpec Create(IReadOnlyList<string>? args = null, bool rootless = false)
    {
        var spec = new RuntimeSpec
        {
            Root = new SpecRoot { Path = "rootfs", Readonly = true },
            Process = new SpecProcess
            {
                Terminal = false,
                Args = args is { Count: > 0 } ? [.. args] : ["sh"],
                Env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                Cwd = "/",
                NoNewPrivileges = true,
            },
            Hostname = "nestor",
            Mounts =
            [
                new() { Destination = "/proc", Type = "proc", Source = "proc" },
                new() { Destination = "/dev", Type = "tmpfs", Source = "tmpfs", Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
                new() { Destination = "/dev/pts", Type = "devpts", Source = "devpts", Options = rootless
                    ? ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
                    : ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
                new() { Destination = "/dev/shm", Type = "tmpfs", Source = "shm", Options = ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
                new() { Destination = "/dev/mqueue", Type = "mqueue", Source = "mqueue", Options = ["nosuid", "noexec", "nodev"] },
                rootless
                    ? new() { Destination = "/sys", Type = "none", Source = "/sys", Options = ["rbind", "nosuid", "noexec", "nodev", "ro"] }
                    : new() { Destination = "/sys", Type = "sysfs", Source = "sysfs", Options = ["nosuid", "noexec", "nodev", "ro"] },
                new() { Destination = "/sys/fs/cgroup", Type = "cgroup", Source = "cgroup", Options = ["nosuid", "noexec", "nodev", "relatime", "ro"] },
            ],
            Linux = new SpecLinux
            {
                Namespaces = rootless
                    ? [new() { Type = "pid" }, new() { Type = "ipc" }, new() { Type = "uts" }, new() { Type = "mount" }, new() { Type = "cgroup" }, new() { Type = "user" }]
                    : [new() { Type = "pid" }, new() { Type = "network" }, new() { Type = "ipc" }, new() { Type = "uts" }, new() { Type = "mount" }, new() { Type = "cgroup" }],
                MaskedPaths = [.. MaskedPaths],
                ReadonlyPaths = [.. ReadonlyPaths],
            },
        };
        if (rootless)
        {
            spec.Linux.UidMappings = IdMappings.CallerAsRoot(IdentityCalls.EffectiveUserId());
            spec.Linux.GidMappings = IdMappings.CallerAsRoot(IdentityCalls.EffectiveGroupId());
        }
        return spec;
    }
}
