using System.Globalization;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;

namespace Nestor.Containers.Tests.Security;

/// <summary>DefaultSpec's bundles are accepted and run by crun and runc, and the process inside sees Docker's
/// defaults (capabilities, seccomp, masks) or, with Privileged, their absence.</summary>
public class DefaultSpecTests
{
    private static string Field(string status, string name) =>
        status.Split('\n').First(l => l.StartsWith(name + ":", StringComparison.Ordinal))[(name.Length + 1)..].Trim();

    private static ulong Hex(string value) => ulong.Parse(value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    [Theory]
    [MemberData(nameof(BusyboxBundle.Runtimes), MemberType = typeof(BusyboxBundle))]
    public void DefaultContainerHasDockersCapabilitiesSeccompAndMasks(string runtime)
    {
        using var bundle = new BusyboxBundle();
        var result = bundle.RunContainer(runtime, BusyboxBundle.Shell(
            "cat /proc/self/status; echo MOUNTS; cat /proc/self/mounts; echo TIMERS=$(wc -c < /proc/timer_list); ls /bin/ls && echo LS-OK"));
        Assert.True(result.ExitCode == 0, result.Output);
        ulong docker = Capabilities.Mask(Capabilities.DockerDefault);
        Assert.Equal(docker, Hex(Field(result.Stdout, "CapEff")));
        Assert.Equal(docker, Hex(Field(result.Stdout, "CapPrm")));
        Assert.Equal(docker, Hex(Field(result.Stdout, "CapBnd")));
        Assert.Equal(0UL, Hex(Field(result.Stdout, "CapInh")));
        Assert.Equal("2", Field(result.Stdout, "Seccomp"));
        Assert.Equal("0", Field(result.Stdout, "NoNewPrivs"));
        Assert.Contains("TIMERS=0", result.Stdout); // masked: /dev/null over it
        Assert.Contains("LS-OK", result.Stdout);
        var mounts = result.Stdout[result.Stdout.IndexOf("MOUNTS", StringComparison.Ordinal)..].Split('\n');
        Assert.Contains(mounts, l => l.Contains(" /sys sysfs ro,", StringComparison.Ordinal));
        Assert.Contains(mounts, l => l.Contains(" /proc/sys proc ro,", StringComparison.Ordinal));
    }

    [Theory]
    [MemberData(nameof(BusyboxBundle.Runtimes), MemberType = typeof(BusyboxBundle))]
    public void PrivilegedContainerHasEveryCapabilityNoFilterAndWritableSys(string runtime)
    {
        using var bundle = new BusyboxBundle();
        var result = bundle.RunContainer(runtime, BusyboxBundle.Shell(
            "cat /proc/self/status; cat /proc/self/mounts; ls -l /dev/; echo TIMERS=$(wc -c < /proc/timer_list)", new DefaultSpecOptions { Privileged = true }));
        Assert.True(result.ExitCode == 0, result.Output);
        // every capability this (root) test process has in its bounding set
        ulong all = Capabilities.Mask(Capabilities.ReadCurrent().Bounding);
        Assert.Equal(all, Hex(Field(result.Stdout, "CapEff")));
        Assert.Matches(@"TIMERS=[1-9]", result.Stdout);
        Assert.Equal("0", Field(result.Stdout, "Seccomp"));
        Assert.Contains(" /sys sysfs rw,", result.Stdout);
        Assert.DoesNotContain(" /proc/sys proc ro,", result.Stdout);
        // the host's devices are there, e.g. the first loop device or the disk the host's root is on
        Assert.Contains(DefaultSpec.Create("rootfs", ["true"], new DefaultSpecOptions { Privileged = true }).Linux!.Devices!,
            d => result.Stdout.Contains(" " + Path.GetFileName(d.Path), StringComparison.Ordinal));
    }

    [Theory]
    [MemberData(nameof(BusyboxBundle.Runtimes), MemberType = typeof(BusyboxBundle))]
    public void CapAddAndDropChangeWhatTheProcessHolds(string runtime)
    {
        using var bundle = new BusyboxBundle();
        var options = new DefaultSpecOptions { CapAdd = ["net_admin"], CapDrop = ["CAP_CHOWN", "mknod"] };
        var result = bundle.RunContainer(runtime, BusyboxBundle.Shell("grep CapEff /proc/self/status; chown 1:1 /tmp; echo chown=$?", options));
        ulong expected = Capabilities.Mask(Capabilities.DockerDefault) | (1UL << Capabilities.Number("NET_ADMIN"));
        expected &= ~((1UL << Capabilities.Number("CHOWN")) | (1UL << Capabilities.Number("MKNOD")));
        Assert.Equal(expected, Hex(Field(result.Stdout, "CapEff")));
        Assert.Contains("chown=1", result.Stdout);
        Assert.Contains("Operation not permitted", result.Stderr);
    }

    [Theory]
    [MemberData(nameof(BusyboxBundle.RuntimesSeeingTheirOwnCgroup), MemberType = typeof(BusyboxBundle))]
    public void LimitsBecomeTheContainersControlGroupValues(string runtime)
    {
        using var bundle = new BusyboxBundle();
        var options = new DefaultSpecOptions
        {
            Memory = 64L << 20,
            Cpus = 1.5,
            PidsLimit = 33,
            CgroupsPath = "/nestor-sec-test/" + Guid.NewGuid().ToString("N")[..12],
        };
        var spec = BusyboxBundle.Shell(
            "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max",
            options);
        Assert.Equal(150000, spec.Linux!.Resources!.Cpu!.Quota);
        Assert.Equal(100000UL, spec.Linux.Resources.Cpu.Period);
        try
        {
            var result = bundle.RunContainer(runtime, spec);
            Assert.True(result.ExitCode == 0, result.Output);
            Assert.Equal(["150000", "100000", (64L << 20).ToString(CultureInfo.InvariantCulture), "33"],
                result.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        }
        finally
        {
            // The runtime's delete removes the container's own cgroup; the parent made for it stays unless removed here.
            foreach (string child in Directory.GetDirectories("/sys/fs/cgroup").Select(h => Path.Combine(h, options.CgroupsPath.TrimStart('/'))))
            {
                foreach (string directory in new[] { child, Path.GetDirectoryName(child)! }.Where(Directory.Exists))
                {
                    try { Directory.Delete(directory); } catch (IOException) { } // the other runtime's case may be using it
                }
            }
        }
    }

    [Fact]
    public void RootlessSpecMapsTheCallerAndRefusesLimitsWithoutDelegation()
    {
        var spec = DefaultSpec.Create("rootfs", ["true"], new DefaultSpecOptions { Rootless = true });
        Assert.Contains(spec.Linux!.Namespaces!, n => n.Type == "user");
        Assert.Single(spec.Linux.UidMappings!);
        Assert.Equal(0u, spec.Linux.UidMappings![0].ContainerID);
        Assert.Null(spec.Linux.Resources);
        Assert.DoesNotContain(spec.Mounts!, m => m.Type == "cgroup");
        var error = Assert.Throws<ContainerSecurityException>(() =>
            DefaultSpec.Create("rootfs", ["true"], new DefaultSpecOptions { Rootless = true, Memory = 1 << 20 }));
        Assert.Contains("delegated cgroup", error.Message);
    }

    [Fact]
    public void RootlessContainerRunsAsAnUnprivilegedUser()
    {
        using var bundle = new BusyboxBundle();
        // The rootless user's uid, as the spec must map it.
        string uid = BusyboxBundle.Run("id", "-u", "nestor-rootless").Stdout.Trim();
        var spec = BusyboxBundle.Shell("cat /proc/self/uid_map; id -u", new DefaultSpecOptions
        {
            Rootless = true,
            UidMappings = [new SpecIdMapping { ContainerID = 0, HostID = uint.Parse(uid, CultureInfo.InvariantCulture), Size = 1 }],
            GidMappings = [new SpecIdMapping { ContainerID = 0, HostID = uint.Parse(uid, CultureInfo.InvariantCulture), Size = 1 }],
        });
        File.WriteAllText(Path.Combine(bundle.Directory, "config.json"), spec.ToJson());
        string state = Path.Combine(bundle.Directory, "state");
        Directory.CreateDirectory(state);
        BusyboxBundle.Run("chown", "nestor-rootless", state);
        string id = "nestor-sec-rootless-" + Guid.NewGuid().ToString("N")[..8];
        var result = BusyboxBundle.Run("runuser", ["-u", "nestor-rootless", "--", "env", "XDG_RUNTIME_DIR=" + state,
            "crun", "--root", state, "run", "--bundle", bundle.Directory, id], 60);
        BusyboxBundle.Run("runuser", ["-u", "nestor-rootless", "--", "crun", "--root", state, "delete", "--force", id], 30);
        Assert.True(result.ExitCode == 0, result.Output);
        Assert.Matches($@"\s+0\s+{uid}\s+1", result.Stdout);
        Assert.EndsWith("0", result.Stdout.Trim());
    }
}
