using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Techniques.BinaryTranslation;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Hypervisor.Techniques.Paravirtual;
using Nestor.Hypervisor.Techniques.TrapAndEmulate;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques;

/// <summary>One way of virtualizing the CPU: the execution controls the technique needs and the exits it handles. What
/// every technique shares lives here: the dispatch of an exit to its handler and its reason for the VM's exit
/// statistics, interrupt injection, CPUID (which exits unconditionally in non-root operation, Intel SDM Vol. 3C
/// §26.1.2) and handing the memory virtualization its exits (page faults, CR writes, INVLPG, EPT violations).</summary>
public abstract class VirtualizationTechnique
{
    /// <param name="vmcs">The VMCS whose controls the technique sets and whose interrupt-window control it drives.</param>
    /// <param name="memory">How the guest's memory is virtualized.</param>
    protected VirtualizationTechnique(VmControlStructure vmcs, IMemoryVirtualization memory)
    {
        Vmcs = vmcs;
        Memory = memory;
    }

    /// <summary>Builds the class for <paramref name="technique"/> (not <see cref="Technique.Native"/>, which has no VMM),
    /// after checking the combination against <see cref="TechniqueRules"/>.</summary>
    public static VirtualizationTechnique Create(Technique technique, Vm vm, VmControlStructure vmcs, IMemoryVirtualization memory,
        GuestPhysicalMap physicalMap)
    {
        if (TechniqueRules.Check(new TechniqueChoice(technique, memory.Kind)) is { } violation)
        {
            throw new ArgumentException(violation.Message);
        }
        VirtualizationTechnique created = technique switch
        {
            Technique.HardwareAssist => new HardwareAssistTechnique(vmcs, memory),
            Technique.TrapAndEmulate => new TrapAndEmulateTechnique(vmcs, memory),
            Technique.BinaryTranslation => new BinaryTranslationTechnique(vmcs, memory),
            Technique.Paravirtual => new ParavirtualTechnique(vm, vmcs, memory, physicalMap),
            _ => throw new ArgumentException($"technique {technique} has no VMM", nameof(technique)),
        };
        created.splitDriver = vm.SplitDriver;
        return created;
    }

    // The VM's side of a service VM's split driver, whose hypercalls every technique serves (VMCALL exits whatever
    // the technique: SDM Vol. 3C §26.1.2), or null.
    private ServiceVm.SplitDriverDomain? splitDriver;

    /// <summary>Which technique this is.</summary>
    public abstract Technique Kind { get; }

    /// <summary>The VMCS the technique configures.</summary>
    protected VmControlStructure Vmcs { get; }

    /// <summary>The memory virtualization the technique hands its exits to.</summary>
    public IMemoryVirtualization Memory { get; }

    /// <summary>How the guest kernel is deprivileged (software techniques), else null.</summary>
    public virtual RingCompression? RingCompression => null;

    /// <summary>Sets the execution controls of the technique. Every technique takes external interrupts first: under
    /// hardware assistance through the pin-based control (SDM Vol. 3C §25.6.1); under the software techniques the VMM's
    /// own IDT is the real one, so an interrupt reaches the VMM first as well (the same control stands for that).</summary>
    public virtual void Configure(ExecutionControls controls) => controls.ExternalInterruptExiting = true;

    /// <summary>Handles one exit: the action for the CPU, and the reason to record in the VM's exit statistics (null for
    /// an exit recorded elsewhere, such as port I/O, which the device bus records by port).</summary>
    public VmExitAction Handle(Cpu cpu, ref VmExit exit, out VmExitReason? reason)
    {
        switch (exit.Reason)
        {
            case ExitReason.EptViolation:
                reason = VmExitReason.NestedPageFault;
                return Memory.NestedPageFault(cpu, ref exit);
            case ExitReason.Cpuid:
                reason = VmExitReason.Cpuid;
                return VmExitAction.Complete; // the CPU completes it against the VM's CPUID model
            case ExitReason.ExternalInterrupt:
                reason = VmExitReason.ExternalInterrupt;
                return InterruptExit(cpu, ref exit);
            case ExitReason.InterruptWindow:
                reason = VmExitReason.InterruptWindow;
                return InterruptExit(cpu, ref exit);
            case ExitReason.ExceptionOrNmi:
                reason = VmExitReason.Exception;
                return Exception(cpu, ref exit);
            case ExitReason.ControlRegisterAccess:
                {
                    // Exit qualification for control-register accesses (SDM Vol. 3C §28.2.1, Table 28-3): bits 3:0 the
                    // register, 5:4 the access type (0 = MOV to CR), 11:8 the general-purpose register.
                    int controlRegister = (int)(exit.Qualification & 15);
                    bool load = ((exit.Qualification >> 4) & 3) == 0;
                    if (load)
                    {
                        Memory.ControlRegisterWrite(cpu, controlRegister, cpu.Registers[(int)((exit.Qualification >> 8) & 15)]);
                    }
                    reason = VmExitReason.ControlRegisterAccess;
                    return VmExitAction.Complete;
                }
            case ExitReason.Invlpg:
                Memory.Invalidate(exit.Qualification);
                reason = VmExitReason.Invlpg;
                return VmExitAction.Complete;
            case ExitReason.Vmcall when splitDriver is not null && ServiceVm.SplitDriverDomain.IsSplitDriverCall(cpu.Registers[0]):
                // The split driver's hypercalls (docs/paravirt.md), before the technique's own VMCALL handling.
                reason = VmExitReason.Hypercall;
                cpu.Registers[0] = splitDriver.Call(cpu, (ServiceVm.SplitDriverHypercall)cpu.Registers[0], cpu.Registers[7], cpu.Registers[6]);
                cpu.Rip += (ulong)exit.InstructionLength;
                return VmExitAction.Skip;
            case ExitReason.Invpcid:
                // Shadows stay coherent through write protection; the TLB flush is the instruction's own.
                reason = VmExitReason.Invpcid;
                return VmExitAction.Complete;
            default:
                return Other(cpu, ref exit, out reason);
        }
    }

    /// <summary>An exception exit (a vector in the exception bitmap). By default a page fault goes to the memory
    /// virtualization and anything else is the guest's own, injected back.</summary>
    protected virtual VmExitAction Exception(Cpu cpu, ref VmExit exit) =>
        exit.Vector == Machine.Architecture.ExceptionVector.PageFault ? Memory.PageFault(cpu, ref exit) : VmExitAction.Inject;

    /// <summary>An exit the shared dispatch leaves to the technique (HLT, I/O, MSRs, VMCALL, translator callouts...); by
    /// default completed and counted as "other".</summary>
    protected virtual VmExitAction Other(Cpu cpu, ref VmExit exit, out VmExitReason? reason)
    {
        reason = VmExitReason.Other;
        return VmExitAction.Complete;
    }

    /// <summary>External interrupts the VMM injected into the guest.</summary>
    public long InjectedInterrupts { get; private set; }

    /// <summary>Times the VMM held an interrupt because the guest could not take it, and asked for the window.</summary>
    public long InterruptWindowsRequested { get; private set; }

    /// <summary>True while the VMM holds an interrupt the guest cannot take yet (its virtual IF clear, or an STI
    /// shadow): the "pending" flag of Xen's event channels.</summary>
    public bool InterruptPending => Vmcs.Controls.InterruptWindowExiting;

    /// <summary>An external-interrupt or interrupt-window exit. Under hardware assistance the guest can take the interrupt
    /// when its RFLAGS.IF is set and no STI blocks it (SDM Vol. 3C §26.7.5); under the software techniques the same
    /// test is on the guest kernel's virtual IF, which the VMM keeps in the guest's RFLAGS: CLI, STI and POPF of the
    /// ring-1 kernel trap and are emulated on it, binary translation turns them into callouts, and a paravirtual kernel
    /// sets it by hypercall (SET_INTERRUPTS). If the guest can take it, the VMM accepts the highest interrupt from the
    /// local APIC and injects it through the VM-entry interruption-information field (§26.6: type external interrupt);
    /// otherwise it asks for an interrupt window and the interrupt stays requested.</summary>
    private VmExitAction InterruptExit(Cpu cpu, ref VmExit exit)
    {
        var controls = Vmcs.Controls;
        controls.InterruptWindowExiting = false;
        if (!cpu.Apic.CanDeliver)
        {
            return VmExitAction.Resume; // taken back meanwhile (the TPR rose): the next request exits again
        }
        if (!cpu.InterruptWindowOpen)
        {
            controls.InterruptWindowExiting = true;
            InterruptWindowsRequested++;
            cpu.InterruptStateChanged();
            return VmExitAction.Resume;
        }
        exit.Vector = (Machine.Architecture.ExceptionVector)cpu.Apic.Accept();
        exit.ExternalInterrupt = true;
        exit.HasErrorCode = false;
        exit.ErrorCode = 0;
        InjectedInterrupts++;
        return VmExitAction.Inject;
    }
}
