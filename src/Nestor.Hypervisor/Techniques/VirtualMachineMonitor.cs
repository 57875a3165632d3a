using System.Diagnostics;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Techniques.BinaryTranslation;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Hypervisor.Techniques.Paravirtual;
using Nestor.Hypervisor.Techniques.TrapAndEmulate;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques;

/// <summary>How a VMM virtualizes the guest's memory.</summary>
public enum MemoryVirtualization
{
    /// <summary>Shadow page tables the VMM keeps in step with the guest's (Adams &amp; Agesen's hardware VMM).</summary>
    Shadow,
    /// <summary>Nested (extended) page tables walked by the hardware: the 2-D walk.</summary>
    Nested,
}

/// <summary>The VMM: it holds one technique (<see cref="VirtualizationTechnique"/>: hardware assistance,
/// trap-and-emulate, binary translation or paravirtualization) and one memory virtualization
/// (<see cref="IMemoryVirtualization"/>: shadow or nested paging), installs their controls in its VMCS, and hands every
/// exit to the technique, accounting for its handling time in the VM's exit statistics. For the software techniques
/// an "exit" is a trap into the VMM: the CPU model's execution controls and exit handler stand for the VMM owning the
/// real IDT.</summary>
public sealed class VirtualMachineMonitor : IVmExitHandler
{
    private readonly Vm vm;

    /// <summary>A VMM with <paramref name="technique"/> and <paramref name="memory"/>, whose controls are set in
    /// <paramref name="vmcs"/>.</summary>
    public VirtualMachineMonitor(Vm vm, VmControlStructure vmcs, VirtualizationTechnique technique, IMemoryVirtualization memory)
    {
        if (!ReferenceEquals(technique.Memory, memory))
        {
            throw new ArgumentException("the technique must hand its exits to the VMM's memory virtualization", nameof(technique));
        }
        TechniqueRules.Validate(new TechniqueChoice(technique.Kind, memory.Kind));
        this.vm = vm;
        Vmcs = vmcs;
        CpuVirtualization = technique;
        Memory = memory;
        technique.Configure(vmcs.Controls);
        memory.Configure(vmcs.Controls, hardwareAssisted: technique.Kind == Technique.HardwareAssist);
    }

    /// <summary>A VMM for <paramref name="technique"/> over nested paging (<paramref name="nestedTable"/>) or shadow
    /// paging (<paramref name="shadow"/>): exactly one of them.</summary>
    /// <param name="largeNestedPages">Map guest RAM with 2 MiB nested pages where it can (else 4 KiB).</param>
    public static VirtualMachineMonitor Create(Vm vm, VmControlStructure vmcs, GuestPhysicalMap physicalMap, NestedPageTable? nestedTable,
        ShadowPaging? shadow, bool largeNestedPages, Technique technique)
    {
        if ((nestedTable is null) == (shadow is null))
        {
            throw new ArgumentException("a VMM uses either nested or shadow paging");
        }
        IMemoryVirtualization memory = nestedTable is not null
            ? new NestedMemoryVirtualization(nestedTable, physicalMap, largeNestedPages, vm.Bus)
            : new ShadowMemoryVirtualization(shadow!);
        TechniqueRules.Validate(new TechniqueChoice(technique, memory.Kind, NestedPageSizeChosen: largeNestedPages));
        return new VirtualMachineMonitor(vm, vmcs, VirtualizationTechnique.Create(technique, vm, vmcs, memory, physicalMap), memory);
    }

    /// <summary>The technique this VMM uses.</summary>
    public Technique Technique => CpuVirtualization.Kind;

    /// <summary>The technique's implementation: its controls and exit handling.</summary>
    public VirtualizationTechnique CpuVirtualization { get; }

    /// <summary>The memory virtualization: shadow or nested paging.</summary>
    public IMemoryVirtualization Memory { get; }

    /// <summary>How the guest kernel is deprivileged (software techniques), else null.</summary>
    public RingCompression? RingCompression => CpuVirtualization.RingCompression;

    /// <summary>Privileged instructions of the ring-1 kernel that trapped and were emulated (trap-and-emulate, and
    /// what still traps under binary translation and paravirtualization).</summary>
    public long PrivilegedInstructionTraps => (CpuVirtualization as TrapAndEmulateTechnique)?.PrivilegedInstructionTraps ?? 0;

    public VmControlStructure Vmcs { get; }

    /// <summary>Shadow paging's counters, when it is in use.</summary>
    public ShadowPaging? Shadow => Memory.Shadow;

    /// <summary>Why the VMM stopped the guest, when it did.</summary>
    public string? StopMessage { get; private set; }

    /// <summary>External interrupts the VMM injected into the guest.</summary>
    public long InjectedInterrupts => CpuVirtualization.InjectedInterrupts;

    /// <summary>Times the VMM held an interrupt because the guest could not take it, and asked for the window.</summary>
    public long InterruptWindowsRequested => CpuVirtualization.InterruptWindowsRequested;

    /// <summary>True while the VMM holds an interrupt the guest cannot take yet (its virtual IF clear, or an STI
    /// shadow): the "pending" flag of Xen's event channels, which a paravirtual guest reads with
    /// <see cref="Hypercall.EventsPending"/>.</summary>
    public bool InterruptPending => CpuVirtualization.InterruptPending;

    /// <summary>Hypercalls made by a paravirtual guest.</summary>
    public long Hypercalls => (CpuVirtualization as ParavirtualTechnique)?.Hypercalls ?? 0;

    /// <summary>Callouts from translated code that wrote page tables (binary translation).</summary>
    public long Callouts => (CpuVirtualization as BinaryTranslationTechnique)?.Callouts ?? 0;

    /// <summary>Translated instructions turned into callouts because their page-table writes kept trapping.</summary>
    public long Retranslations => (CpuVirtualization as BinaryTranslationTechnique)?.Retranslations ?? 0;

    /// <summary>Adaptive binary translation's state: how often each kernel instruction's page-table writes trapped
    /// (empty under the other techniques).</summary>
    public IReadOnlyDictionary<ulong, int> PageTableWriteTraps =>
        (CpuVirtualization as BinaryTranslationTechnique)?.PageTableWriteTraps ?? EmptyTraps;

    private static readonly IReadOnlyDictionary<ulong, int> EmptyTraps = new Dictionary<ulong, int>();

    /// <summary>Restores <see cref="PageTableWriteTraps"/> from a snapshot; only binary translation has any.</summary>
    public void RestorePageTableWriteTraps(IEnumerable<KeyValuePair<ulong, int>> counts)
    {
        if (CpuVirtualization is BinaryTranslationTechnique translation)
        {
            translation.RestorePageTableWriteTraps(counts);
        }
        else if (counts.Any())
        {
            throw new InvalidOperationException($"page-table write trap counts are binary translation's, and this VMM uses {Technique}");
        }
    }

    /// <summary>VM entry: the CPU enters non-root operation under this VMM's controls (with the shadow of the guest's
    /// address space installed, under shadow paging).</summary>
    public void Enter(Cpu cpu)
    {
        cpu.EnterNonRoot(Vmcs.Controls, this);
        cpu.RingCompression = RingCompression;
        Memory.Activate(cpu);
    }

    /// <summary>Handles one exit through the technique; an exit the VMM cannot handle stops the guest
    /// (<see cref="StopMessage"/> says why).</summary>
    public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
    {
        try
        {
            long start = Stopwatch.GetTimestamp();
            Vmcs.Record(exit);
            var action = CpuVirtualization.Handle(cpu, ref exit, out var reason);
            if (reason is { } recorded)
            {
                vm.Exits.Record(recorded, Stopwatch.GetTimestamp() - start);
            }
            return action;
        }
        catch (Exception e) when (e is ShadowPagingException or InvalidOperationException)
        {
            StopMessage = e.Message;
            return VmExitAction.Stop;
        }
    }
}
