using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;

namespace Nestor.Machine.Virtualization;

/// <summary>The exit-information fields of one VM exit (Intel SDM Vol. 3C §25.9): reason, qualification, guest-linear
/// and guest-physical address, instruction length, and for an exception its vector and error code. The handler may
/// change the event fields to choose what <see cref="VmExitAction.Inject"/> delivers.</summary>
public struct VmExit
{
    public ExitReason Reason;
    public ulong Qualification;
    public ulong GuestLinear;
    public ulong GuestPhysical;
    /// <summary>Length of the instruction that exited (0 for exceptions and EPT violations).</summary>
    public int InstructionLength;
    /// <summary>The exception (<see cref="ExitReason.ExceptionOrNmi"/>) or the event to inject.</summary>
    public ExceptionVector Vector;
    public uint ErrorCode;
    public bool HasErrorCode;
    /// <summary>The exit happened while an event was being delivered through the guest's IDT (the SDM's
    /// "IDT-vectoring information" is valid): after <see cref="VmExitAction.Resume"/> the delivery is retried.</summary>
    public bool DuringDelivery;
    /// <summary>For <see cref="VmExitAction.Inject"/>: <see cref="Vector"/> is an external interrupt (the VM-entry
    /// interruption-information field's type 0, SDM Vol. 3C §24.8.3 / §26.6), delivered at the guest's RIP as a
    /// hardware interrupt, not an exception.</summary>
    public bool ExternalInterrupt;

    /// <summary>EPT-violation qualification bits (SDM Table 28-7).</summary>
    public const ulong QualificationRead = 1, QualificationWrite = 2, QualificationFetch = 4,
        QualificationLinearValid = 1 << 7, QualificationFinalTranslation = 1 << 8;
}

/// <summary>What the VMM's exit handler decided; the CPU model then re-enters the guest (VM entry) accordingly.</summary>
public enum VmExitAction
{
    /// <summary>The instruction that exited is carried out (by the model, on the VMM's behalf) and the guest goes on:
    /// how port I/O, CPUID, MSRs and HLT reach the VMM's devices and policies.</summary>
    Complete,
    /// <summary>The VMM emulated the instruction itself and set RIP; the guest goes on from there.</summary>
    Skip,
    /// <summary>Re-enter at the same instruction (after the VMM fixed what caused the exit: a nested or shadow page
    /// table entry).</summary>
    Resume,
    /// <summary>Deliver <see cref="VmExit.Vector"/> (with its error code, and CR2 = <see cref="VmExit.GuestLinear"/>
    /// for a page fault) through the guest's IDT: event injection.</summary>
    Inject,
    /// <summary>Stop the virtual machine.</summary>
    Stop,
}

/// <summary>The VMM side of VMX root operation: called on every VM exit, with the guest's state in the CPU.</summary>
public interface IVmExitHandler
{
    VmExitAction HandleExit(Cpu cpu, ref VmExit exit);
}

/// <summary>Thrown inside the model when a guest-physical access needs the VMM (an EPT violation): the instruction is
/// abandoned, nothing it did is kept, and the exit goes to the handler.</summary>
public sealed class NestedPageFault(VmExit exit) : Exception("EPT violation")
{
    public VmExit Exit { get; } = exit;
}
