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

    [Fact]
    public void An_idle_cpu_steals_from_a_loaded_ones_queue()
    {
        // Placed round-robin: a and c on CPU 0's queue, b and d on CPU 1's. b and d end early; from then on CPU 1's
        // queue is empty, and only by stealing from CPU 0's queue does it have anything to run.
        using var host = Run(SchedulerKind.Credit, 2, 300,
            Vm("a", "spin"), Vm("b", "spin") with { RunLimitMilliseconds = 40 }, Vm("c", "spin"), Vm("d", "spin") with { RunLimitMilliseconds = 40 });
        var credit = (CreditScheduler)host.Scheduler;
        Assert.True(credit.StealsWhenIdle > 0, "CPU 1 took work from CPU 0's queue");
        Assert.True(host.Vms[0].Vcpu.Migrations + host.Vms[2].Vcpu.Migrations > 0);
        // Work-conserving: both CPUs busy the whole run (without stealing, a and c would share CPU 0 once b and d
        // ended, and the host would run at little more than half its capacity).
        long busy = host.Vms.Sum(v => v.Vcpu.RunCycles);
        Assert.InRange(busy / (2.0 * host.Now), 0.99, 1.0);
        Assert.Contains(host.HostCounters(), c => c.Name == "load_balance_idle" && c.Value == (ulong)credit.StealsWhenIdle);
        Assert.Contains(host.CountersOf(host.Vms[0]), c => c.Name == "migrations" && c.Value == (ulong)host.Vms[0].Vcpu.Migrations);
    }

    [Fact]
    public void Three_vcpus_on_two_cpus_share_them_equally_by_stealing_under_ones_and_the_run_repeats()
    {
        (double[] Fractions, long Over, string[] Counters) Measure()
        {
            using var host = Run(SchedulerKind.Credit, 2, Duration, Vm("a", "spin"), Vm("b", "spin"), Vm("c", "spin"));
            var credit = (CreditScheduler)host.Scheduler;
            return ([.. host.Vms.Select(v => CpuFraction(host, v.Name))], credit.StealsWhenOver,
                [$"now={host.Now}", .. host.Vms.Select(v => v.Name + ": " + string.Join(" ", host.CountersOf(v).Where(c => c.Name != "memory_allocated").Select(c => $"{c.Name}={c.Value}")))]);
        }
        var (fractions, over, first) = Measure();
        // b alone on CPU 1's queue would have a CPU to itself and a and c half of one each (1 : 0.5 : 0.5); each is
        // entitled to two thirds. b runs OVER, and at the end of its slice CPU 1 takes an UNDER vCPU from CPU 0's
        // queue instead (csched_load_balance), which evens it out.
        Assert.True(over > 0, "a CPU stole an UNDER vCPU instead of running an OVER one");
        Assert.All(fractions, f => Assert.InRange(f, 2 / 3.0 - 0.05, 2 / 3.0 + 0.05));
        var (_, _, second) = Measure();
        Assert.Equal(first, second);
    }

    [Fact]
    public void The_run_queues_are_per_cpu_and_a_cpu_steals_only_what_outranks_its_own_choice()
    {
        // The scheduler alone, driven as the host drives it: three vCPUs placed round-robin on two CPUs.
        var s = new CreditScheduler(SlowClock, 2);
        var a = new ScheduledVcpu("a", 0, new CpuControls(CreditScheduler.DefaultWeight, 0, null));
        var b = new ScheduledVcpu("b", 1, new CpuControls(CreditScheduler.DefaultWeight, 0, null));
        var c = new ScheduledVcpu("c", 2, new CpuControls(CreditScheduler.DefaultWeight, 0, null));
        s.Add(a);
        s.Add(b);
        s.Add(c);
        var cpus = new ScheduledVcpu?[2];
        s.Assign(0, cpus);
        Assert.Same(a, cpus[0]);
        Assert.Same(b, cpus[1]);
        Assert.Equal([c], s.RunQueue(0));
        Assert.Empty(s.RunQueue(1));
        // b's VM ends: CPU 1's own queue is empty, so it takes c from CPU 0's queue (an idle CPU's steal).
        b.State = VcpuRunState.Done;
        s.Assign(s.RoundCycles, cpus);
        Assert.Same(a, cpus[0]);
        Assert.Same(c, cpus[1]);
        Assert.Equal(1, c.Migrations);
        Assert.Equal(0, a.Migrations);
        Assert.Equal(1, s.StealsWhenIdle);
        Assert.Equal(0, s.StealsWhenOver);
    }
}
