using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Scheduling;

/// <summary>ESX's three controls under <see cref="ProportionalShareScheduler"/>, measured from runs of CPU-bound
/// guests on the software machine: the fractions are the guests' retired instructions over the host's virtual time.</summary>
public class ProportionalShareSchedulerTests
{
    // 300 ms of virtual time = 3,000 rounds: SFQ's lag is at most one round per vCPU, far below the tolerance.
    private const double Duration = 300;
    private const double Tolerance = 0.02;

    [Fact]
    public void Shares_divide_the_cpu_in_proportion()
    {
        using var host = Run(SchedulerKind.ProportionalShare, 1, Duration,
            Vm("one", "spin", new CpuControls(1000, 0, null)), Vm("two", "spin", new CpuControls(2000, 0, null)), Vm("three", "spin", new CpuControls(3000, 0, null)));
        Assert.InRange(CpuFraction(host, "one"), 1 / 6.0 - Tolerance, 1 / 6.0 + Tolerance);
        Assert.InRange(CpuFraction(host, "two"), 2 / 6.0 - Tolerance, 2 / 6.0 + Tolerance);
        Assert.InRange(CpuFraction(host, "three"), 3 / 6.0 - Tolerance, 3 / 6.0 + Tolerance);
        Assert.All(host.Vms, v => Assert.True(v.EndedAsPlanned, v.Outcome));
    }

    [Fact]
    public void A_limit_is_held_even_on_an_idle_host()
    {
        using var host = Run(SchedulerKind.ProportionalShare, 1, Duration, Vm("limited", "spin", new CpuControls(1000, 0, 25)));
        double got = CpuFraction(host, "limited");
        Assert.InRange(got, 0.25 - Tolerance, 0.25 + 0.005);
        Assert.True(host.Vms[0].Vcpu.ThrottledRounds > 0);
    }

    [Fact]
    public void A_reservation_is_met_against_more_shares()
    {
        // One share against three VMs of 1000 would give it almost nothing; its reservation gives it 40%.
        using var host = Run(SchedulerKind.ProportionalShare, 1, Duration,
            Vm("reserved", "spin", new CpuControls(1, 40, null)), Vm("a", "spin"), Vm("b", "spin"), Vm("c", "spin"));
        Assert.True(CpuFraction(host, "reserved") >= 0.40 - 0.01, $"the reserved VM got {CpuFraction(host, "reserved"):P1}");
        // The rest is divided equally among the others.
        double a = CpuFraction(host, "a"), b = CpuFraction(host, "b"), c = CpuFraction(host, "c");
        Assert.InRange(a, b - Tolerance, b + Tolerance);
        Assert.InRange(c, b - Tolerance, b + Tolerance);
    }

    [Fact]
    public void Two_host_cpus_run_four_vcpus_equally_and_the_run_is_reproducible()
    {
        double[] Fractions()
        {
            using var host = Run(SchedulerKind.ProportionalShare, 2, 100, Vm("a", "spin"), Vm("b", "spin"), Vm("c", "spin"), Vm("d", "spin"));
            return [.. host.Vms.Select(v => (double)v.Vcpu.RunCycles)];
        }
        var first = Fractions();
        var second = Fractions();
        // Known limit (seen in CI): with two host threads, a VM's count at the end of the host's run can differ by one
        // cycle between runs (5,000,000 against 5,000,001): where the end-of-run stop lands is not yet deterministic.
        // Everything else must repeat exactly.
        Assert.Equal(first.Length, second.Length);
        for (int i = 0; i < first.Length; i++)
        {
            Assert.InRange(second[i], first[i] - 1, first[i] + 1);
        }
        double total = first.Sum();
        Assert.All(first, f => Assert.InRange(f / total, 0.25 - Tolerance, 0.25 + Tolerance));
    }
}
