using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>Nestor's runtime running real busybox containers as root: what the process sees, its exit status, the
/// mounts and /dev, masked and read-only paths, time namespace offsets.</summary>
public sealed class NestorRuntimeTests : IDisposable
{
    private readonly RuntimeUnderTest runtime = new();

    public void Dispose() => runtime.Dispose();

    [Fact]
    public void ExitStatusOfTheProcessIsPassedThrough()
    {
        using var bundle = new BusyboxBundle(["sh", "-c", "exit 7"]);
        Assert.Equal(7, runtime.Run(bundle).Status);
        using var truth = new BusyboxBundle(["true"]);
        Assert.Equal(0, runtime.Run(truth).Status);
    }

    /// <summary>The init is a .NET process that ends in execve, so it must not make the runtime's debugger pipes and
    /// diagnostics socket in /tmp (it would never remove them). Inside its pid namespace its pid is 1, so they would
    /// be named clr-debug-pipe-1-… and dotnet-diagnostic-1-…; no other process on the host has pid 1 and a .NET runtime.</summary>
    [Fact]
    public void InitLeavesNoRuntimeFilesInTmp()
    {
        string[] Leftovers() => [.. Directory.EnumerateFileSystemEntries(Path.GetTempPath())
            .Select(Path.GetFileName).Where(n => n!.StartsWith("clr-debug-pipe-1-", StringComparison.Ordinal) || n.StartsWith("dotnet-diagnostic-1-", StringComparison.Ordinal))
            .Select(n => n!)];
        foreach (string stale in Leftovers())
        {
            File.Delete(Path.Combine(Path.GetTempPath(), stale)); // from runs before the fix
        }
        using var bundle = new BusyboxBundle(["true"]);
        Assert.Equal(0, runtime.Run(bundle).Status);
        Assert.Empty(Leftovers());
    }

    [Fact]
    public void ProcessSeesItsHostnameUserPidAndEnvironment()
    {
        using var bundle = new BusyboxBundle(["sh", "-c", "hostname; id -u; echo $$; pwd; echo $GREETING"]);
        bundle.Spec.Hostname = "box-" + Guid.NewGuid().ToString("N")[..6];
        bundle.Spec.Process!.Env!.Add("GREETING=hello");
        bundle.Spec.Process.Cwd = "/tmp";
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        Assert.Equal([bundle.Spec.Hostname, "0", "1", "/tmp", "hello"], Lines(stdout));
        Assert.NotEqual(bundle.Spec.Hostname, Environment.MachineName);
    }

    /// <summary>All eight namespaces are new: each /proc/self/ns inode inside differs from this process's.</summary>
    [Fact]
    public void AllEightNamespacesDifferFromTheHost()
    {
        string[] kinds = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];
        using var bundle = new BusyboxBundle(["sh", "-c", string.Join("; ", kinds.Select(k => $"readlink /proc/self/ns/{k}"))]);
        var linux = bundle.Spec.Linux!;
        linux.Namespaces!.Add(new SpecNamespace { Type = "user" });
        linux.Namespaces.Add(new SpecNamespace { Type = "time" });
        linux.UidMappings = [new SpecIdMapping { ContainerID = 0, HostID = 100000, Size = 65536 }];
        linux.GidMappings = [new SpecIdMapping { ContainerID = 0, HostID = 100000, Size = 65536 }];
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        var inside = Lines(stdout);
        Assert.Equal(kinds.Length, inside.Length);
        for (int i = 0; i < kinds.Length; i++)
        {
            string host = new FileInfo($"/proc/self/ns/{kinds[i]}").LinkTarget!;
            Assert.StartsWith(kinds[i] + ":[", inside[i]);
            Assert.NotEqual(host, inside[i]);
        }
    }

    /// <summary>The .NET init ignores SIGPIPE; the container's program must start with every signal at its default
    /// and none blocked.</summary>
    [Fact]
    public void TheProcessStartsWithDefaultSignals()
    {
        using var bundle = new BusyboxBundle(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]);
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        Assert.Equal(["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"], Lines(stdout));
    }

    [Fact]
    public void DevHasTheDefaultDevicesAndLinks()
    {
        using var bundle = new BusyboxBundle(["sh", "-c",
            "for d in null zero full random urandom tty; do stat -c '%n %F %t:%T' /dev/$d; done; " +
            "for l in fd stdin stdout stderr ptmx; do echo $l $(readlink /dev/$l); done; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok"]);
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        var lines = Lines(stdout);
        string[] expectedDevices = ["/dev/null character special file 1:3", "/dev/zero character special file 1:5",
            "/dev/full character special file 1:7", "/dev/random character special file 1:8",
            "/dev/urandom character special file 1:9", "/dev/tty character special file 5:0"];
        Assert.Equal(expectedDevices, lines[..6]);
        Assert.Equal(["fd /proc/self/fd", "stdin /proc/self/fd/0", "stdout /proc/self/fd/1", "stderr /proc/self/fd/2", "ptmx pts/ptmx"], lines[6..11]);
        Assert.Equal(["4", "null-ok"], lines[11..]);
    }

    [Fact]
    public void MountsAreTheSpecsOnAPivotedRoot()
    {
        using var bundle = new BusyboxBundle(["sh", "-c", "cat /proc/self/mountinfo"]);
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        var mounts = Lines(stdout).Select(l => l.Split(' ')).ToList();
        var points = mounts.Select(f => f[4]).ToList();
        foreach (var mount in bundle.Spec.Mounts!)
        {
            Assert.Contains(mount.Destination, points);
        }
        // The root is the bundle's rootfs (its bind mount), read-only as root.readonly asks; nothing of the host's
        // other mounts (e.g. /work) is visible.
        var root = mounts.Single(f => f[4] == "/");
        Assert.StartsWith("ro", root[5]);
        Assert.DoesNotContain(points, p => p.StartsWith("/work", StringComparison.Ordinal));
        Assert.Equal("proc", mounts.Single(f => f[4] == "/proc")[^3]);
        Assert.Equal("devpts", mounts.Single(f => f[4] == "/dev/pts")[^3]);
    }

    [Fact]
    public void MaskedAndReadOnlyPathsAreEnforced()
    {
        using var bundle = new BusyboxBundle(["sh", "-c",
            "wc -c < /etc/secret; ls /etc/secrets | wc -l; touch /etc/secrets/x 2>/dev/null || echo secrets-ro; " +
            "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo sys-ro; touch /new 2>/dev/null || echo root-ro; " +
            "touch /tmp/x 2>/dev/null || echo tmp-ro"]);
        // A file and a directory of the image masked.
        File.WriteAllText(Path.Combine(bundle.Rootfs, "etc", "secret"), "password\n");
        Directory.CreateDirectory(Path.Combine(bundle.Rootfs, "etc", "secrets"));
        File.WriteAllText(Path.Combine(bundle.Rootfs, "etc", "secrets", "key"), "key\n");
        bundle.Spec.Linux!.MaskedPaths!.AddRange(["/etc/secret", "/etc/secrets"]);
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        Assert.Equal(["0", "0", "secrets-ro", "sys-ro", "root-ro", "tmp-ro"], Lines(stdout));

        using var writable = new BusyboxBundle(["sh", "-c", "touch /new && echo root-rw"]);
        writable.Spec.Root!.Readonly = false;
        Assert.Equal(["root-rw"], Lines(runtime.Run(writable).Stdout));
    }

    /// <summary>timeOffsets of a time namespace move the boot-time clock that /proc/uptime shows.</summary>
    [Fact]
    public void TimeNamespaceOffsetShowsInUptime()
    {
        const long offset = 7 * 86400;
        using var bundle = new BusyboxBundle(["cat", "/proc/uptime"]);
        bundle.Spec.Linux!.Namespaces!.Add(new SpecNamespace { Type = "time" });
        bundle.Spec.Linux.TimeOffsets = new() { ["boottime"] = new SpecTimeOffset { Secs = offset }, ["monotonic"] = new SpecTimeOffset { Secs = offset } };
        double before = Uptime(File.ReadAllText("/proc/uptime"));
        var (status, stdout, stderr) = runtime.Run(bundle);
        double after = Uptime(File.ReadAllText("/proc/uptime"));
        Assert.True(status == 0, stderr);
        double inside = Uptime(stdout);
        // /proc/uptime has hundredths of a second: compare at that resolution, since the subtraction in binary
        // floating point can land a hair past the same two-decimal value parsed from the host's file (a CI run saw
        // 22382.880000000005 against an upper bound of 22382.88).
        Assert.InRange(Math.Round(inside - offset, 2), before, after);
    }

    [Fact]
    public void SysctlIsWrittenInTheContainersNamespaces()
    {
        using var bundle = new BusyboxBundle(["cat", "/proc/sys/kernel/domainname"]);
        bundle.Spec.Linux!.ReadonlyPaths = [];
        bundle.Spec.Linux.Sysctl = new() { ["kernel.domainname"] = "nestor.test" };
        var (status, stdout, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        Assert.Equal(["nestor.test"], Lines(stdout));
        Assert.NotEqual("nestor.test", File.ReadAllText("/proc/sys/kernel/domainname").Trim());
    }

    private static double Uptime(string text) => double.Parse(text.Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);

    internal static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries);
}
