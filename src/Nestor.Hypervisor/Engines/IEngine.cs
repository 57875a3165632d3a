using Nestor.Hypervisor.CostModel;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Engines;

/// <summary>A named counter an engine keeps about itself (for KVM: its binary statistics).</summary>
public sealed record EngineCounter(string Name, ulong Value, string Unit);

/// <summary>Runs the vCPUs of a <see cref="Vm"/> and hands every VM exit to the VM's one
/// <see cref="Platform.VmPlatform"/>.</summary>
public interface IEngine
{
    /// <summary>Engine name as the CLI spells it (<c>kvm</c>, <c>sim</c>).</summary>
    string Name { get; }

    /// <summary>How reports describe this engine: where guest time is measured and whose counters these are.</summary>
    EngineDescription Description { get; }

    /// <summary>Runs <paramref name="vm"/> from its current vCPU state until it ends; never throws for guest
    /// behaviour (faults, failures and timeouts are outcomes), only for host problems.</summary>
    RunResult Run(Vm vm, RunControl control);
}

/// <summary>What reports say about an engine.</summary>
/// <param name="GuestTime">What "time running the guest" measures on it (<c>inside KVM_RUN</c>).</param>
/// <param name="CountersHeading">The heading of its counter table.</param>
public sealed record EngineDescription(string GuestTime, string CountersHeading);

/// <summary>Everything a run produced, as values: how it ended, the engine's counters, and on the software machine
/// what it did for the cost model and the objects to inspect after it (the machine as it stopped, the VMCS and the
/// VMM), instead of "last run" properties left on the engine.</summary>
/// <param name="Outcome">How the run ended.</param>
/// <param name="Counters">The engine's own counters for this run.</param>
public sealed record RunResult(VmOutcome Outcome, IReadOnlyList<EngineCounter> Counters)
{
    /// <summary>What the run did, counted for the cost model (software machine only).</summary>
    public MachineEvents? Events { get; init; }

    /// <summary>The software machine's run, for inspection (null on KVM).</summary>
    public SoftwareMachineRun? Machine { get; init; }
}

/// <summary>The software machine after a run, for inspection: its MMU can explain a walk, the VMCS and the VMM say
/// what the technique did. Valid until the engine that ran it, or the VM, is disposed: its memory is theirs.</summary>
/// <param name="Cpu">The machine model as it stopped.</param>
/// <param name="Vmcs">The VMCS under a VMM, else null.</param>
/// <param name="Monitor">The VMM, else null (native).</param>
public sealed record SoftwareMachineRun(Cpu Cpu, VmControlStructure? Vmcs, VirtualMachineMonitor? Monitor);
