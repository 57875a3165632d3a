using System.Diagnostics;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Tests.Security;

public class ResourceLimitsTests
{
    private static string LimitsLine(int pid, string name) =>
        File.ReadLines($"/proc/{pid}/limits").First(l => l.StartsWith(name, StringComparison.Ordinal));

    [Fact]
    public void ApplySetsARealProcesssLimitsAndRefusesRaisingTheHardLimitWithAClearMessage()
    {
        using var child = Process.Start(new ProcessStartInfo("/bin/busybox", "sleep 30"))!;
        try
        {
            ResourceLimits.Apply([new SpecRlimit { Type = "RLIMIT_NOFILE", Soft = 100, Hard = 200 }, new SpecRlimit { Type = "nproc", Soft = 50, Hard = 60 }], child.Id);
            Assert.Matches(@"^Max open files\s+100\s+200\s", LimitsLine(child.Id, "Max open files"));
            Assert.Matches(@"^Max processes\s+50\s+60\s", LimitsLine(child.Id, "Max processes"));

            var raise = new SpecRlimit { Type = "RLIMIT_NOFILE", Soft = 100, Hard = 300 };
            bool hasSysResource = (CapabilityCalls.Get().Effective & (1UL << Capabilities.Number("SYS_RESOURCE"))) != 0;
            if (hasSysResource)
            {
                ResourceLimits.Apply([raise], child.Id);
                Assert.Matches(@"^Max open files\s+100\s+300\s", LimitsLine(child.Id, "Max open files"));
            }
            else
            {
                var error = Assert.Throws<ContainerSecurityException>(() => ResourceLimits.Apply([raise], child.Id));
                Assert.Contains("CAP_SYS_RESOURCE", error.Message);
                Assert.Contains("nofile=100:200", error.Message);
            }
        }
        finally
        {
            child.Kill();
            child.WaitForExit();
        }
    }

    [Fact]
    public void UnknownNamesAndSoftAboveHardAreRefused()
    {
        Assert.Equal(7, ResourceLimits.Number("RLIMIT_NOFILE"));
        Assert.Throws<ContainerSecurityException>(() => ResourceLimits.Number("RLIMIT_WINGS"));
        var error = Assert.Throws<ContainerSecurityException>(() =>
            ResourceLimits.Apply([new SpecRlimit { Type = "RLIMIT_CORE", Soft = 10, Hard = 5 }], Environment.ProcessId));
        Assert.Contains("soft limit", error.Message);
    }
}
