using Nestor.Hypervisor.Engines;

namespace Nestor.Hypervisor.Scheduling;

/// <summary>ESX's CPU resource controls (Waldspurger, OSDI'02 §6; the vSphere resource-management guide): a
/// <em>reservation</em> is a guaranteed share of a host CPU, a <em>limit</em> a share never exceeded, and what is
/// left is divided in proportion to <em>shares</em>.
/// <para>Shares are implemented by start-time fair queueing (Goyal, Guo and Vin, OSDI'96): every vCPU carries a start
/// tag and a finish tag in virtual time; the runnable vCPUs with the smallest start tags get the host CPUs; a vCPU
/// that ran <c>q</c> cycles advances by <c>q / weight</c> (finish = start + q / w, next start = finish); a vCPU that
/// wakes takes the larger of its finish tag and the system's virtual time (the smallest start tag of the runnable),
/// so sleeping earns no credit to spend later. The decision is made every round (100 µs): a vCPU is charged exactly what
/// it ran, so the quantum does not bias the ratio.</para>
/// <para>Reservation and limit are enforced per vCPU as token buckets in cycles: a limited vCPU earns
/// <c>limit% × round</c> of allowance each round (at most ten rounds' worth, so that it cannot burst after idling) and
/// is not eligible while its allowance is used up; a reserved vCPU that is runnable is owed <c>reservation% × round</c> each round (at most a
/// 100 ms period's worth, and nothing while it sleeps: a reservation is not banked), and a vCPU owed a whole round goes
/// before every share-based choice. Admission control keeps the sum of reservations within the host's CPUs, so all
/// of them can be met.</para>
/// <para>Known simplification: with several host CPUs a vCPU whose weight entitles it to more than one CPU gets one
/// (SFQ's infeasible-weight problem, addressed by surplus fair scheduling, Chandra et al., OSDI'00); the bench runs
/// on one host CPU where the problem cannot arise.</para></summary>
public sealed class ProportionalShareScheduler(HostClock clock, int hostCpus) : VcpuScheduler(clock, hostCpus)
{
    private readonly long period = clock.Cycles(100);
    private readonly List<ScheduledVcpu> candidates = [];

    /// <inheritdoc/>
    public override string Name => "share";

    /// <summary>The period over which reservations and limits hold.</summary>
    public long PeriodCycles => period;

    /// <inheritdoc/>
    protected override void Added(ScheduledVcpu vcpu)
    {
        vcpu.StartTag = vcpu.FinishTag = SystemVirtualTime(vcpu);
        vcpu.LimitAllowance = 0;
    }

    /// <inheritdoc/>
    public override void Woke(ScheduledVcpu vcpu, long now) => vcpu.StartTag = Math.Max(vcpu.FinishTag, SystemVirtualTime(vcpu));

    // SFQ's v(t): the start tag of the work in service; with several CPUs the smallest start tag of the runnable.
    private double SystemVirtualTime(ScheduledVcpu except)
    {
        double smallest = double.MaxValue, largestFinish = 0;
        foreach (var v in Vcpus)
        {
            if (v == except)
            {
                continue;
            }
            largestFinish = Math.Max(largestFinish, v.FinishTag);
            if (v.IsRunnable)
            {
                smallest = Math.Min(smallest, v.StartTag);
            }
        }
        // No one runnable: the server is idle, and v(t) is the largest finish tag served so far.
        return smallest == double.MaxValue ? largestFinish : smallest;
    }

    /// <inheritdoc/>
    public override void Assign(long now, ScheduledVcpu?[] hostCpus)
    {
        candidates.Clear();
        MarkCoStopped();
        foreach (var v in Vcpus)
        {
            if (!v.IsRunnable || v.CoStopped)
            {
                continue;
            }
            if (v.LimitShare is not null && v.LimitAllowance <= 0)
            {
                v.ThrottledRounds++;
                continue;
            }
            candidates.Add(v);
        }
        candidates.Sort((a, b) =>
        {
            // A vCPU owed a whole round of its reservation first (the most owed first), then by start tag.
            bool aOwed = a.ReservationOwed >= RoundCycles, bOwed = b.ReservationOwed >= RoundCycles;
            if (aOwed != bOwed)
            {
                return aOwed ? -1 : 1;
            }
            int c = aOwed ? b.ReservationOwed.CompareTo(a.ReservationOwed) : a.StartTag.CompareTo(b.StartTag);
            return c != 0 ? c : ByOrder(a, b);
        });
        for (int i = 0; i < hostCpus.Length; i++)
        {
            hostCpus[i] = i < candidates.Count ? candidates[i] : null;
        }
    }

    /// <inheritdoc/>
    public override void Ran(ScheduledVcpu vcpu, long cycles, long now)
    {
        vcpu.FinishTag = vcpu.StartTag + cycles / Math.Max(vcpu.WeightShare, 1e-9);
        vcpu.StartTag = vcpu.FinishTag;
        vcpu.LimitAllowance -= cycles;
        vcpu.ReservationOwed -= cycles;
    }

    /// <inheritdoc/>
    public override void RoundEnded(long now)
    {
        foreach (var v in Vcpus)
        {
            if (v.LimitShare is { } limit)
            {
                // A shallow bucket (ten rounds' worth): after an idle spell a limited vCPU may not burst far above its limit.
                v.LimitAllowance = Math.Min(v.LimitAllowance + limit / 100 * RoundCycles, limit / 100 * RoundCycles * 10);
            }
            double reservation = v.ReservationShare / 100;
            v.ReservationOwed = v.IsRunnable && reservation > 0
                ? Math.Min(v.ReservationOwed + reservation * RoundCycles, reservation * period)
                : Math.Min(v.ReservationOwed, 0);
        }
    }

    /// <inheritdoc/>
    public override IEnumerable<EngineCounter> CountersOf(ScheduledVcpu vcpu)
    {
        yield return new EngineCounter("sfq_finish_tag", (ulong)Math.Max(0, vcpu.FinishTag), "virtual cycles");
        yield return new EngineCounter("limit_throttled_rounds", (ulong)vcpu.ThrottledRounds, "rounds");
        yield return new EngineCounter("costop_rounds", (ulong)vcpu.CoStopRounds, "rounds");
    }
}
