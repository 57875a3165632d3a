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
        (double[] Run, string[] Counters) Measure()
        {
            using var host = Run(SchedulerKind.ProportionalShare, 2, 100, Vm("a", "spin"), Vm("b", "spin"), Vm("c", "spin"), Vm("d", "spin"));
            return ([.. host.Vms.Select(v => (double)v.Vcpu.RunCycles)],
                [$"now={host.Now} rounds={host.Rounds}", .. host.Vms.Select(v => v.Name + ": " + string.Join(" ", host.CountersOf(v).Where(c => c.Name != "memory_allocated").Select(c => $"{c.Name}={c.Value}")))]);
        }
        var (first, firstCounters) = Measure();
        var (_, secondCounters) = Measure();
        // Exactly reproducible with two host threads too: every counter of every VM, to the cycle. (The host waits for
        // the threads of the VMs it stops at the end of the run before it goes on: VcpuQuantum.WaitFinished.) Only
        // memory_allocated is left out: for a native VM it is the host kernel's residency of its RAM, not virtual time.
        Assert.Equal(firstCounters, secondCounters);
        double total = first.Sum();
        Assert.All(first, f => Assert.InRange(f / total, 0.25 - Tolerance, 0.25 + Tolerance));
    }
}
