using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Scheduling;

/// <summary>Which scheduler a host runs.</summary>
public enum SchedulerKind
{
    /// <summary>ESX's proportional share with reservations and limits (<see cref="ProportionalShareScheduler"/>).</summary>
    ProportionalShare,

    /// <summary>Xen's credit scheduler (<see cref="CreditScheduler"/>).</summary>
    Credit,
}

/// <summary>A scheduler of vCPUs on the host's CPUs. The host runs time in rounds of <see cref="RoundCycles"/>
/// (100 µs of virtual time): before each round the scheduler says which vCPU each host CPU runs, after it the host
/// says what each ran. Decisions depend only on virtual time, so that a run is reproducible.</summary>
public abstract class VcpuScheduler
{
    private readonly List<ScheduledVcpu> vcpus = [];

    /// <param name="clock">The host's virtual clock.</param>
    /// <param name="hostCpus">How many host CPUs there are.</param>
    protected VcpuScheduler(HostClock clock, int hostCpus)
    {
        Clock = clock;
        HostCpus = hostCpus;
        RoundCycles = clock.Cycles(0.1);
        CoStopSkewCycles = clock.Cycles(CoStopSkewMilliseconds);
    }

    /// <summary>The skew between two vCPUs of one VM beyond which the one ahead is co-stopped, in milliseconds of
    /// virtual time. ESX's threshold is an internal setting of its scheduler; this is the model's stated parameter:
    /// three of the credit scheduler's 10 ms ticks would let a guest's spin-waits on a descheduled sibling run far too
    /// long, one round would make the VM gang-scheduled in all but name.</summary>
    public const double CoStopSkewMilliseconds = 3;

    /// <summary><see cref="CoStopSkewMilliseconds"/> in cycles.</summary>
    public long CoStopSkewCycles { get; }

    /// <summary>The one to run: <c>share</c> or <c>credit</c>.</summary>
    public static VcpuScheduler Create(SchedulerKind kind, HostClock clock, int hostCpus) => kind switch
    {
        SchedulerKind.Credit => new CreditScheduler(clock, hostCpus),
        _ => new ProportionalShareScheduler(clock, hostCpus),
    };

    /// <summary>The scheduler as the CLI names it.</summary>
    public static SchedulerKind Parse(string name) => name.ToLowerInvariant() switch
    {
        "share" => SchedulerKind.ProportionalShare,
        "credit" => SchedulerKind.Credit,
        _ => throw new BadInputException($"there is no scheduler '{name}'",
            "Use --scheduler share (ESX's proportional share with reservations and limits) or credit (Xen's credit scheduler)"),
    };

    /// <summary>Its name as the CLI spells it.</summary>
    public abstract string Name { get; }

    /// <summary>The host's virtual clock.</summary>
    public HostClock Clock { get; }

    /// <summary>How many host CPUs it hands out.</summary>
    public int HostCpus { get; }

    /// <summary>Length of a round: the grain of every decision.</summary>
    public long RoundCycles { get; }

    /// <summary>The vCPUs it schedules.</summary>
    public IReadOnlyList<ScheduledVcpu> Vcpus => vcpus;

    /// <summary>Adds a vCPU (runnable from the next round).</summary>
    public void Add(ScheduledVcpu vcpu)
    {
        vcpus.Add(vcpu);
        Added(vcpu);
    }

    /// <summary>A vCPU joined.</summary>
    protected virtual void Added(ScheduledVcpu vcpu)
    {
    }

    /// <summary>A vCPU became runnable again at <paramref name="now"/> (its guest's timer woke it, or it was resumed).</summary>
    public abstract void Woke(ScheduledVcpu vcpu, long now);

    /// <summary>Decides the round that starts at <paramref name="now"/>: <paramref name="hostCpus"/> holds the last
    /// round's vCPU per host CPU (null: idle), and gets this round's. Only runnable vCPUs may be placed.</summary>
    public abstract void Assign(long now, ScheduledVcpu?[] hostCpus);

    /// <summary>In the round that started at <paramref name="now"/>, <paramref name="vcpu"/> ran
    /// <paramref name="cycles"/> busy cycles.</summary>
    public abstract void Ran(ScheduledVcpu vcpu, long cycles, long now);

    /// <summary>The round that started at <paramref name="now"/> is over (every vCPU's <see cref="Ran"/> came first).</summary>
    public abstract void RoundEnded(long now);

    /// <summary>The scheduler's own counters for a vCPU.</summary>
    public abstract IEnumerable<EngineCounter> CountersOf(ScheduledVcpu vcpu);

    /// <summary>The scheduler's own counters for the whole host (the credit scheduler's load balancing).</summary>
    public virtual IEnumerable<EngineCounter> HostCounters() => [];

    /// <summary>ESX's relaxed co-scheduling (VMware, "The CPU Scheduler in VMware vSphere 5.1", §2.3): a VM's
    /// vCPUs may run at different times, but the <em>skew</em> between them is bounded. The skew of a vCPU is how far
    /// its progress (its own virtual time: the cycles it ran plus those its guest idled in HLT, <see
    /// cref="ScheduledVcpu.GuestClock"/>) is ahead of a sibling that is runnable and waiting; a sibling that idles in
    /// HLT or is paused makes no progress it is owed, so it holds no one back (ESX: an idle vCPU accrues no skew).
    /// Only the vCPUs that are too far ahead are co-stopped (relaxed, as ESX since 4.0; strict co-scheduling would
    /// stop the whole VM), for the round; the laggard, with them out of the way, catches up and they are co-started.
    /// Each scheduler calls this before it decides a round and treats a co-stopped vCPU as not eligible.</summary>
    protected void MarkCoStopped()
    {
        foreach (var v in vcpus)
        {
            v.CoStopped = false;
            if (v.VcpusOfVm < 2 || !v.IsRunnable)
            {
                continue;
            }
            foreach (var sibling in v.Siblings)
            {
                if (sibling != v && sibling.IsRunnable && v.GuestClock - sibling.GuestClock > CoStopSkewCycles)
                {
                    v.CoStopped = true;
                    v.CoStopRounds++;
                    break;
                }
            }
        }
    }

    /// <summary>Earlier in the configuration first: ties are broken the same way every run.</summary>
    protected static int ByOrder(ScheduledVcpu a, ScheduledVcpu b) => a.Order.CompareTo(b.Order);
}
