using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>What <c>nestor bench consolidate</c> prints as each VM's entitlement (<see cref="ConsolidationBench.Entitlements"/>).</summary>
public class ConsolidationBenchTests
{
    private static CpuControls Shares(int shares, double? limit = null, double reservation = 0) => new(shares, reservation, limit);

    [Fact]
    public void One_cpu_is_divided_by_reservation_then_shares_under_limits()
    {
        Assert.Equal([10.0, 20.0, 30.0, 40.0], ConsolidationBench.Entitlements([Shares(1000), Shares(2000), Shares(3000), Shares(4000)]));
        Assert.Equal([40.0, 40.0, 20.0], ConsolidationBench.Entitlements([Shares(1000, 40), Shares(1000, 40), Shares(1)]).Select(x => Math.Round(x, 9)));
        // The reservation is a floor: the reserved VM's one share also gets its part of the rest.
        Assert.Equal(50 + 50.0 / 2001, ConsolidationBench.Entitlements([Shares(1, reservation: 50), Shares(1000), Shares(1000)])[0], 9);
    }

    [Fact]
    public void Several_cpus_are_divided_with_no_vm_above_the_one_cpu_its_vcpu_can_use()
    {
        var three = ConsolidationBench.Entitlements([Shares(256), Shares(256), Shares(256)], hostCpus: 2);
        Assert.All(three, e => Assert.Equal(200 / 3.0, e, 9));
        // Eight times the shares would entitle it to 178% of one CPU: it has one vCPU, so it gets 100 and the rest goes on.
        var skewed = ConsolidationBench.Entitlements([Shares(1000), Shares(8000)], hostCpus: 2);
        Assert.Equal([100.0, 100.0], skewed.Select(x => Math.Round(x, 9)));
    }
}
