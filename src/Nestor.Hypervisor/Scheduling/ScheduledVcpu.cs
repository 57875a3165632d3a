using Nestor.Hypervisor.Hosting;

namespace Nestor.Hypervisor.Scheduling;

/// <summary>Where a vCPU is for the scheduler.</summary>
public enum VcpuRunState
{
    /// <summary>It wants a host CPU: running or ready.</summary>
    Runnable,

    /// <summary>Its guest idles in HLT until <see cref="ScheduledVcpu.WakeAt"/> (host virtual time).</summary>
    Blocked,

    /// <summary>Paused by the operator: never picked.</summary>
    Paused,

    /// <summary>Its VM ended.</summary>
    Done,
}

/// <summary>One vCPU as the host's schedulers see it: its controls, where it is, and what it got, all in host
/// virtual time (cycles of the software machine's clock, <see cref="HostClock"/>). The scheduler-private fields are
/// each scheduler's own bookkeeping; only the host's dispatch thread touches them.</summary>
public sealed class ScheduledVcpu
{
    /// <param name="name">Its VM's name, with the vCPU index when the VM has several.</param>
    /// <param name="order">Its place in the host's configuration: ties go to the earlier one, so that a run is
    /// reproducible.</param>
    /// <param name="controls">Its VM's CPU controls, which are the VM's as a whole: ESX's shares, reservation and
    /// limit, and Xen's weight and cap, are a VM's (a domain's), split equally over its vCPUs
    /// (<see cref="WeightShare"/>, <see cref="ReservationShare"/>, <see cref="LimitShare"/>).</param>
    /// <param name="vcpusOfVm">How many vCPUs its VM has.</param>
    /// <param name="index">Its index among them.</param>
    public ScheduledVcpu(string name, int order, CpuControls controls, int vcpusOfVm = 1, int index = 0)
    {
        Name = name;
        Order = order;
        Controls = controls;
        VcpusOfVm = vcpusOfVm;
        Index = index;
        Siblings = [this];
    }

    /// <summary>The <paramref name="vcpus"/> vCPUs of one VM, named <c>vm</c> when it has one and <c>vm/0</c>,
    /// <c>vm/1</c>, ... when it has several, each knowing the others (<see cref="Siblings"/>: co-scheduling).</summary>
    public static IReadOnlyList<ScheduledVcpu> ForVm(string vmName, int order, CpuControls controls, int vcpus)
    {
        if (vcpus < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(vcpus), vcpus, "a VM has at least one vCPU");
        }
        var list = new ScheduledVcpu[vcpus];
        for (int i = 0; i < vcpus; i++)
        {
            list[i] = new ScheduledVcpu(vcpus == 1 ? vmName : $"{vmName}/{i}", order, controls, vcpus, i);
        }
        foreach (var v in list)
        {
            v.Siblings = list;
        }
        return list;
    }

    /// <summary>Its index among its VM's vCPUs.</summary>
    public int Index { get; }

    /// <summary>Its VM's vCPUs, itself included, in index order.</summary>
    public IReadOnlyList<ScheduledVcpu> Siblings { get; private set; }

    /// <summary>Its name in reports.</summary>
    public string Name { get; }

    /// <summary>Its place in the configuration (ties go to the lower).</summary>
    public int Order { get; }

    /// <summary>Its VM's CPU controls; the operator may change them while the host runs (read at each decision).</summary>
    public CpuControls Controls { get; set; }

    /// <summary>How many vCPUs its VM has.</summary>
    public int VcpusOfVm { get; }

    /// <summary>This vCPU's part of its VM's shares (ESX) or weight (Xen).</summary>
    public double WeightShare => (double)Controls.Shares / VcpusOfVm;

    /// <summary>This vCPU's part of its VM's reservation, in percent of one host CPU.</summary>
    public double ReservationShare => Controls.ReservationPercent / VcpusOfVm;

    /// <summary>This vCPU's part of its VM's limit (ESX) or cap (Xen), in percent of one host CPU; null: none.</summary>
    public double? LimitShare => Controls.LimitPercent / VcpusOfVm;

    /// <summary>Held back from the current round by relaxed co-scheduling: it is ahead of a runnable sibling by more
    /// than <see cref="VcpuScheduler.CoStopSkewCycles"/> (ESX's co-stop).</summary>
    public bool CoStopped { get; internal set; }

    /// <summary>Rounds it was co-stopped (ESX's %CSTP, in rounds).</summary>
    public long CoStopRounds { get; set; }

    /// <summary>Where it is now.</summary>
    public VcpuRunState State { get; set; } = VcpuRunState.Runnable;

    /// <summary>While blocked: the host time at which its guest's timer wakes it.</summary>
    public long WakeAt { get; set; }

    /// <summary>The host time since which it has been runnable and waiting (ready), or -1 while it runs or sleeps.</summary>
    public long ReadySince { get; set; }

    /// <summary>Cycles it ran on a host CPU (busy: instructions retired).</summary>
    public long RunCycles { get; set; }

    /// <summary>Cycles it was runnable but waiting for a host CPU: its ready time, which is also its steal time.</summary>
    public long ReadyCycles { get; set; }

    /// <summary>Cycles its guest spent idle in HLT.</summary>
    public long IdleCycles { get; set; }

    /// <summary>Times it was put on a host CPU after waiting.</summary>
    public long Dispatches { get; set; }

    /// <summary>Times its guest woke from HLT.</summary>
    public long Wakeups { get; set; }

    /// <summary>Sum of the delays from a wake-up to being on a host CPU (cycles).</summary>
    public long WakeLatencyCycles { get; set; }

    /// <summary>The longest of those delays (cycles).</summary>
    public long MaximumWakeLatencyCycles { get; set; }

    /// <summary>Rounds in which it was runnable and kept off a host CPU by its limit or cap.</summary>
    public long ThrottledRounds { get; set; }

    /// <summary>The vCPU's own clock (its TSC) when it last stopped.</summary>
    public long GuestClock { get; set; }

    /// <summary>Whether it was on a host CPU in the last round.</summary>
    public bool RanLastRound { get; set; }

    /// <summary>Times it moved to another host CPU's run queue (the credit scheduler's load balancing stole it).</summary>
    public long Migrations { get; set; }

    /// <summary>True when it may run now by state.</summary>
    public bool IsRunnable => State == VcpuRunState.Runnable;

    // --- proportional share (ProportionalShareScheduler) ---
    internal double StartTag;
    internal double FinishTag;
    internal double LimitAllowance;
    internal double ReservationOwed;

    // --- credit (CreditScheduler) ---
    internal double Credit;
    internal CreditPriority Priority = CreditPriority.Under;
    internal long SliceLeft;
    internal bool Parked;
    internal long QueueStamp;
    internal int Processor = -1;   // the host CPU whose run queue it is on, or last ran on (Xen's v->processor)
    internal bool Queued;
}
