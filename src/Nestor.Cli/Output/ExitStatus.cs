using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;

namespace Nestor.Cli.Output;

/// <summary>The process exit status of <c>nestor run</c> (docs/boot-protocol.md, "Exit status"): the guest's own
/// debug-exit status when it gave one, otherwise one distinct status per failure class.</summary>
public static class ExitStatus
{
    /// <summary>Largest guest status passed through unchanged; larger ones are reported as this value.</summary>
    public const int GuestStatusCeiling = 119;
    public const int BadInput = 120;
    public const int HostUnsupported = 121;
    public const int TripleFault = 122;
    public const int EngineFailure = 123;
    public const int Timeout = 124;
    public const int Halted = 125;
    public const int InternalError = 126;
    /// <summary>128 + the signal's number, as a shell reports a process that signal killed: SIGHUP is 1, SIGINT 2,
    /// SIGTERM 15. Nestor is not killed by them (it stops the VM and reports first), but scripts read the status
    /// the same way.</summary>
    public const int HungUp = 129;
    public const int Interrupted = 130;
    public const int Terminated = 143;

    /// <summary>The status for a run's outcome (a stop's, from the first reason the run was asked to stop for).</summary>
    public static int For(VmOutcome outcome) => For(outcome.Kind, outcome.GuestStatus);

    /// <summary>The status for an outcome of kind <paramref name="kind"/>.</summary>
    public static int For(VmOutcomeKind kind, uint? guestStatus = null) => kind switch
    {
        VmOutcomeKind.DebugExit => (int)Math.Min(guestStatus ?? 0, GuestStatusCeiling),
        VmOutcomeKind.Halted => Halted,
        VmOutcomeKind.TripleFault => TripleFault,
        VmOutcomeKind.Timeout => Timeout,
        VmOutcomeKind.Interrupted => Interrupted,
        VmOutcomeKind.Terminated => Terminated,
        VmOutcomeKind.HungUp => HungUp,
        _ => EngineFailure,
    };

    /// <summary>The status for an error.</summary>
    public static int For(NestorException e) => e.Class switch
    {
        FailureClass.BadInput => BadInput,
        FailureClass.HostUnsupported => HostUnsupported,
        FailureClass.WorkloadFailed when e is WorkloadFailedException { Outcome: VmOutcomeKind.Timeout } => Timeout,
        FailureClass.WorkloadFailed => EngineFailure,
        _ => InternalError,
    };
}
