using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Tests.Security;

public class CapabilitiesTests
{
    [Fact]
    public void NamesAndNumbersFollowCapabilitiesSeven()
    {
        Assert.Equal(0, Capabilities.Number("CAP_CHOWN"));
        Assert.Equal(21, Capabilities.Number("sys_admin"));
        Assert.Equal(40, Capabilities.Number("CAP_CHECKPOINT_RESTORE"));
        Assert.Equal(Capabilities.Last + 1, Capabilities.All.Count);
        Assert.All(Capabilities.All, name => Assert.Equal(name, Capabilities.Name(Capabilities.Number(name))));
        Assert.Equal(14, Capabilities.DockerDefault.Count);
        Assert.Throws<ContainerSecurityException>(() => Capabilities.Number("CAP_FLY"));
    }

    [Fact]
    public void ResolveFollowsDockersRules()
    {
        var defaults = Capabilities.DockerDefault;
        var plain = Capabilities.Resolve(defaults, null, null);
        Assert.Equal(defaults.Order(StringComparer.Ordinal), plain.Order(StringComparer.Ordinal));
        var changed = Capabilities.Resolve(defaults, ["SYS_ADMIN", "cap_net_admin"], ["KILL"]);
        Assert.Contains("CAP_SYS_ADMIN", changed);
        Assert.Contains("CAP_NET_ADMIN", changed);
        Assert.DoesNotContain("CAP_KILL", changed);
        Assert.Equal(["CAP_NET_BIND_SERVICE"], Capabilities.Resolve(defaults, ["NET_BIND_SERVICE"], ["ALL"]));
        var allButOne = Capabilities.Resolve(defaults, ["ALL"], ["SYS_MODULE"]);
        Assert.Equal(Capabilities.All.Count - 1, allButOne.Count);
        Assert.DoesNotContain("CAP_SYS_MODULE", allButOne);
        var error = Assert.Throws<ContainerSecurityException>(() => Capabilities.Resolve(defaults, ["NET_FLY"], null));
        Assert.Contains("NET_FLY", error.Message);
    }

    /// <summary>Bounding, effective, permitted, inheritable and ambient sets applied on a thread of its own (the sets
    /// are per thread), read back both through capget and through the kernel's /proc/thread-self/status.</summary>
    [Fact]
    public void ApplySetsTheThreadsCapabilitiesAsTheKernelReportsThem()
    {
        var want = new SpecCapabilities
        {
            Bounding = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETPCAP"],
            Effective = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            Permitted = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            Inheritable = ["CAP_NET_BIND_SERVICE"],
            Ambient = ["CAP_NET_BIND_SERVICE"],
        };
        string status = "";
        SpecCapabilities? read = null;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                Capabilities.ApplyBounding(want);
                Capabilities.Apply(want);
                read = Capabilities.ReadCurrent();
                status = File.ReadAllText("/proc/thread-self/status");
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        Assert.Null(failure);
        string Field(string name) => status.Split('\n').First(l => l.StartsWith(name + ":", StringComparison.Ordinal))[(name.Length + 1)..].Trim();
        ulong Hex(string name) => ulong.Parse(Field(name), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(Capabilities.Mask(want.Bounding), Hex("CapBnd"));
        Assert.Equal(Capabilities.Mask(want.Effective), Hex("CapEff"));
        Assert.Equal(Capabilities.Mask(want.Permitted), Hex("CapPrm"));
        Assert.Equal(Capabilities.Mask(want.Inheritable), Hex("CapInh"));
        Assert.Equal(Capabilities.Mask(want.Ambient), Hex("CapAmb"));
        Assert.Equal(want.Bounding.OrderBy(Capabilities.Number), read!.Bounding!);
        Assert.Equal(want.Ambient, read.Ambient);
        // The test's own thread kept its capabilities.
        Assert.NotEqual(Capabilities.Mask(want.Effective), CapabilityCalls.Get().Effective);
    }

    [Fact]
    public void ApplyOfACapabilityTheThreadDoesNotHoldSaysWhichIsMissing()
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                Capabilities.Apply(new SpecCapabilities { Effective = ["CAP_KILL"], Permitted = ["CAP_KILL"] });
                Capabilities.Apply(new SpecCapabilities { Effective = ["CAP_SYS_ADMIN"], Permitted = ["CAP_SYS_ADMIN"] });
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        var error = Assert.IsType<ContainerSecurityException>(failure);
        Assert.Contains("CAP_SYS_ADMIN", error.Message);
    }
}
