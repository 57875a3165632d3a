using System.Globalization;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Security;

/// <summary>The issue's "Security, measured": escape and abuse attempts from inside a default container (DefaultSpec:
/// Docker's 14 capabilities, the default seccomp profile, masked and read-only paths, the devices cgroup, six
/// namespaces), each refused — and the assertion names the mechanism that refused it —, and the same attempts
/// succeeding with <c>--privileged</c>, the course's warning. The privileged forms are chosen so that they cannot
/// harm the host: an invalid module, a SysRq key that only prints help, a read-only mount of the host's disk, a
/// hostname set in the container's own UTS namespace, the clock "set" to the tick it already has.</summary>
public class EscapeSuiteTests
{
    public static IEnumerable<object[]> Runtimes => BusyboxBundle.Runtimes;

    private const string Eperm = "Operation not permitted";
    private const string Erofs = "Read-only file system";

    private static RunResult Run(string runtime, string script, DefaultSpecOptions? options = null)
    {
        using var bundle = new BusyboxBundle();
        return bundle.RunContainer(runtime, BusyboxBundle.Shell(script, options));
    }

    private static void Has(RunResult result, string text) =>
        Assert.True(result.Output.Contains(text, StringComparison.Ordinal), $"expected '{text}' in:\n{result.Output}");

    private static void HasNot(RunResult result, string text) =>
        Assert.False(result.Output.Contains(text, StringComparison.Ordinal), $"did not expect '{text}' in:\n{result.Output}");

    private static readonly DefaultSpecOptions Privileged = new() { Privileged = true };

    /// <summary>The block device the host's root file system is on (MAJOR:MINOR from /proc/self/mountinfo).</summary>
    private static (string Major, string Minor) HostRootDevice()
    {
        string line = File.ReadLines("/proc/self/mountinfo").First(l => l.Split(' ')[4] == "/");
        string[] numbers = line.Split(' ')[2].Split(':');
        return (numbers[0], numbers[1]);
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void LoadingAKernelModuleIsRefusedBySeccompAndReachesTheKernelOnlyWhenPrivileged(string runtime)
    {
        // /bin/busybox is no module: a kernel that gets to look at it says ENOEXEC (busybox: "invalid module format"),
        // or ENOSYS ("kernel does not support requested operation") if it was built without modules, as here.
        const string script = "insmod /bin/busybox; echo status=$?";
        bool modules = File.Exists("/proc/modules");
        string kernelVerdict = modules ? "invalid module format" : "kernel does not support requested operation";

        var refused = Run(runtime, script);
        Has(refused, "status=1");
        Has(refused, Eperm);          // seccomp's EPERM: without it this kernel would say otherwise
        HasNot(refused, kernelVerdict);

        // CAP_SYS_MODULE alone lifts the seccomp rule too (cap-conditional): the call reaches the kernel.
        var withCapability = Run(runtime, script, new DefaultSpecOptions { CapAdd = ["SYS_MODULE"] });
        Has(withCapability, kernelVerdict);

        var privileged = Run(runtime, script, Privileged);
        Has(privileged, kernelVerdict);
        HasNot(privileged, Eperm);
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void MountingTheHostsDiskIsRefusedBySeccompAndTheDevicesCgroup(string runtime)
    {
        var (major, minor) = HostRootDevice();
        string script = $"mknod /dev/hostdisk b {major} {minor} && echo mknod=ok; " +
            "mount -o ro /dev/hostdisk /mnt; echo mount=$?; dd if=/dev/hostdisk of=/dev/null bs=512 count=1; echo dd=$?; ls /mnt; " +
            "mount -t tmpfs none /tmp; echo tmpfs=$?";

        var refused = Run(runtime, script);
        Has(refused, "mknod=ok");     // CAP_MKNOD is in Docker's set and "b *:* m" allowed…
        Has(refused, "mount=1");      // …but mount(2) is refused by seccomp (no CAP_SYS_ADMIN): EPERM
        Has(refused, "mount: permission denied");
        Has(refused, "tmpfs=1");      // any mount, not only of a disk
        Has(refused, "dd=1");         // …and opening the node by the devices cgroup
        Has(refused, $"can't open '/dev/hostdisk': {Eperm}");

        var privileged = Run(runtime, script, Privileged);
        Has(privileged, "tmpfs=0");   // mount(2) is open to a privileged container
        if (HostCanOpen(major, minor))
        {
            Has(privileged, "mount=0");
            Has(privileged, "dd=0");
            // The host's root directory, read-only, from inside the container.
            string hostEntry = Directory.GetDirectories("/").Select(Path.GetFileName).First(n => n is "work" or "etc" or "usr")!;
            Assert.Contains(hostEntry, privileged.Stdout.Split('\n'));
        }
        else
        {
            // This host forbids even its own root to open the disk (a sandbox outside the kernel's usual rules): the
            // privileged container gets exactly as far as the host's root does.
            Has(privileged, "dd=1");
        }
    }

    private static bool HostCanOpen(string major, string minor)
    {
        string? name = File.ReadLines($"/sys/dev/block/{major}:{minor}/uevent").FirstOrDefault(l => l.StartsWith("DEVNAME=", StringComparison.Ordinal))?[8..];
        try
        {
            using var handle = File.OpenHandle("/dev/" + name, FileMode.Open, FileAccess.Read);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void WritingSysrqTriggerIsRefusedByTheReadOnlyMount(string runtime)
    {
        // 'h' only prints the SysRq help to the kernel log.
        const string script = "echo h > /proc/sysrq-trigger; echo status=$?";
        var refused = Run(runtime, script);
        var privileged = Run(runtime, script, Privileged);
        if (File.Exists("/proc/sysrq-trigger"))
        {
            Has(refused, "status=1");
            Has(refused, Erofs);
            Has(privileged, "status=0");
        }
        else
        {
            // A kernel without CONFIG_MAGIC_SYSRQ (as this host's) has no trigger to write, inside or out.
            Has(refused, "status=1");
            Has(privileged, "status=1");
            Has(privileged, "nonexistent directory");
            Assert.Contains("/proc/sysrq-trigger", DefaultSpec.ReadonlyPaths);
        }
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void RawDevicesAreAbsentAndTheirNodesCannotBeOpened(string runtime)
    {
        const string script = "ls /dev/kmsg /dev/mem; echo ls=$?; mknod /dev/k c 1 11; mknod /dev/m c 1 1; " +
            "dd if=/dev/k of=/dev/null bs=8192 count=1; echo kmsg=$?; dd if=/dev/m of=/dev/null bs=1 count=1; echo mem=$?";
        var refused = Run(runtime, script);
        Has(refused, "ls=1");           // not in a container's /dev
        Has(refused, "kmsg=1");         // the devices cgroup refuses c 1:11 …
        Has(refused, "mem=1");          // … and c 1:1
        Has(refused, $"can't open '/dev/k': {Eperm}");
        Has(refused, $"can't open '/dev/m': {Eperm}");

        // Privileged: the host's /dev/kmsg is there and the kernel log readable (CAP_SYSLOG).
        var privileged = Run(runtime, "dd if=/dev/kmsg of=/dev/null bs=8192 count=1; echo kmsg=$?", Privileged);
        Has(privileged, "kmsg=0");
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void HostProcessesAreInvisibleAndANonRootUserCannotTracePidOne(string runtime)
    {
        int hostPid = Environment.ProcessId; // this test process, on the host
        string script = $"kill -0 {hostPid}; echo kill=$?; ls -d /proc/{hostPid}; echo proc=$?; " +
            "su user -c 'cat /proc/1/environ'; echo environ=$?; cat /proc/1/environ > /dev/null; echo root-environ=$?";
        var refused = Run(runtime, script);
        Has(refused, "kill=1");        // the pid namespace: no such process
        Has(refused, "No such process");
        Has(refused, "proc=1");
        Has(refused, "environ=1");     // ptrace access mode check: other uid, no CAP_SYS_PTRACE
        Has(refused, "Permission denied");
        Has(refused, "root-environ=0");

        // --privileged does not share the host's pid namespace (that is --pid=host): still invisible.
        var privileged = Run(runtime, script, Privileged);
        Has(privileged, "kill=1");
        Has(privileged, "proc=1");
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void SettingTheClockIsRefusedAndTheHostsTimeIsUntouched(string runtime)
    {
        // date -s would change the host's clock (CLOCK_REALTIME is not namespaced): only tried where it is refused.
        const string refusedScript = "date -s '2001-02-03 04:05:06'; echo date=$?; " +
            "t=$(adjtimex | awk '/tick:/{print $3}'); adjtimex -t $t > /dev/null; echo adjtimex=$?";
        var before = DateTime.UtcNow;
        var refused = Run(runtime, refusedScript);
        Assert.True(Math.Abs((DateTime.UtcNow - before).TotalMinutes) < 5 && DateTime.UtcNow.Year > 2001);
        Has(refused, $"can't set date: {Eperm}"); // clock_settime/settimeofday: seccomp, no CAP_SYS_TIME
        Has(refused, "adjtimex=1");    // adjtimex(2) is allowed, but setting needs CAP_SYS_TIME
        Has(refused, Eperm);
        HasNot(refused, "usage");      // reading the tick worked: it is only setting that is refused
        HasNot(refused, "Usage");

        // Privileged may set the host's clock: proved by setting the tick to the value it already has (a no-op).
        var privileged = Run(runtime, "t=$(adjtimex | awk '/tick:/{print $3}'); adjtimex -t $t > /dev/null; echo adjtimex=$?", Privileged);
        Has(privileged, "adjtimex=0");
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void ChangingTheHostnameIsRefusedAndNeverReachesTheHost(string runtime)
    {
        string hostname = File.ReadAllText("/proc/sys/kernel/hostname").Trim();
        string name = "nestor-escape-" + Guid.NewGuid().ToString("N")[..6];
        string script = $"hostname {name}; echo status=$?; hostname";
        var refused = Run(runtime, script);
        Has(refused, "status=1");      // sethostname needs CAP_SYS_ADMIN in the UTS namespace's owner
        Has(refused, Eperm);

        var privileged = Run(runtime, script, Privileged);
        Has(privileged, "status=0");
        Has(privileged, name);         // set, in the container's own UTS namespace…
        Assert.Equal(hostname, File.ReadAllText("/proc/sys/kernel/hostname").Trim()); // …not on the host
    }

    private const string Hog = "dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?";

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void ExceedingTheMemoryLimitKillsTheProcess(string runtime)
    {
        string cgroup = "/nestor-escape-" + Guid.NewGuid().ToString("N")[..12];
        try
        {
            var refused = Run(runtime, "echo -1 > /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes; echo raise=$?; " + Hog,
                new DefaultSpecOptions { Memory = 16L << 20, CgroupsPath = cgroup });
            Has(refused, "raise=1");   // the cgroup file system is read-only inside
            Has(refused, Erofs);
            Has(refused, "dd=137");    // SIGKILL from the cgroup's OOM killer
        }
        finally
        {
            RemoveCgroups(cgroup);
        }
    }

    [Theory]
    [MemberData(nameof(BusyboxBundle.RuntimesSeeingTheirOwnCgroup), MemberType = typeof(BusyboxBundle))]
    public void OnlyAPrivilegedContainerCanLiftItsOwnMemoryLimit(string runtime)
    {
        string cgroup = "/nestor-escape-" + Guid.NewGuid().ToString("N")[..12];
        try
        {
            // A privileged container's cgroup file system is writable: it raises its own limit, then the hog lives.
            // Only where the cgroup namespace's root is the container's own group, so that nothing else's limit is touched.
            var privileged = Run(runtime,
                "if grep -q ':memory:/$' /proc/self/cgroup; then echo -1 > /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes; echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes; echo raise=$?; else echo raise=not-own-group; fi; " + Hog,
                new DefaultSpecOptions { Memory = 16L << 20, CgroupsPath = cgroup, Privileged = true });
            Has(privileged, "raise=0");
            Has(privileged, "dd=0");
        }
        finally
        {
            RemoveCgroups(cgroup);
        }
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void AForkBombIsHeldAtThePidsLimit(string runtime)
    {
        string cgroup = "/nestor-escape-" + Guid.NewGuid().ToString("N")[..12];
        const long limit = 12;
        // The bomb runs in a child shell, which gives up at the first failed fork; its sleeps stay. Then pid 1 reads
        // the count with builtins only (no fork left to spare).
        const string bomb = "sh -c 'i=0; while [ $i -lt 40 ]; do sleep 20 & i=$((i+1)); done'; " +
            "set -- /proc/[0-9]*; echo pids=$#"; // a glob: no fork, and every process of the pid namespace
        try
        {
            var refused = Run(runtime, bomb, new DefaultSpecOptions { PidsLimit = limit, CgroupsPath = cgroup });
            Has(refused, "can't fork");
            Has(refused, "pids=");
            int pids = int.Parse(refused.Stdout.Split('\n').First(l => l.StartsWith("pids=", StringComparison.Ordinal))[5..], CultureInfo.InvariantCulture);
            Assert.InRange(pids, limit - 3, limit);
        }
        finally
        {
            RemoveCgroups(cgroup);
        }
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void ReadOnlyPathsRefuseWritesUnlessPrivileged(string runtime)
    {
        // /proc/sys/kernel/hostname is per UTS namespace, so the privileged write stays in the container.
        const string script = "echo nestor-ro > /proc/sys/kernel/hostname; echo procsys=$?; touch /sys/nestor-probe; echo sys=$?; " +
            "mkdir /sys/fs/cgroup/memory/nestor-probe; echo cgroup=$?; rmdir /sys/fs/cgroup/memory/nestor-probe 2>/dev/null; hostname";
        var refused = Run(runtime, script);
        Has(refused, "procsys=1");
        Has(refused, "sys=1");
        Has(refused, "cgroup=1");
        Assert.Equal(3, refused.Stderr.Split(Erofs).Length - 1);

        var privileged = Run(runtime, script, Privileged);
        Has(privileged, "procsys=0");
        Has(privileged, "nestor-ro");
        Has(privileged, "cgroup=0");
        HasNot(privileged, Erofs);  // sysfs itself refuses new files, but not as a read-only mount
    }

    private static void RemoveCgroups(params string[] paths)
    {
        foreach (string hierarchy in Directory.GetDirectories("/sys/fs/cgroup"))
        {
            foreach (string path in paths)
            {
                string directory = Path.Combine(hierarchy, path.TrimStart('/'));
                foreach (string child in Directory.Exists(directory) ? Directory.GetDirectories(directory).Append(directory) : [])
                {
                    try { Directory.Delete(child); } catch (IOException) { }
                }
            }
        }
    }
}
