using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Scheduling;

/// <summary>Xen's credit scheduler (<see cref="CreditScheduler"/>), measured from runs on the software machine.</summary>
public class CreditSchedulerTests
{
    // 900 ms = 30 accounting periods of 30 ms: the ratio settles within a period's worth of credit.
    private const double Duration = 900;

    [Fact]
    public void Weights_divide_the_cpu_in_proportion()
    {
        using var host = Run(SchedulerKind.Credit, 1, Duration,
            Vm("light", "spin", new CpuControls(CreditScheduler.DefaultWeight, 0, null)), Vm("heavy", "spin", new CpuControls(2 * CreditScheduler.DefaultWeight, 0, null)));
        double light = CpuFraction(host, "light"), heavy = CpuFraction(host, "heavy");
        Assert.InRange(light + heavy, 0.99, 1.0);
        Assert.InRange(heavy / light, 2 * 0.9, 2 * 1.1);
    }

    [Fact]
    public void A_cap_is_held_on_an_idle_host_and_next_to_a_busy_vm()
    {
        using (var alone = Run(SchedulerKind.Credit, 1, Duration, Vm("capped", "spin", new CpuControls(CreditScheduler.DefaultWeight, 0, 30))))
        {
            // Xen parks a capped vCPU at the tick after its credit runs out, so it overruns by at most a tick, which
            // the next periods' credit pays back.
            Assert.InRange(CpuFraction(alone, "capped"), 0.30 - 0.03, 0.30 + 0.02);
            Assert.True(alone.Vms[0].Vcpu.ThrottledRounds > 0);
        }
        using var shared = Run(SchedulerKind.Credit, 1, Duration,
            Vm("capped", "spin", new CpuControls(CreditScheduler.DefaultWeight, 0, 30)), Vm("other", "spin"));
        Assert.InRange(CpuFraction(shared, "capped"), 0.05, 0.30 + 0.02);
        Assert.InRange(CpuFraction(shared, "capped") + CpuFraction(shared, "other"), 0.99, 1.0);
    }

    [Fact]
    public void A_waking_vcpu_is_boosted_past_cpu_bound_ones()
    {
        using var host = Run(SchedulerKind.Credit, 1, null,
            Vm("ticker", "ticker"), Vm("spin1", "spin", cpu: null) with { RunLimitMilliseconds = 2000 },
            Vm("spin2", "spin") with { RunLimitMilliseconds = 2000 });
        var ticker = host.Vms[0];
        Assert.Equal(0u, ticker.GuestStatus);
        Assert.True(ticker.Vcpu.Wakeups >= WorkloadGuests.TickerTicks / 2, $"{ticker.Vcpu.Wakeups} wake-ups");
        // Without BOOST it would wait behind two 30 ms slices; boosted, it runs at the next round.
        double meanLatency = SlowClock.Milliseconds(ticker.Vcpu.WakeLatencyCycles) / ticker.Vcpu.Wakeups;
        Assert.True(meanLatency < 1, $"mean wake-up latency {meanLatency} ms");
    }
}
