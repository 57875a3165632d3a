using Nestor.Hypervisor.Memory.Reclamation;

namespace Nestor.Hypervisor.Tests.Reclamation;

/// <summary>Share-based allocation without a tax (τ = 0, Waldspurger OSDI'02 §5.2): targets in proportion to shares,
/// within min and max, a VM holding less than its share not reclaimed from.</summary>
public class ProportionalShareTests
{
    private static long[] Allocate(long available, params VmMemoryDemand[] vms)
    {
        var targets = new long[vms.Length];
        new ProportionalShare().Allocate(vms, available, targets);
        return targets;
    }

    private static VmMemoryDemand Vm(long shares, long held, long min = 0, long max = 10_000) => new($"s{shares}", min, max, shares, held, 1.0);

    [Fact]
    public void Busy_vms_are_divided_in_proportion_to_their_shares()
    {
        var t = Allocate(9000, Vm(1000, 8000), Vm(2000, 8000));
        Assert.Equal(9000, t.Sum());
        Assert.InRange(t[1], 2 * t[0] - 2, 2 * t[0] + 2);
    }

    [Fact]
    public void A_vm_holding_less_than_its_share_keeps_what_it_holds_and_the_rest_goes_to_the_others()
    {
        var t = Allocate(9000, Vm(1000, 1000), Vm(1000, 8000), Vm(1000, 8000));
        Assert.Equal(1000, t[0]);
        Assert.Equal(4000, t[1]);
        Assert.Equal(4000, t[2]);
    }

    [Fact]
    public void When_the_demands_fit_each_keeps_its_demand_and_the_rest_is_room_by_shares_up_to_max()
    {
        var t = Allocate(9000, Vm(1000, 1000, max: 4000), Vm(1000, 2000, max: 4000), Vm(2000, 1000, max: 8000));
        Assert.Equal(9000, t.Sum());
        Assert.True(t[0] >= 1000 && t[1] >= 2000 && t[2] >= 1000, "nobody below what it holds");
        Assert.True(t[0] <= 4000 && t[1] <= 4000 && t[2] <= 8000, "nobody above max");
        Assert.True(t[2] > t[0], "more shares, more room");
    }

    [Fact]
    public void Min_is_kept_even_when_shares_say_less()
    {
        var t = Allocate(4000, Vm(1, 5000, min: 2000), Vm(1000, 5000));
        Assert.Equal(2000, t[0]);
        Assert.Equal(2000, t[1]);
    }

    [Fact]
    public void With_mins_above_what_is_available_each_gets_its_min()
    {
        var t = Allocate(1000, Vm(1000, 5000, min: 800), Vm(1000, 5000, min: 800));
        Assert.Equal([800, 800], t);
    }
}
