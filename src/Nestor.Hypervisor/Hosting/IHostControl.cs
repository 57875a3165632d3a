namespace Nestor.Hypervisor.Hosting;

/// <summary>Where a hosted VM is in its life (Firecracker's instance states, plus the ones a host of many VMs needs).</summary>
public enum HostedVmState
{
    /// <summary>Admitted, not yet started.</summary>
    Created,

    /// <summary>Its vCPUs are runnable: the scheduler gives them host CPU time.</summary>
    Running,

    /// <summary>Paused by the control API: descheduled, its state kept, its virtual time stopped.</summary>
    Paused,

    /// <summary>Ended: the guest exited, faulted, timed out or was stopped; <see cref="HostedVmInfo.Outcome"/> says how.</summary>
    Stopped,

    /// <summary>Refused at power-on by admission control; <see cref="HostedVmInfo.Outcome"/> names the shortfall.</summary>
    Refused,
}

/// <summary>ESX's three CPU controls (Waldspurger OSDI'02 §6; the ESX resource-management guide): a reservation is
/// guaranteed, a limit is never exceeded, shares divide what is left in proportion. Under Xen's credit scheduler
/// <see cref="Shares"/> is the weight (256 by default) and <see cref="LimitPercent"/> the cap.</summary>
/// <param name="Shares">Relative weight, at least 1.</param>
/// <param name="ReservationPercent">Guaranteed share of one host CPU, in percent (0 = none).</param>
/// <param name="LimitPercent">Most it may have of one host CPU, in percent per vCPU sum (null = unlimited).</param>
public sealed record CpuControls(int Shares, double ReservationPercent, double? LimitPercent);

/// <summary>The memory controls of the same guide: <see cref="MinBytes"/> is reserved (backed by host memory at
/// admission), <see cref="MaxBytes"/> is what the guest sees, shares weigh reclamation.</summary>
public sealed record MemoryControls(ulong MinBytes, ulong MaxBytes, int Shares);

/// <summary>A hosted VM as the control API and <c>nestor host top</c> show it: a value, read at one moment.</summary>
/// <param name="Name">The VM's name, unique on the host.</param>
/// <param name="State">Where it is in its life.</param>
/// <param name="Technique">Its virtualization technique as the CLI spells it (<c>hw</c>, <c>pv</c>, ...).</param>
/// <param name="VcpuCount">How many vCPUs it has.</param>
/// <param name="Cpu">Its CPU controls now.</param>
/// <param name="Memory">Its memory controls now.</param>
/// <param name="Outcome">How it ended or why it was refused (null while it runs).</param>
/// <param name="Counters">Its counters at this moment: run and ready time, exits, instructions, memory allocated,
/// steal time and the scheduler's own, each with its unit (the same names as the run report).</param>
public sealed record HostedVmInfo(string Name, HostedVmState State, string Technique, int VcpuCount, CpuControls Cpu,
    MemoryControls Memory, string? Outcome, IReadOnlyList<Engines.EngineCounter> Counters)
{
    /// <summary>Each vCPU's own counters (index = vCPU), for a VM with several; empty for a one-vCPU VM, whose
    /// <see cref="Counters"/> are its vCPU's.</summary>
    public IReadOnlyList<IReadOnlyList<Engines.EngineCounter>> VcpuCounters { get; init; } = [];
}

/// <summary>What a host of many VMs lets its operator do while it runs: the actions of the control API (Firecracker's
/// REST shape on a Unix socket) and of <c>nestor host ctl</c>, one implementation for both. Every method is safe to
/// call from any thread while the host runs; an unknown VM name or a value out of range is a
/// <see cref="Errors.BadInputException"/> naming it; an action the VM's state forbids (resume a running VM, pause a
/// stopped one) is an <see cref="InvalidOperationException"/> saying its state.</summary>
public interface IHostControl
{
    /// <summary>Every VM on the host, in the order configured.</summary>
    IReadOnlyList<HostedVmInfo> List();

    /// <summary>One VM.</summary>
    HostedVmInfo Get(string name);

    /// <summary>Deschedules a running VM; its state is kept and its virtual time stops.</summary>
    void Pause(string name);

    /// <summary>Makes a paused VM runnable again.</summary>
    void Resume(string name);

    /// <summary>Ends a VM (running or paused); its outcome says it was stopped by the operator.</summary>
    void Stop(string name);

    /// <summary>Changes a VM's CPU controls; the scheduler uses them from its next decision.</summary>
    void SetCpu(string name, CpuControls controls);

    /// <summary>Saves a running or paused VM to a snapshot file (and its RAM to a memory file if
    /// <see cref="SnapshotRequest.MemoryPath"/> is given): pauses it, saves it, and resumes it unless it was paused or
    /// asked to stay paused (ControlApi/HostSnapshots.cs).</summary>
    /// <remarks>A host that cannot save its VMs (a test double) refuses it as an action its state forbids.</remarks>
    SnapshotTaken Snapshot(string name, SnapshotRequest request) =>
        throw new InvalidOperationException($"this host does not take snapshots of its VMs ('{name}')");

    /// <summary>What the host has and has handed out: host CPUs, memory, swap, admitted reservations, the scheduler.</summary>
    IReadOnlyList<Engines.EngineCounter> HostCounters();

    /// <summary>A VM's balloon: its target, what the driver holds, the guest's statistics. A VM without a balloon is
    /// an <see cref="InvalidOperationException"/> saying how to give it one.</summary>
    BalloonInfo Balloon(string name) => throw new InvalidOperationException($"this host has no balloons (VM '{name}')");

    /// <summary>Sets a VM's balloon target by hand (a multiple of 4 KiB, at most its memory): the host's own target for
    /// it is never below it from now on (0 gives the VM back to the host's policy alone).</summary>
    void SetBalloon(string name, ulong targetBytes) => throw new InvalidOperationException($"this host has no balloons (VM '{name}')");
}

/// <summary>A VM's balloon as the control API shows it (<c>GET /vms/NAME/balloon</c>).</summary>
/// <param name="Name">The VM.</param>
/// <param name="TargetBytes">The target now (<c>num_pages</c> × 4 KiB): what the guest is asked to give up.</param>
/// <param name="TargetPages">The same in pages.</param>
/// <param name="ActualPages">What the driver says it holds (<c>actual</c>).</param>
/// <param name="InflatedPages">PFNs in the balloon now, as the device counted them.</param>
/// <param name="PagesInflated">Inflated so far.</param>
/// <param name="PagesDeflated">Deflated so far.</param>
/// <param name="BytesReturned">Bytes of inflated pages that were resident when the host discarded them.</param>
/// <param name="RefusedPfns">PFNs the device refused.</param>
/// <param name="SetByOperator">Whether an operator's target is in force.</param>
/// <param name="AllocationTargetBytes">The memory the host's policy lets the VM keep.</param>
/// <param name="HeldBytes">Host memory behind its guest pages at the last round.</param>
/// <param name="Statistics">The guest's last statistics (virtio 1.2 §5.5.6.3), by tag.</param>
public sealed record BalloonInfo(string Name, ulong TargetBytes, uint TargetPages, uint ActualPages, long InflatedPages, long PagesInflated,
    long PagesDeflated, long BytesReturned, long RefusedPfns, bool SetByOperator, ulong AllocationTargetBytes, ulong HeldBytes,
    IReadOnlyDictionary<string, ulong> Statistics);
