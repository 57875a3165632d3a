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
/// (<see cref="IMemoryVirtualization"/>: shadow or nested paging), installs their controls in a VMCS per vCPU, and
/// hands every exit to the technique, accounting for its handling time in the VM's exit statistics. For the software
/// techniques an "exit" is a trap into the VMM: the CPU model's execution controls and exit handler stand for the VMM
/// owning the real IDT.
/// Several vCPUs (<see cref="AddVcpu"/>): each has its own VMCS (Intel SDM Vol. 3C §25.1: a VMCS per logical processor
/// the VMM runs a vCPU on, with its own controls and exit information) and its own instance of the technique (the
/// interrupt it is injecting, its interrupt window, its counters), while the memory virtualization is the VM's, one
/// for all (one nested page table; each vCPU's MMU keeps its own nested TLB and page-walk cache, shot down together).
/// An exit is handed to the context of the vCPU that took it, found by its <see cref="Cpu"/>.</summary>
public sealed class VirtualMachineMonitor : IVmExitHandler
{
    private readonly Vm vm;
    private readonly GuestPhysicalMap? physicalMap; // for the technique of a vCPU added later (paravirtualization reads the P2M)
    private readonly List<VcpuVirtualization> vcpus = [];

    /// <summary>A VMM with <paramref name="technique"/> and <paramref name="memory"/>, whose controls are set in
    /// <paramref name="vmcs"/>, the VMCS of vCPU 0.</summary>
    public VirtualMachineMonitor(Vm vm, VmControlStructure vmcs, VirtualizationTechnique technique, IMemoryVirtualization memory)
        : this(vm, vmcs, technique, memory, null)
    {
    }

    private VirtualMachineMonitor(Vm vm, VmControlStructure vmcs, VirtualizationTechnique technique, IMemoryVirtualization memory,
        GuestPhysicalMap? physicalMap)
    {
        if (!ReferenceEquals(technique.Memory, memory))
        {
            throw new ArgumentException("the technique must hand its exits to the VMM's memory virtualization", nameof(technique));
        }
        TechniqueRules.Validate(new TechniqueChoice(technique.Kind, memory.Kind));
        this.vm = vm;
        this.physicalMap = physicalMap;
        Memory = memory;
        Install(vmcs, technique);
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
        return new VirtualMachineMonitor(vm, vmcs, VirtualizationTechnique.Create(technique, vm, vmcs, memory, physicalMap), memory, physicalMap);
    }

    private void Install(VmControlStructure vmcs, VirtualizationTechnique technique)
    {
        technique.Configure(vmcs.Controls);
        Memory.Configure(vmcs.Controls, hardwareAssisted: technique.Kind == Technique.HardwareAssist);
        vcpus.Add(new VcpuVirtualization(vmcs, technique));
    }

    /// <summary>Adds the next vCPU (index <see cref="VcpuCount"/>): its own VMCS, with the controls of the technique and
    /// of the shared memory virtualization, and its own instance of the technique. Only where
    /// <see cref="TechniqueRules.AllowsSeveralVcpus(Technique, MemoryVirtualization?)"/> allows it.</summary>
    /// <returns>The new vCPU's VMCS.</returns>
    public VmControlStructure AddVcpu()
    {
        if (TechniqueRules.SeveralVcpusRefusal(Technique, Memory.Kind) is { } refusal)
        {
            throw new InvalidOperationException($"{refusal.Message}. {refusal.Hint}.");
        }
        if (physicalMap is null)
        {
            throw new InvalidOperationException("a VMM built around one technique instance has one vCPU: build it with Create to add more");
        }
        var vmcs = new VmControlStructure();
        Install(vmcs, VirtualizationTechnique.Create(Technique, vm, vmcs, Memory, physicalMap));
        return vmcs;
    }

    /// <summary>The vCPUs this VMM virtualizes.</summary>
    public int VcpuCount => vcpus.Count;

    /// <summary>Each vCPU's VMCS, by vCPU index.</summary>
    public IReadOnlyList<VmControlStructure> ControlStructures => vcpus.ConvertAll(v => v.Vmcs);

    /// <summary>The VMCS of vCPU <paramref name="index"/>.</summary>
    public VmControlStructure ControlStructure(int index) => vcpus[index].Vmcs;

    /// <summary>The technique's instance of vCPU <paramref name="index"/>.</summary>
    public VirtualizationTechnique TechniqueOf(int index) => vcpus[index].Technique;

    /// <summary>Exits of every vCPU together by basic reason, most frequent first, reasons that never happened left out
    /// (with one vCPU, its VMCS's <see cref="VmControlStructure.ExitsByReason"/>).</summary>
    public IReadOnlyList<(ExitReason Reason, long Count)> ExitsByReason =>
        vcpus.Count == 1
            ? vcpus[0].Vmcs.ExitsByReason
            : Enum.GetValues<ExitReason>().Select(r => (r, vcpus.Sum(v => v.Vmcs.Exits(r)))).Where(e => e.Item2 > 0)
                .OrderByDescending(e => e.Item2).ToList();

    /// <summary>Exits of every vCPU together.</summary>
    public long TotalExits
    {
        get
        {
            long total = 0;
            foreach (var vcpu in vcpus)
            {
                total += vcpu.Vmcs.TotalExits;
            }
            return total;
        }
    }

    /// <summary>The technique this VMM uses.</summary>
    public Technique Technique => CpuVirtualization.Kind;

    /// <summary>The technique's implementation (vCPU 0's instance): its controls and exit handling.</summary>
    public VirtualizationTechnique CpuVirtualization => vcpus[0].Technique;

    /// <summary>The memory virtualization, the VM's for all its vCPUs: shadow or nested paging.</summary>
    public IMemoryVirtualization Memory { get; }

    /// <summary>How the guest kernel is deprivileged (software techniques), else null.</summary>
    public RingCompression? RingCompression => CpuVirtualization.RingCompression;

    /// <summary>Privileged instructions of the ring-1 kernel that trapped and were emulated (trap-and-emulate, and
    /// what still traps under binary translation and paravirtualization).</summary>
    public long PrivilegedInstructionTraps => (CpuVirtualization as TrapAndEmulateTechnique)?.PrivilegedInstructionTraps ?? 0;

    /// <summary>vCPU 0's VMCS (the only one with one vCPU).</summary>
    public VmControlStructure Vmcs => vcpus[0].Vmcs;

    /// <summary>Shadow paging's counters, when it is in use.</summary>
    public ShadowPaging? Shadow => Memory.Shadow;

    /// <summary>Why the VMM stopped the guest, when it did.</summary>
    public string? StopMessage { get; private set; }

    /// <summary>External interrupts the VMM injected into the guest, on every vCPU.</summary>
    public long InjectedInterrupts => vcpus.Sum(v => v.Technique.InjectedInterrupts);

    /// <summary>Times the VMM held an interrupt because the guest could not take it, and asked for the window, on every
    /// vCPU.</summary>
    public long InterruptWindowsRequested => vcpus.Sum(v => v.Technique.InterruptWindowsRequested);

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

    /// <summary>VM entry of vCPU 0: the CPU enters non-root operation under this VMM's controls (with the shadow of the
    /// guest's address space installed, under shadow paging).</summary>
    public void Enter(Cpu cpu) => Enter(cpu, 0);

    /// <summary>VM entry of vCPU <paramref name="index"/> on <paramref name="cpu"/>, under that vCPU's VMCS; its exits
    /// come back to that vCPU's context.</summary>
    public void Enter(Cpu cpu, int index)
    {
        var vcpu = vcpus[index];
        vcpu.Cpu = cpu;
        cpu.EnterNonRoot(vcpu.Vmcs.Controls, this);
        cpu.RingCompression = vcpu.Technique.RingCompression;
        Memory.Activate(cpu);
    }

    /// <summary>The VMCS of the vCPU running on <paramref name="cpu"/> (vCPU 0's when it entered none).</summary>
    public VmControlStructure ControlStructureOf(Cpu cpu) => ContextOf(cpu).Vmcs;

    // The context of the vCPU on this CPU: a scan of a few references, no allocation (the exit path).
    private VcpuVirtualization ContextOf(Cpu cpu)
    {
        for (int i = 1; i < vcpus.Count; i++)
        {
            if (ReferenceEquals(vcpus[i].Cpu, cpu))
            {
                return vcpus[i];
            }
        }
        return vcpus[0];
    }

    /// <summary>Handles one exit through the technique of the vCPU that took it; an exit the VMM cannot handle stops
    /// the guest (<see cref="StopMessage"/> says why).</summary>
    public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
    {
        try
        {
            long start = Stopwatch.GetTimestamp();
            var vcpu = ContextOf(cpu);
            vcpu.Vmcs.Record(exit);
            var action = vcpu.Technique.Handle(cpu, ref exit, out var reason);
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

    // What the VMM keeps for one vCPU: its VMCS, its technique's instance, and the CPU it entered on.
    private sealed class VcpuVirtualization(VmControlStructure vmcs, VirtualizationTechnique technique)
    {
        public VmControlStructure Vmcs { get; } = vmcs;
        public VirtualizationTechnique Technique { get; } = technique;
        public Cpu? Cpu { get; set; }
    }
}
