using Nestor.Hypervisor.Engines;

namespace Nestor.Hypervisor.Scheduling;

/// <summary>Where a vCPU stands with Xen's credit scheduler.</summary>
public enum CreditPriority
{
    /// <summary>Woke from sleep with credit left: goes first, and preempts UNDER and OVER vCPUs.</summary>
    Boost,

    /// <summary>Has credit left.</summary>
    Under,

    /// <summary>Has spent its credit: runs only when no UNDER vCPU wants the CPU.</summary>
    Over,
}

/// <summary>Xen's credit scheduler (credit1, xen/common/sched/credit.c; the design on the Xen wiki "Credit
/// Scheduler"): each VM has a <em>weight</em> (256 by default) and may have a <em>cap</em> (percent of one CPU).
/// Every accounting period (30 ms, three 10 ms ticks) 300 credits per host CPU are dealt out to the active vCPUs in
/// proportion to weight (capped VMs get at most their cap's worth); a running vCPU is debited 100 credits per 10 ms
/// it ran, settled at each tick; credit clips at one period's worth either way, so an idle VM cannot hoard.
/// A vCPU with credit is UNDER, without it OVER; one that wakes from HLT while UNDER is BOOSTed until its next debit,
/// and preempts a lower-priority vCPU (Xen's tickle). Within a priority the run queue is FIFO; a vCPU keeps its host
/// CPU for a 30 ms time slice unless it blocks or is preempted. A capped vCPU out of credit is parked (not runnable)
/// until an accounting gives it credit again. Simplification: one run queue for all host CPUs instead of Xen's per-CPU
/// queues with work stealing (the same picks on one CPU, and deterministic on several).</summary>
public sealed class CreditScheduler(HostClock clock, int hostCpus) : VcpuScheduler(clock, hostCpus)
{
    /// <summary>Xen's default weight.</summary>
    public const int DefaultWeight = 256;

    /// <summary>Credits debited for 10 ms of running (CSCHED_CREDITS_PER_TICK).</summary>
    public const double CreditsPerTick = 100;

    /// <summary>Ticks in an accounting period (CSCHED_TICKS_PER_ACCT).</summary>
    public const int TicksPerAccounting = 3;

    private readonly long tick = clock.Cycles(10);
    private readonly long timeSlice = clock.Cycles(30);
    private readonly List<ScheduledVcpu> waiting = [];
    private long nextTick = clock.Cycles(10);
    private int ticks;
    private long stamp;
    private bool dealt;

    /// <inheritdoc/>
    public override string Name => "credit";

    /// <summary>The time slice (30 ms).</summary>
    public long TimeSliceCycles => timeSlice;

    /// <summary>Credits one accounting period deals out per host CPU (CSCHED_CREDITS_PER_ACCT).</summary>
    public static double CreditsPerAccounting => CreditsPerTick * TicksPerAccounting;

    /// <inheritdoc/>
    protected override void Added(ScheduledVcpu vcpu)
    {
        vcpu.QueueStamp = stamp++;
        vcpu.Priority = CreditPriority.Under;
        vcpu.Credit = 0;
    }

    /// <inheritdoc/>
    public override void Woke(ScheduledVcpu vcpu, long now)
    {
        vcpu.QueueStamp = stamp++;
        if (vcpu.Credit > 0 && !vcpu.Parked)
        {
            vcpu.Priority = CreditPriority.Boost;
        }
    }

    private bool Eligible(ScheduledVcpu v) => v.IsRunnable && !v.Parked;

    /// <inheritdoc/>
    public override void Assign(long now, ScheduledVcpu?[] hostCpus)
    {
        if (!dealt)
        {
            // The first period's credits, as if an accounting had just run.
            dealt = true;
            Account();
        }
        // A vCPU whose slice is over, or that may no longer run, gives up its CPU and goes to the back of its queue.
        for (int i = 0; i < hostCpus.Length; i++)
        {
            if (hostCpus[i] is { } current && (!Eligible(current) || current.SliceLeft <= 0))
            {
                if (current.Parked && current.IsRunnable)
                {
                    current.ThrottledRounds++;
                }
                current.QueueStamp = stamp++;
                hostCpus[i] = null;
            }
        }
        waiting.Clear();
        foreach (var v in Vcpus)
        {
            if (v.IsRunnable && v.Parked)
            {
                v.ThrottledRounds++;
            }
            if (Eligible(v) && Array.IndexOf(hostCpus, v) < 0)
            {
                waiting.Add(v);
            }
        }
        waiting.Sort((a, b) => a.Priority != b.Priority ? a.Priority.CompareTo(b.Priority) : a.QueueStamp.CompareTo(b.QueueStamp));
        foreach (var next in waiting)
        {
            int free = Array.IndexOf(hostCpus, null);
            if (free >= 0)
            {
                Dispatch(hostCpus, free, next);
                continue;
            }
            // Tickle: preempt the running vCPU of the lowest priority if it is below the waiting one's.
            int victim = -1;
            for (int i = 0; i < hostCpus.Length; i++)
            {
                if (hostCpus[i]!.Priority > next.Priority && (victim < 0 || hostCpus[i]!.Priority > hostCpus[victim]!.Priority))
                {
                    victim = i;
                }
            }
            if (victim < 0)
            {
                break; // everyone waiting is at or below what runs: they wait for a slice to end
            }
            hostCpus[victim]!.QueueStamp = stamp++;
            Dispatch(hostCpus, victim, next);
        }
    }

    private void Dispatch(ScheduledVcpu?[] hostCpus, int cpu, ScheduledVcpu vcpu)
    {
        vcpu.SliceLeft = timeSlice;
        hostCpus[cpu] = vcpu;
    }

    /// <inheritdoc/>
    public override void Ran(ScheduledVcpu vcpu, long cycles, long now)
    {
        vcpu.SliceLeft -= RoundCycles;
        // Settled at the tick (burn_credits: what it actually ran, not a sample of who held the CPU at the tick).
        vcpu.Credit -= CreditsPerTick * cycles / tick;
    }

    /// <inheritdoc/>
    public override void RoundEnded(long now)
    {
        long end = now + RoundCycles;
        if (end < nextTick)
        {
            return;
        }
        nextTick += tick;
        foreach (var v in Vcpus)
        {
            // The debit of the tick ends a boost; priority follows credit.
            v.Priority = v.Credit > 0 ? CreditPriority.Under : CreditPriority.Over;
            if (v.Controls.LimitPercent is not null && v.Credit < 0)
            {
                v.Parked = true;
            }
        }
        if (++ticks % TicksPerAccounting == 0)
        {
            Account();
        }
    }

    // csched_acct: credits for the next period, in proportion to weight among the active vCPUs, capped.
    private void Account()
    {
        double totalWeight = 0;
        foreach (var v in Vcpus)
        {
            if (v.State is VcpuRunState.Runnable or VcpuRunState.Blocked)
            {
                totalWeight += v.WeightShare;
            }
        }
        double dealt = CreditsPerAccounting * HostCpus;
        foreach (var v in Vcpus)
        {
            if (v.State is not (VcpuRunState.Runnable or VcpuRunState.Blocked) || totalWeight <= 0)
            {
                continue;
            }
            double share = dealt * v.WeightShare / totalWeight;
            // One vCPU can use at most one CPU: its share is at most a CPU's worth, and a cap's worth when capped.
            share = Math.Min(share, CreditsPerAccounting);
            if (v.Controls.LimitPercent is { } cap)
            {
                share = Math.Min(share, CreditsPerAccounting * cap / 100 / v.VcpusOfVm);
            }
            v.Credit = Math.Clamp(v.Credit + share, -CreditsPerAccounting, CreditsPerAccounting);
            if (v.Parked && v.Credit > 0)
            {
                v.Parked = false;
            }
            if (v.Priority != CreditPriority.Boost)
            {
                v.Priority = v.Credit > 0 ? CreditPriority.Under : CreditPriority.Over;
            }
        }
    }

    /// <inheritdoc/>
    public override IEnumerable<EngineCounter> CountersOf(ScheduledVcpu vcpu)
    {
        yield return new EngineCounter("credit", (ulong)Math.Max(0, vcpu.Credit), "credits");
        yield return new EngineCounter("credit_debt", (ulong)Math.Max(0, -vcpu.Credit), "credits");
        yield return new EngineCounter("cap_parked_rounds", (ulong)vcpu.ThrottledRounds, "rounds");
    }
}
