using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Hosting;

/// <summary>One VM on a <see cref="VirtualMachineHost"/>: its configuration, its <see cref="Vm"/> and engine once
/// admitted, its vCPU as the scheduler sees it, and how it ended.</summary>
public sealed class HostedVm : IDisposable
{
    internal HostedVm(HostedVmSpec spec, int order)
    {
        Spec = spec;
        Vcpus = ScheduledVcpu.ForVm(spec.Name, order, spec.Cpu, spec.VcpuCount);
        Quanta = [.. Enumerable.Range(0, spec.VcpuCount).Select(_ => new VcpuQuantum())];
    }

    /// <summary>How it was configured.</summary>
    public HostedVmSpec Spec { get; }

    /// <summary>Its name.</summary>
    public string Name => Spec.Name;

    /// <summary>Where it is in its life.</summary>
    public HostedVmState State { get; internal set; } = HostedVmState.Created;

    /// <summary>How it ended, or why it was refused.</summary>
    public string? Outcome { get; internal set; }

    /// <summary>Its vCPUs for the scheduler, each with the VM's controls split over them (index = the vCPU's APIC ID;
    /// vCPU 0 is the bootstrap processor).</summary>
    public IReadOnlyList<ScheduledVcpu> Vcpus { get; }

    /// <summary>Its first vCPU for the scheduler (the bootstrap processor): the VM's controls, and its state as the
    /// VM's (paused, done).</summary>
    public ScheduledVcpu Vcpu => Vcpus[0];

    /// <summary>The VM, once admitted.</summary>
    public Vm? Vm { get; internal set; }

    /// <summary>Its engine, once admitted.</summary>
    public SimEngine? Engine { get; internal set; }

    /// <summary>Its run's result, once it ended.</summary>
    public RunResult? Result { get; internal set; }

    /// <summary>Its serial output.</summary>
    public SerialOutput? Serial { get; internal set; }

    /// <summary>What stops its run.</summary>
    internal RunControl Control { get; } = new();

    /// <summary>Its vCPU thread's hand-over with the host, one per vCPU (index = vCPU).</summary>
    internal IReadOnlyList<VcpuQuantum> Quanta { get; }

    /// <summary>The bootstrap processor's hand-over with the host (a one-vCPU VM's only one).</summary>
    internal VcpuQuantum Quantum => Quanta[0];

    /// <summary>Its engine: a one-vCPU VM's asks its one quantum before each slice; a VM with several asks each
    /// vCPU's round (<see cref="SimEngine.VcpuRounds"/>).</summary>
    internal SimEngine NewEngine() => Quanta.Count == 1
        ? new SimEngine(Spec.Sim) { Quantum = Quantum }
        : new SimEngine(Spec.Sim) { VcpuRounds = Quanta };

    /// <summary>Every vCPU leaves the scheduler's runnable set (paused, or blocked by the memory manager).</summary>
    internal void Deschedule()
    {
        foreach (var v in Vcpus)
        {
            if (v.State is VcpuRunState.Runnable or VcpuRunState.Blocked)
            {
                v.State = VcpuRunState.Paused;
                v.ReadySince = -1;
            }
        }
    }

    /// <summary>Every paused vCPU is runnable again from <paramref name="now"/> (one still halted is found so at its
    /// next round and blocks again).</summary>
    internal void Reschedule(long now, VcpuScheduler scheduler)
    {
        foreach (var v in Vcpus)
        {
            if (v.State == VcpuRunState.Paused)
            {
                v.State = VcpuRunState.Runnable;
                v.ReadySince = now;
                scheduler.Woke(v, now);
            }
        }
    }

    /// <summary>Its run is over: no vCPU runs again.</summary>
    internal void MarkDone()
    {
        foreach (var v in Vcpus)
        {
            v.State = VcpuRunState.Done;
        }
    }

    /// <summary>The host's virtual time (cycles) when its engine returned, to a round (the round it returned in), null
    /// while it runs: the end of the time its vCPUs are accounted for (a vCPU is not blocked after its VM ended).</summary>
    public long? EndedAt { get; internal set; }

    /// <summary>Why the host stopped it (a flood, its run limit, the operator), if it did.</summary>
    internal string? StopCause { get; set; }

    /// <summary>The host ended it as planned: its run limit, or the end of the host's fixed-length run.</summary>
    public bool EndedAsPlanned { get; internal set; }

    internal Thread? Thread { get; set; }

    /// <summary>Its live migration under way or last, if any (Migration/MigrationSource).</summary>
    public Nestor.Hypervisor.Migration.MigrationSource? Migration { get; internal set; }

    /// <summary>What the host's memory manager knows and decided about it (issue 15).</summary>
    public HostedVmMemory Memory { get; } = new();

    /// <summary>Its virtio balloon, once created with one (<see cref="HostedVmSpec.Balloon"/>, and balloons on).</summary>
    public Devices.Virtio.Balloon.VirtioBalloon? Balloon { get; internal set; }

    /// <summary>Host memory backing its guest pages now (ESX's "consumed" memory, before sharing): under a VMM, the
    /// guest pages its P2M has given a host frame (<see cref="Paging.GuestPhysicalMap.TouchedPages"/> × 4 KiB); without
    /// one (native), the pages of its RAM mapping resident in the host (mincore), since the guest touches that mapping
    /// directly. Zero before it is created. A guest that touches little is far below its memory size: RAM is
    /// <c>MAP_NORESERVE</c> and frames are given on first touch.</summary>
    public ulong AllocatedBytes()
    {
        if (Vm is not { } vm)
        {
            return 0;
        }
        if (vm.Host.PhysicalMapOf(vm) is { } map)
        {
            return (ulong)map.TouchedPages * 0x1000;
        }
        if (Spec.Sim.Technique != Techniques.Technique.Native && Quantum.Finished)
        {
            return 0; // under a VMM, its frames went back when its run ended (Memory/Reclamation/HostMemoryManager)
        }
        ulong bytes = 0;
        foreach (var (_, backing) in vm.Memory.Regions)
        {
            bytes += backing.ResidentBytes();
        }
        return bytes;
    }

    /// <summary>The technique as the CLI spells it.</summary>
    public string Technique => Spec.Sim.Technique switch
    {
        Techniques.Technique.HardwareAssist => "hw",
        Techniques.Technique.TrapAndEmulate => "trap",
        Techniques.Technique.BinaryTranslation => "bt",
        Techniques.Technique.Paravirtual => "pv",
        _ => "native",
    };

    /// <summary>The RESULT lines of its serial output.</summary>
    public IReadOnlyList<string> ResultLines => Serial is null ? [] :
        [.. Serial.Text.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal))];

    /// <summary>The guest's debug-exit status, if it gave one.</summary>
    public uint? GuestStatus => Result?.Outcome.GuestStatus ?? Vm?.GuestStatus;

    /// <summary>The outcome kind of its run, if it ran.</summary>
    public VmOutcomeKind? OutcomeKind => Result?.Outcome.Kind;

    /// <inheritdoc/>
    public void Dispose()
    {
        Engine?.Dispose();
        Vm?.Dispose();
        Serial?.Dispose();
        foreach (var quantum in Quanta)
        {
            quantum.Dispose();
        }
        Memory.SwapFile?.Dispose(); // after the VM: its P2M swapped every page back in before giving its frames back
    }
}
