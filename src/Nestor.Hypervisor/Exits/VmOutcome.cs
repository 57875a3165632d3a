using Nestor.Hypervisor.State;

namespace Nestor.Hypervisor.Exits;

/// <summary>How a VM run ended.</summary>
public enum VmOutcomeKind
{
    /// <summary>The guest wrote its status to the debug-exit port.</summary>
    DebugExit,
    /// <summary>The guest executed HLT with nothing that could ever wake it.</summary>
    Halted,
    /// <summary>The guest triple-faulted (the vCPU shut down).</summary>
    TripleFault,
    /// <summary>The engine could not execute or emulate an instruction (KVM internal error / emulation failure).</summary>
    EmulationFailure,
    /// <summary>The hardware refused to enter the guest.</summary>
    EntryFailure,
    /// <summary>The run exceeded its time limit.</summary>
    Timeout,
    /// <summary>The user stopped the run (Ctrl-C).</summary>
    Interrupted,
    /// <summary>The engine reported an exit Nestor does not handle.</summary>
    UnexpectedExit,
}

/// <summary>The end of a VM run: what happened, the guest's status if it gave one, a message for people, and the
/// vCPU's final state.</summary>
public sealed record VmOutcome(VmOutcomeKind Kind, string Message, VcpuState? FinalState, uint? GuestStatus = null,
    byte[]? InstructionBytes = null, string? Instruction = null)
{
    /// <summary>True when the guest ended the run itself through the debug-exit port.</summary>
    public bool IsDebugExit => Kind == VmOutcomeKind.DebugExit;
}
