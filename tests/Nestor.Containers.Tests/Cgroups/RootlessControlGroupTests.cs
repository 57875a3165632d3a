using System.Globalization;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Tests.Security;

namespace Nestor.Containers.Tests.Cgroups;

/// <summary>A rootless container (run by the unprivileged nestor-rootless user through Nestor's runtime) on a host
/// that delegates it no cgroup: without limits it runs, without a cgroup; with a limit it is refused with a message
/// that says why and what to do — not a crash.</summary>
public class RootlessControlGroupTests
{
    private const string User = "nestor-rootless";

    private static RunResult RunAsUser(RuntimeSpec spec, BusyboxBundle bundle, string state)
    {
        File.WriteAllText(Path.Combine(bundle.Directory, "config.json"), spec.ToJson());
        BusyboxBundle.Run("chown", "-R", $"{User}:{User}", bundle.Directory, state);
        string id = "nestor-sec-rootless-" + Guid.NewGuid().ToString("N")[..8];
        return BusyboxBundle.Run("runuser", ["-u", User, "--", BusyboxBundle.Nestor, "oci", "--root", state, "run", "--bundle", bundle.Directory, id], 60);
    }

    [Fact]
    public void WithoutADelegatedCgroupLimitsAreRefusedWithAdviceAndNoLimitsRun()
    {
        uint uid = uint.Parse(BusyboxBundle.Run("id", "-u", User).Stdout.Trim(), CultureInfo.InvariantCulture);
        SpecIdMapping[] map = [new SpecIdMapping { ContainerID = 0, HostID = uid, Size = 1 }];
        var options = new DefaultSpecOptions { Rootless = true, UidMappings = map, GidMappings = map };
        string state = Path.Combine(Path.GetTempPath(), "nestor-sec-state-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(state);
        string cgroup = "/nestor-sec-rootless-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            using var plain = new BusyboxBundle();
            var ran = RunAsUser(BusyboxBundle.Shell("echo ran-as=$(id -u)", options with { CgroupsPath = cgroup }), plain, state);
            Assert.True(ran.ExitCode == 0, ran.Output);
            Assert.Contains("ran-as=0", ran.Stdout);

            using var limited = new BusyboxBundle();
            var spec = BusyboxBundle.Shell("echo should-not-run", options with { CgroupsPath = cgroup });
            spec.Linux!.Resources = new SpecResources { Memory = new SpecMemory { Limit = 32L << 20 } };
            var refused = RunAsUser(spec, limited, state);
            Assert.NotEqual(0, refused.ExitCode);
            Assert.DoesNotContain("should-not-run", refused.Stdout);
            Assert.Contains("not available", refused.Stderr);
            Assert.Contains("Delegate=yes", refused.Stderr);
            Assert.DoesNotContain("   at ", refused.Stderr); // a message, not a stack trace
        }
        finally
        {
            Directory.Delete(state, recursive: true);
        }
    }
}
