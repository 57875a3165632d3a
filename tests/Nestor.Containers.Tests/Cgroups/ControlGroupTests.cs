using System.Diagnostics;
using Nestor.Containers.Cgroups;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Cgroups;

/// <summary>A control group with a unique name, deleted (with anything left in it) on dispose, and a child process
/// that waits on its standard input until it has been moved into the group.</summary>
internal sealed class GroupFixture : IDisposable
{
    private readonly List<Process> _processes = [];

    public GroupFixture(SpecResources? resources, ControlGroupHierarchy? hierarchy = null)
    {
        Path = "/nestor-cgtest-" + Guid.NewGuid().ToString("N")[..12];
        Group = hierarchy is null ? ControlGroup.Create(Path, resources) : ControlGroup.Create(hierarchy, Path, resources);
    }

    public string Path { get; }
    public ControlGroup Group { get; }

    /// <summary>Starts <c>sh -c script</c>, puts it in the group, then lets it go on.</summary>
    public Process Start(string script)
    {
        var start = new ProcessStartInfo("/bin/busybox") { RedirectStandardInput = true, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string argument in new[] { "sh", "-c", "read go; " + script })
        {
            start.ArgumentList.Add(argument);
        }
        var process = Process.Start(start)!;
        _processes.Add(process);
        Group.AddProcess(process.Id);
        process.StandardInput.WriteLine("go");
        process.StandardInput.Flush();
        return process;
    }

    public void Dispose()
    {
        try
        {
            Group.Delete();
        }
        finally
        {
            foreach (var process in _processes)
            {
                if (!process.HasExited)
                {
                    process.Kill(entireProcessTree: true);
                }
                process.Dispose();
            }
        }
    }
}

public class ControlGroupTests
{
    [Fact]
    public void DetectsThisMachinesHierarchies()
    {
        var hierarchy = ControlGroupHierarchy.Detect();
        string mountinfo = File.ReadAllText("/proc/self/mountinfo");
        bool v1Memory = mountinfo.Split('\n').Any(l => l.Contains(" - cgroup ", StringComparison.Ordinal) && l.Split(' ').Last().Split(',').Contains("memory"));
        Assert.Equal(v1Memory ? ControlGroupVersion.V1 : ControlGroupVersion.V2, hierarchy.Version);
    }

    [Fact]
    public void ParsesHybridAndUnifiedMountinfo()
    {
        const string hybrid = """
            32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """;
        var h = ControlGroupHierarchy.Parse(hybrid);
        Assert.Equal(ControlGroupVersion.V1, h.Version);
        Assert.Equal("/sys/fs/cgroup/cpu,cpuacct", h.V1Mounts["cpuacct"]);
        Assert.Equal("/sys/fs/cgroup/memory", h.V1Mounts["memory"]);
        Assert.False(h.V1Mounts.ContainsKey("name=systemd"));
        Assert.Equal("/sys/fs/cgroup/unified", h.UnifiedMount);
        var unified = ControlGroupHierarchy.Parse("30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n");
        Assert.Equal(ControlGroupVersion.V2, unified.Version);
        Assert.Equal("/sys/fs/cgroup", unified.UnifiedMount);
    }

    [Fact]
    public void MemoryHogIsKilledAtTheLimit()
    {
        const long limit = 16L << 20;
        using var fixture = new GroupFixture(new SpecResources { Memory = new SpecMemory { Limit = limit, Swap = limit } });
        // dd's 64 MiB buffer is filled from /dev/zero, so every page of it is charged to the group.
        var hog = fixture.Start("dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd-status=$?");
        Assert.True(hog.WaitForExit(30000));
        string output = hog.StandardOutput.ReadToEnd();
        var usage = fixture.Group.ReadUsage();
        Assert.Contains("dd-status=137", output); // 128 + SIGKILL: the OOM killer
        Assert.Equal(limit, usage.MemoryLimitBytes);
        Assert.True(usage.OomKills >= 1, $"oom kills {usage.OomKills}");
        // The peak reached the limit and stopped there (memory.failcnt is no longer counted by recent kernels' v1).
        Assert.True(usage.MemoryMaxBytes <= limit && usage.MemoryMaxBytes > limit - (1 << 20), $"peak {usage.MemoryMaxBytes}");
    }

    [Fact]
    public async Task ForkBombIsHeldAtThePidsLimit()
    {
        const long limit = 8;
        using var fixture = new GroupFixture(new SpecResources { Pids = new SpecPids { Limit = limit } });
        var bomb = fixture.Start("i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo looped; sleep 30");
        string stderr = await bomb.StandardError.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(20)) ?? "";
        var usage = fixture.Group.ReadUsage();
        Assert.Contains("fork", stderr);
        Assert.Equal(limit, usage.PidsLimit);
        Assert.True(usage.Pids <= limit && usage.Pids >= limit - 1, $"pids {usage.Pids}");
        Assert.True(fixture.Group.Processes().Count <= limit);
    }

    [Fact]
    public void FreezeStopsABusyLoopAndThawResumesIt()
    {
        using var fixture = new GroupFixture(null);
        var loop = fixture.Start("while :; do :; done");
        Thread.Sleep(200);
        Assert.Contains(loop.Id, fixture.Group.Processes());
        fixture.Group.Freeze();
        Assert.True(fixture.Group.IsFrozen);
        ulong frozenAt = fixture.Group.ReadUsage().CpuNanoseconds;
        Thread.Sleep(300);
        Assert.Equal(frozenAt, fixture.Group.ReadUsage().CpuNanoseconds);
        fixture.Group.Thaw();
        Assert.False(fixture.Group.IsFrozen);
        Thread.Sleep(300);
        Assert.True(fixture.Group.ReadUsage().CpuNanoseconds > frozenAt + 50_000_000UL);
        fixture.Group.KillAll(15);
        Assert.True(loop.WaitForExit(5000));
        Assert.Empty(fixture.Group.Processes());
    }

    [Fact]
    public void CpuQuotaThrottlesABusyLoop()
    {
        // 10 ms per 100 ms period: a tenth of one CPU.
        using var fixture = new GroupFixture(new SpecResources { Cpu = new SpecCpu { Quota = 10000, Period = 100000, Shares = 512 } });
        fixture.Start("while :; do :; done");
        var clock = Stopwatch.StartNew();
        Thread.Sleep(1000);
        var usage = fixture.Group.ReadUsage();
        double share = usage.CpuNanoseconds / (clock.Elapsed.TotalMilliseconds * 1e6);
        Assert.True(usage.CpuThrottledPeriods > 0, "never throttled");
        Assert.True(share < 0.25, $"used {share:P0} of a CPU under a 10% quota");
        Assert.True(usage.CpuNanoseconds > 0);
        Assert.Equal("512", File.ReadAllText(Path.Combine(fixture.Group.Directories["cpu"], "cpu.shares")).Trim());
    }

    [Fact]
    public void DeviceRulesAreWrittenInOrder()
    {
        using var fixture = new GroupFixture(new SpecResources { Devices = [.. DefaultSpec.DefaultDeviceRules] });
        var list = File.ReadAllLines(Path.Combine(fixture.Group.Directories["devices"], "devices.list"));
        Assert.Contains("c 1:3 rwm", list);
        Assert.Contains("c 136:* rwm", list);
        Assert.Contains("b *:* m", list);
        Assert.DoesNotContain("a *:* rwm", list);
        Assert.Equal("c 1:3 rwm", ControlGroup.DeviceRule(new SpecDeviceCgroup { Allow = true, Type = "c", Major = 1, Minor = 3, Access = "rwm" }));
    }

    [Fact]
    public void OpenFindsAnExistingGroupAndDeleteRemovesIt()
    {
        var fixture = new GroupFixture(null);
        var opened = ControlGroup.Open(fixture.Path);
        Assert.Equal(fixture.Group.Directories.Values.Order(), opened.Directories.Values.Order());
        fixture.Start("sleep 30");
        fixture.Dispose();
        Assert.All(fixture.Group.Directories.Values, d => Assert.False(Directory.Exists(d)));
        Assert.Throws<ControlGroupException>(() => ControlGroup.Open(fixture.Path));
    }

    [Fact]
    public void CgroupV2FreezesAndKillsOnTheUnifiedHierarchy()
    {
        var hierarchy = ControlGroupHierarchy.Detect();
        Assert.NotNull(hierarchy.UnifiedMount); // this machine has one (hybrid or pure v2)
        var v2 = new ControlGroupHierarchy(new Dictionary<string, string>(), hierarchy.UnifiedMount);
        using var fixture = new GroupFixture(null, v2);
        Assert.Equal(ControlGroupVersion.V2, fixture.Group.Version);
        var loop = fixture.Start("while :; do :; done");
        fixture.Group.Freeze();
        Assert.True(fixture.Group.IsFrozen);
        long cpuTicks = CpuTicks(loop.Id);
        Thread.Sleep(300);
        Assert.Equal(cpuTicks, CpuTicks(loop.Id));
        fixture.Group.Thaw();
        fixture.Group.KillAll(9);
        Assert.True(loop.WaitForExit(5000));
        Assert.Equal(137, loop.ExitCode);
    }

    // utime + stime of a process in clock ticks (proc(5), /proc/PID/stat fields 14 and 15).
    private static long CpuTicks(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public void CgroupV2LimitsWithoutTheControllerAreRefusedWithAdvice()
    {
        var hierarchy = ControlGroupHierarchy.Detect();
        var v2 = new ControlGroupHierarchy(new Dictionary<string, string>(), hierarchy.UnifiedMount);
        string available = File.ReadAllText(Path.Combine(hierarchy.UnifiedMount!, "cgroup.controllers"));
        if (available.Contains("memory", StringComparison.Ordinal))
        {
            using var fixture = new GroupFixture(new SpecResources { Memory = new SpecMemory { Limit = 32L << 20, Swap = 32L << 20 } }, v2);
            Assert.Equal((32L << 20).ToString(System.Globalization.CultureInfo.InvariantCulture), File.ReadAllText(Path.Combine(fixture.Group.Directories[""], "memory.max")).Trim());
            Assert.Equal("0", File.ReadAllText(Path.Combine(fixture.Group.Directories[""], "memory.swap.max")).Trim());
        }
        else
        {
            string path = "/nestor-cgtest-" + Guid.NewGuid().ToString("N")[..12];
            try
            {
                var error = Assert.Throws<ControlGroupUnavailableException>(() =>
                    ControlGroup.Create(v2, path, new SpecResources { Memory = new SpecMemory { Limit = 32L << 20 } }));
                Assert.Contains("memory", error.Message);
                Assert.Contains("subtree_control", error.Message);
            }
            finally
            {
                Directory.Delete(hierarchy.UnifiedMount + path);
            }
        }
    }

    [Fact]
    public void AHierarchyThisProcessCannotWriteIsUnavailableNotACrash()
    {
        // /proc accepts no new directories, as a cgroup tree owned by root does not from an unprivileged user.
        var unwritable = new ControlGroupHierarchy(new Dictionary<string, string> { ["memory"] = "/proc" }, null);
        var error = Assert.Throws<ControlGroupUnavailableException>(() =>
            ControlGroup.Create(unwritable, "/nestor-cgtest-x", new SpecResources { Pids = new SpecPids { Limit = 5 } }));
        Assert.Contains("not available", error.Message);
        Assert.Contains("Delegate=yes", error.Message);
    }

    [Fact]
    public void V2ConversionsFollowTheRuntimeSpec()
    {
        Assert.Equal(1UL, ControlGroup.CpuWeight(2));
        Assert.Equal(10000UL, ControlGroup.CpuWeight(262144));
        Assert.Equal(39UL, ControlGroup.CpuWeight(1024));
        Assert.Equal(1UL, ControlGroup.IoWeight(10));
        Assert.Equal(10000UL, ControlGroup.IoWeight(1000));
    }
}
