using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.TrapAndEmulate;

/// <summary>Classic trap-and-emulate (Popek &amp; Goldberg, "Formal Requirements for Virtualizable Third Generation
/// Architectures", 1974): the guest kernel runs in ring 1 (<see cref="RingCompression"/>); its privileged instructions
/// raise #GP, which the VMM takes (the #GP bit of the exception bitmap stands for the VMM owning the real IDT) and
/// emulates. The sensitive unprivileged instructions (POPF's IF, SGDT, SMSW, PUSH CS...) are not caught: the expected
/// failure of the technique on x86 (Robin &amp; Irvine, 2000). Binary translation and paravirtualization keep this as
/// their fallback for whatever of the guest kernel still traps.</summary>
public class TrapAndEmulateTechnique : VirtualizationTechnique
{
    /// <param name="vmcs">The VMCS whose controls the technique sets.</param>
    /// <param name="memory">Shadow paging (nested paging is a hardware feature, <see cref="TechniqueRules"/>).</param>
    public TrapAndEmulateTechnique(VmControlStructure vmcs, IMemoryVirtualization memory) : this(vmcs, memory, translated: false)
    {
    }

    /// <param name="vmcs">The VMCS whose controls the technique sets.</param>
    /// <param name="memory">Shadow paging.</param>
    /// <param name="translated">Kernel code runs translated (binary translation).</param>
    protected TrapAndEmulateTechnique(VmControlStructure vmcs, IMemoryVirtualization memory, bool translated) : base(vmcs, memory)
    {
        RingCompression = new RingCompression { Translated = translated };
    }

    /// <inheritdoc/>
    public override Technique Kind => Technique.TrapAndEmulate;

    /// <inheritdoc/>
    public override RingCompression RingCompression { get; }

    /// <summary>Privileged instructions of the ring-1 kernel that trapped and were emulated.</summary>
    public long PrivilegedInstructionTraps { get; private set; }

    /// <inheritdoc/>
    public override void Configure(ExecutionControls controls)
    {
        base.Configure(controls);
        // Ring compression: privileged instructions of the ring-1 kernel raise #GP, which the VMM takes.
        controls.ExceptionBitmap |= 1u << (int)ExceptionVector.GeneralProtection;
    }

    /// <summary>A #GP from the deprivileged kernel (the CPU reports its privilege level as the guest's, 0) is the trap
    /// of trap-and-emulate; any other #GP is the guest's own.</summary>
    protected override VmExitAction Exception(Cpu cpu, ref VmExit exit) =>
        exit.Vector == ExceptionVector.GeneralProtection && cpu.PrivilegeLevel == 0 ? EmulatePrivileged(cpu, ref exit) : base.Exception(cpu, ref exit);

    /// <summary>The VMM emulates the trapped instruction as bare metal would run it at CPL 0 (its emulator is the
    /// interpreter); a page fault the emulation meets is filled through the memory virtualization and the emulation
    /// retried, and an exception the instruction raises at CPL 0 too is the guest's own, injected.</summary>
    private VmExitAction EmulatePrivileged(Cpu cpu, ref VmExit exit)
    {
        PrivilegedInstructionTraps++;
        for (int attempt = 0; attempt < 8; attempt++)
        {
            if (cpu.EmulatePrivileged() is not { } raised)
            {
                return VmExitAction.Skip;
            }
            var fault = new VmExit
            {
                Reason = ExitReason.ExceptionOrNmi,
                Vector = raised.Vector,
                ErrorCode = raised.ErrorCode,
                HasErrorCode = raised.HasErrorCode,
                GuestLinear = raised.FaultAddress,
                Qualification = raised.FaultAddress,
            };
            VmExitAction action = VmExitAction.Inject;
            if (raised.Vector == ExceptionVector.PageFault)
            {
                // The memory virtualization may emulate the instruction itself (a write to a page its shadow keeps
                // read-only): it is still the privileged instruction this VMM is emulating at CPL 0.
                using (cpu.PrivilegedEmulation())
                {
                    action = Memory.PageFault(cpu, ref fault);
                }
            }
            if (action != VmExitAction.Resume)
            {
                exit = fault;
                return action == VmExitAction.Skip ? VmExitAction.Skip : VmExitAction.Inject;
            }
        }
        throw new InvalidOperationException($"the VMM could not emulate the privileged instruction at rip=0x{cpu.Rip:x}");
    }
}
