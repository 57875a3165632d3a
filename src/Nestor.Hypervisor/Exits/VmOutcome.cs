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
    /// <summary>The user stopped the run (Ctrl-C, SIGINT).</summary>
    Interrupted,
    /// <summary>The engine reported an exit Nestor does not handle.</summary>
    UnexpectedExit,
    /// <summary>The run stopped where it was asked to (an instruction count), to be inspected.</summary>
    Breakpoint,
    /// <summary>Nestor was asked to terminate (SIGTERM: <c>kill</c>, a service manager, a container stopping).</summary>
    Terminated,
    /// <summary>Nestor's terminal went away (SIGHUP: the terminal window closed, the SSH connection dropped).</summary>
    HungUp,
}

/// <summary>The end of a VM run: what happened, the guest's status if it gave one, a message for people, and the
/// vCPU's final state.</summary>
public sealed record VmOutcome(VmOutcomeKind Kind, string Message, VcpuState? FinalState, uint? GuestStatus = null,
    byte[]? InstructionBytes = null, string? Instruction = null)
{
    /// <summary>True when the guest ended the run itself through the debug-exit port.</summary>
    public bool IsDebugExit => Kind == VmOutcomeKind.DebugExit;
}

/// <summary>The outcomes every engine reports the same way, worded once.</summary>
public static class VmOutcomes
{
    /// <summary>HLT with nothing that could ever wake the vCPU.</summary>
    public static VmOutcome Halted(VcpuState state) => new(VmOutcomeKind.Halted,
        $"the guest executed HLT at rip=0x{state.Rip - 1:x} " +
        (state.InterruptsEnabled
            ? "waiting for an interrupt, but no device of this VM will raise one"
            : "with interrupts disabled, so nothing can ever wake it") +
        "; the VM stopped. End the guest by writing a status to the debug-exit port (out 0xf4) instead",
        state);

    /// <summary>The guest wrote its status to the debug-exit port.</summary>
    public static VmOutcome DebugExit(uint status, VcpuState state) =>
        new(VmOutcomeKind.DebugExit, $"the guest wrote {status} (0x{status:x}) to the debug-exit port", state, status);

    /// <summary>The vCPU shut down after a triple fault (SDM Vol. 3A §6.15, interrupt 8: a fault while delivering a
    /// double fault). <paramref name="cause"/> says which event's delivery started the cascade when the engine knows
    /// (the software machine does; KVM does not say), <paramref name="note"/> adds a sentence at the end.</summary>
    public static VmOutcome TripleFault(VcpuState state, string? cause, string? note = null) => new(VmOutcomeKind.TripleFault,
        $"the guest triple-faulted (the vCPU shut down) at rip=0x{state.Rip:x}: " +
        (cause ?? (state.Idtr.Limit == 0
            ? "an exception could not be delivered because the guest has no IDT (IDTR limit is 0)"
            : "an exception could not be delivered")) +
        ", nor the double fault that followed. Check the guest's IDT, GDT, stack and page tables at the state below." +
        (note is null ? "" : " " + note),
        state);

    /// <summary>The run was stopped from outside: the timeout, or a signal (SIGINT, SIGTERM, SIGHUP).</summary>
    public static VmOutcome Stopped(VmOutcomeKind reason, TimeSpan? timeout, VcpuState state) => new(reason,
        reason switch
        {
            VmOutcomeKind.Timeout =>
                $"the guest was still running after {timeout?.TotalSeconds:0.###} s (--timeout) at rip=0x{state.Rip:x}; the VM was stopped",
            VmOutcomeKind.Terminated => $"Nestor was asked to terminate (SIGTERM) with the guest at rip=0x{state.Rip:x}; the VM was stopped",
            VmOutcomeKind.HungUp => $"Nestor's terminal hung up (SIGHUP) with the guest at rip=0x{state.Rip:x}; the VM was stopped",
            _ => $"the run was interrupted (Ctrl-C, SIGINT) at rip=0x{state.Rip:x}; the VM was stopped",
        },
        state);
}
