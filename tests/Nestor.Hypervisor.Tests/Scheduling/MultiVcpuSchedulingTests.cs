using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Scheduling;

/// <summary>VMs with several vCPUs as the schedulers see them: a VM's controls split over its vCPUs (ESX's shares,
/// reservation and limit, Xen's weight and cap are the VM's) and ESX's relaxed co-scheduling. The sim engine runs one
/// vCPU per VM, so these drive the schedulers as <see cref="VirtualMachineHost"/> does, round by round, with CPU-bound
/// vCPUs: a vCPU on a host CPU runs the whole round, and its own clock stands still while it waits.</summary>
public class MultiVcpuSchedulingTests
{
    // Runs CPU-bound vCPUs for the given number of rounds; returns the largest skew seen between two vCPUs of one VM.
    private static long Drive(VcpuScheduler scheduler, int rounds)
    {
        var cpus = new ScheduledVcpu?[scheduler.HostCpus];
        long round = scheduler.RoundCycles, largestSkew = 0;
        for (long r = 0; r < rounds; r++)
        {
            long now = r * round;
            scheduler.Assign(now, cpus);
            foreach (var v in scheduler.Vcpus)
            {
                bool running = Array.IndexOf(cpus, v) >= 0;
                v.RanLastRound = running;
                if (running)
                {
                    v.RunCycles += round;
                    v.GuestClock += round;
                    scheduler.Ran(v, round, now);
                }
            }
            scheduler.RoundEnded(now);
            foreach (var v in scheduler.Vcpus)
            {
                foreach (var s in v.Siblings)
                {
                    largestSkew = Math.Max(largestSkew, v.GuestClock - s.GuestClock);
                }
            }
        }
        return largestSkew;
    }

    private static IReadOnlyList<ScheduledVcpu> Add(VcpuScheduler scheduler, string name, int order, CpuControls controls, int vcpus)
    {
        var list = ScheduledVcpu.ForVm(name, order, controls, vcpus);
        foreach (var v in list)
        {
            scheduler.Add(v);
        }
        return list;
    }

    private static double Fraction(VcpuScheduler s, IEnumerable<ScheduledVcpu> vcpus, int rounds) =>
        vcpus.Sum(v => (double)v.RunCycles) / (rounds * s.RoundCycles);

    [Fact]
    public void A_vms_vcpus_are_named_by_index_and_know_each_other()
    {
        var one = ScheduledVcpu.ForVm("web", 3, new CpuControls(1000, 0, null), 1);
        Assert.Equal("web", one[0].Name);
        var two = ScheduledVcpu.ForVm("db", 4, new CpuControls(2000, 50, 80), 2);
        Assert.Equal(["db/0", "db/1"], two.Select(v => v.Name));
        Assert.All(two, v => Assert.Same(two, v.Siblings));
        Assert.All(two, v => Assert.Equal((1000.0, 25.0, 40.0), (v.WeightShare, v.ReservationShare, v.LimitShare!.Value)));
    }

    [Fact]
    public void Shares_are_the_vms_and_divided_among_its_vcpus()
    {
        const int Rounds = 3000;
        var s = new ProportionalShareScheduler(SlowClock, 1);
        var a = Add(s, "a", 0, new CpuControls(2000, 0, null), 2);
        var b = Add(s, "b", 1, new CpuControls(1000, 0, null), 1);
        long skew = Drive(s, Rounds);
        // ESX: a VM's shares are its own, not per vCPU: 2000 against 1000 is two thirds for a, whatever its vCPUs.
        Assert.InRange(Fraction(s, a, Rounds), 2 / 3.0 - 0.01, 2 / 3.0 + 0.01);
        Assert.InRange(Fraction(s, b, Rounds), 1 / 3.0 - 0.01, 1 / 3.0 + 0.01);
        Assert.InRange(Fraction(s, [a[0]], Rounds), 1 / 3.0 - 0.01, 1 / 3.0 + 0.01);
        Assert.True(skew <= s.CoStopSkewCycles + s.RoundCycles, $"skew {skew}");
    }

    [Fact]
    public void A_limit_and_a_cap_hold_for_the_whole_vm()
    {
        const int Rounds = 3000;
        var share = new ProportionalShareScheduler(SlowClock, 2);
        var limited = Add(share, "l", 0, new CpuControls(1000, 0, 50), 2);
        Drive(share, Rounds);
        // 50% of one host CPU for the VM, on a host where each of its two vCPUs could have a CPU of its own.
        Assert.InRange(Fraction(share, limited, Rounds), 0.50 - 0.01, 0.50 + 0.01);

        var credit = new CreditScheduler(SlowClock, 2);
        var capped = Add(credit, "c", 0, new CpuControls(CreditScheduler.DefaultWeight, 0, 50), 2);
        Drive(credit, 9000);
        Assert.InRange(Fraction(credit, capped, 9000), 0.50 - 0.03, 0.50 + 0.02);
    }

    [Fact]
    public void A_reservation_is_the_vms_and_admission_counts_it_once()
    {
        var admission = new AdmissionControl(1UL << 30, 1UL << 30, 1);
        var spec = Vm("r", "spin", new CpuControls(1000, 60, null)) with { VcpuCount = 2 };
        Assert.Null(admission.TryAdmit(spec));
        Assert.Equal(60, admission.ReservedCpuPercent);
        Assert.Contains("does not fit", admission.TryAdmit(Vm("s", "spin", new CpuControls(1000, 50, null))));
    }

    [Fact]
    public void Relaxed_co_scheduling_keeps_a_vms_vcpus_within_the_skew_threshold()
    {
        // Credit on one host CPU: without co-scheduling a's first vCPU would run a whole 30 ms slice while its sibling
        // waited, 30 ms of skew; co-stopped once 3 ms ahead, it lets the sibling catch up.
        const int Rounds = 9000;
        var s = new CreditScheduler(SlowClock, 1);
        var a = Add(s, "a", 0, new CpuControls(CreditScheduler.DefaultWeight, 0, null), 2);
        var b = Add(s, "b", 1, new CpuControls(CreditScheduler.DefaultWeight, 0, null), 1);
        long skew = Drive(s, Rounds);
        Assert.True(skew <= s.CoStopSkewCycles + s.RoundCycles, $"skew {SlowClock.Milliseconds(skew)} ms");
        Assert.True(a[0].CoStopRounds + a[1].CoStopRounds > 0, "a vCPU ahead was co-stopped");
        Assert.Equal(0, b[0].CoStopRounds);
        // Co-stopping moves time between a's vCPUs and b, not away from the VMs: the CPU is never idle, and the
        // weights (256 each, a's split over its two vCPUs) still give each VM about half.
        Assert.Equal(1.0, Fraction(s, [.. a, .. b], Rounds), 6);
        Assert.InRange(Fraction(s, a, Rounds), 0.5 - 0.05, 0.5 + 0.05);
    }

    [Fact]
    public void A_vcpu_whose_sibling_idles_is_not_held_back()
    {
        var s = new ProportionalShareScheduler(SlowClock, 1);
        var a = Add(s, "a", 0, new CpuControls(1000, 0, null), 2);
        a[1].State = VcpuRunState.Blocked; // its guest idles in HLT: it accrues no skew, and holds no one back
        a[1].WakeAt = long.MaxValue;
        Drive(s, 1000);
        Assert.Equal(0, a[0].CoStopRounds);
        Assert.Equal(1000 * s.RoundCycles, a[0].RunCycles);
    }

    [Fact]
    public void The_host_refuses_a_vm_with_several_vcpus_under_a_technique_that_runs_one()
    {
        // Native and hw+nested run several (MultiVcpuHostTests); binary translation keeps one vCPU (TechniqueRules).
        var spec = new HostSpec(1UL << 30, 0, 2, SchedulerKind.Credit, [Vm("smp", "spin", technique: Technique.BinaryTranslation) with { VcpuCount = 2 }]);
        var error = Assert.Throws<BadInputException>(() => new VirtualMachineHost(spec, console: null));
        Assert.Contains("VM 'smp' has 2 vCPUs", error.Message);
    }
}
