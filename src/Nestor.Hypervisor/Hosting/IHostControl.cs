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
    MemoryControls Memory, string? Outcome, IReadOnlyList<Engines.EngineCounter> Counters);

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
}
