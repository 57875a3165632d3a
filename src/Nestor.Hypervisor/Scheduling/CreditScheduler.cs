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
/// A vCPU with credit is UNDER, without it OVER; one that wakes from HLT while UNDER is BOOSTed until its next debit.
/// A vCPU keeps its host CPU for a 30 ms time slice unless it blocks or is preempted. A capped vCPU out of credit is
/// parked (not runnable) until an accounting gives it credit again.
/// <para>Run queues as Xen's: one per host CPU, ordered by priority (BOOST, UNDER, OVER) and FIFO within one; a vCPU
/// is queued on the host CPU it last ran on (its <c>processor</c>; new vCPUs are placed round-robin). A CPU
/// reschedules when its vCPU's slice ends, when it blocks, parks or ends, and when the head of its own queue outranks
/// what it runs (the tickle of a waking vCPU: Xen preempts only the waking vCPU's own CPU, and lets idle CPUs take it
/// otherwise). Rescheduling, it takes the head of its own queue if that is UNDER or BOOST; if the head is OVER or the
/// queue is empty it first looks at its peers' queues (in CPU order from the next one, as Xen's
/// <c>csched_load_balance</c> cycles over them) and steals the first vCPU of a strictly higher priority than what it
/// would run (an idle CPU takes any). A steal moves the vCPU to the stealing CPU (a migration), counted per vCPU and,
/// as Xen's <c>load_balance_idle</c> and <c>load_balance_over</c> statistics, for the host. Not modelled: NUMA
/// nodes, affinity, and the migration of a running vCPU to an idle CPU at the tick (<c>csched_unit_acct</c>).</para></summary>
public sealed class CreditScheduler : VcpuScheduler
{
    /// <summary>Xen's default weight.</summary>
    public const int DefaultWeight = 256;

    /// <summary>Credits debited for 10 ms of running (CSCHED_CREDITS_PER_TICK).</summary>
    public const double CreditsPerTick = 100;

    /// <summary>Ticks in an accounting period (CSCHED_TICKS_PER_ACCT).</summary>
    public const int TicksPerAccounting = 3;

    private readonly long tick;
    private readonly long timeSlice;
    private readonly List<ScheduledVcpu>[] runQueues;
    private readonly bool[] continuing;
    private long nextTick;
    private int ticks;
    private long stamp;
    private bool dealt;
    private int placed;

    /// <param name="clock">The host's virtual clock.</param>
    /// <param name="hostCpus">How many host CPUs (and run queues) there are.</param>
    public CreditScheduler(HostClock clock, int hostCpus) : base(clock, hostCpus)
    {
        tick = clock.Cycles(10);
        timeSlice = clock.Cycles(30);
        nextTick = tick;
        runQueues = new List<ScheduledVcpu>[hostCpus];
        continuing = new bool[hostCpus];
        for (int i = 0; i < hostCpus; i++)
        {
            runQueues[i] = [];
        }
    }

    /// <inheritdoc/>
    public override string Name => "credit";

    /// <summary>The time slice (30 ms).</summary>
    public long TimeSliceCycles => timeSlice;

    /// <summary>Credits one accounting period deals out per host CPU (CSCHED_CREDITS_PER_ACCT).</summary>
    public static double CreditsPerAccounting => CreditsPerTick * TicksPerAccounting;

    /// <summary>Steals by a CPU that had nothing to run (Xen's <c>load_balance_idle</c>).</summary>
    public long StealsWhenIdle { get; private set; }

    /// <summary>Steals by a CPU that would otherwise have run an OVER vCPU (Xen's <c>load_balance_over</c>).</summary>
    public long StealsWhenOver { get; private set; }

    /// <summary>The vCPUs waiting on host CPU <paramref name="cpu"/>'s run queue after the last decision, in order.</summary>
    public IReadOnlyList<ScheduledVcpu> RunQueue(int cpu) => runQueues[cpu];

    /// <inheritdoc/>
    protected override void Added(ScheduledVcpu vcpu)
    {
        vcpu.QueueStamp = stamp++;
        vcpu.Priority = CreditPriority.Under;
        vcpu.Credit = 0;
        // Initial placement round-robin over the host CPUs (Xen's csched_res_pick prefers idle CPUs; at power-on all are).
        vcpu.Processor = placed++ % HostCpus;
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

    private static bool Eligible(ScheduledVcpu v) => v.IsRunnable && !v.Parked && !v.CoStopped;

    // Priority first (BOOST < UNDER < OVER in the enum), then first come first served.
    private static int QueueOrder(ScheduledVcpu a, ScheduledVcpu b) =>
        a.Priority != b.Priority ? a.Priority.CompareTo(b.Priority) : a.QueueStamp.CompareTo(b.QueueStamp);

    private static readonly Comparison<ScheduledVcpu> ByQueueOrder = QueueOrder;

    /// <inheritdoc/>
    public override void Assign(long now, ScheduledVcpu?[] hostCpus)
    {
        if (!dealt)
        {
            // The first period's credits, as if an accounting had just run.
            dealt = true;
            Account();
        }
        MarkCoStopped();
        // A vCPU whose slice is over, or that may no longer run, gives up its CPU (and, if it may still run, goes to
        // the back of its priority on that CPU's queue).
        for (int i = 0; i < hostCpus.Length; i++)
        {
            if (hostCpus[i] is { } current && (!Eligible(current) || current.SliceLeft <= 0))
            {
                current.QueueStamp = stamp++;
                hostCpus[i] = null;
            }
        }
        // The queues hold exactly the eligible vCPUs not on a CPU: the host changes states (blocks, wakes, pauses,
        // ends) between decisions, and a parked vCPU leaves its queue until it is unparked.
        foreach (var q in runQueues)
        {
            for (int k = q.Count - 1; k >= 0; k--)
            {
                if (!Eligible(q[k]) || Array.IndexOf(hostCpus, q[k]) >= 0)
                {
                    q[k].Queued = false;
                    q.RemoveAt(k);
                }
            }
        }
        foreach (var v in Vcpus)
        {
            if (v.IsRunnable && v.Parked)
            {
                v.ThrottledRounds++;
            }
            if (Eligible(v) && !v.Queued && Array.IndexOf(hostCpus, v) < 0)
            {
                v.Queued = true;
                runQueues[v.Processor].Add(v);
            }
        }
        foreach (var q in runQueues)
        {
            q.Sort(ByQueueOrder); // Xen's runq_sort after an accounting changed priorities; a no-op otherwise
        }
        // CPUs without a vCPU choose first: an idle CPU takes a waking vCPU from a busy peer's queue rather than let
        // it preempt there (__runq_tickle prefers idlers to preemption).
        for (int i = 0; i < hostCpus.Length; i++)
        {
            continuing[i] = hostCpus[i] is not null;
            if (hostCpus[i] is null && Pick(i) is { } next)
            {
                next.SliceLeft = timeSlice;
                hostCpus[i] = next;
            }
        }
        // The tickle: where every CPU is busy, a queued vCPU that outranks what its own CPU runs preempts it (a BOOSTed
        // waker before a CPU-bound one); the preempted vCPU goes back to that CPU's queue.
        for (int i = 0; i < hostCpus.Length; i++)
        {
            if (continuing[i] && hostCpus[i] is { } current && runQueues[i].Count > 0 && runQueues[i][0].Priority < current.Priority)
            {
                var next = runQueues[i][0];
                runQueues[i].RemoveAt(0);
                next.Queued = false;
                current.QueueStamp = stamp++;
                Enqueue(i, current);
                next.SliceLeft = timeSlice;
                hostCpus[i] = next;
            }
        }
    }

    private void Enqueue(int cpu, ScheduledVcpu v)
    {
        var q = runQueues[cpu];
        int at = q.Count;
        while (at > 0 && QueueOrder(q[at - 1], v) > 0)
        {
            at--;
        }
        q.Insert(at, v);
        v.Queued = true;
        v.Processor = cpu;
    }

    // csched_schedule's choice for CPU cpu: its own queue's head if UNDER or BOOST, else a steal (csched_load_balance,
    // csched_runq_steal: the first vCPU of a peer's queue that outranks what this CPU would run), else its OVER head.
    private ScheduledVcpu? Pick(int cpu)
    {
        var own = runQueues[cpu];
        var head = own.Count > 0 ? own[0] : null;
        if (head is { Priority: < CreditPriority.Over })
        {
            own.RemoveAt(0);
            head.Queued = false;
            return head;
        }
        for (int k = 1; k < HostCpus; k++)
        {
            var peer = runQueues[(cpu + k) % HostCpus];
            if (peer.Count > 0 && (head is null || peer[0].Priority < head.Priority))
            {
                var stolen = peer[0];
                peer.RemoveAt(0);
                stolen.Queued = false;
                stolen.Processor = cpu;
                stolen.Migrations++;
                if (head is null)
                {
                    StealsWhenIdle++;
                }
                else
                {
                    StealsWhenOver++;
                }
                return stolen;
            }
        }
        if (head is not null)
        {
            own.RemoveAt(0);
            head.Queued = false;
        }
        return head;
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
            if (v.LimitShare is not null && v.Credit < 0)
            {
                v.Parked = true;
            }
        }
        if (++ticks % TicksPerAccounting == 0)
        {
            Account();
        }
    }

    // A vCPU takes part in an accounting while it may run (Xen's inactive state for a vCPU that leaves its credit
    // unspent is not modelled: a mostly idle VM keeps its weight's share, clipped at one period's credit).
    private static bool Active(ScheduledVcpu v) => v.State is VcpuRunState.Runnable or VcpuRunState.Blocked;

    // csched_acct: credits for the next period, in proportion to weight among the active vCPUs, capped.
    private void Account()
    {
        double totalWeight = 0;
        foreach (var v in Vcpus)
        {
            if (Active(v))
            {
                totalWeight += v.WeightShare;
            }
        }
        double dealt = CreditsPerAccounting * HostCpus;
        foreach (var v in Vcpus)
        {
            if (!Active(v) || totalWeight <= 0)
            {
                continue;
            }
            double share = dealt * v.WeightShare / totalWeight;
            // One vCPU can use at most one CPU: its share is at most a CPU's worth, and a cap's worth when capped.
            share = Math.Min(share, CreditsPerAccounting);
            if (v.LimitShare is { } cap)
            {
                // Xen's cap is the domain's, in percent of one CPU: each of its vCPUs gets its part.
                share = Math.Min(share, CreditsPerAccounting * cap / 100);
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
        yield return new EngineCounter("host_cpu", (ulong)Math.Max(0, vcpu.Processor), "");
        yield return new EngineCounter("migrations", (ulong)vcpu.Migrations, "");
        yield return new EngineCounter("costop_rounds", (ulong)vcpu.CoStopRounds, "rounds");
    }

    /// <inheritdoc/>
    public override IEnumerable<EngineCounter> HostCounters()
    {
        yield return new EngineCounter("load_balance_idle", (ulong)StealsWhenIdle, "steals");
        yield return new EngineCounter("load_balance_over", (ulong)StealsWhenOver, "steals");
        for (int i = 0; i < HostCpus; i++)
        {
            yield return new EngineCounter($"run_queue_{i}", (ulong)runQueues[i].Count, "vcpus");
        }
    }
}
