namespace Nestor.Hypervisor.Errors;

/// <summary>The kind of failure, which decides the process exit status the CLI reports (docs/boot-protocol.md).</summary>
public enum FailureClass
{
    /// <summary>Bad input: an option, a size, a kernel file, a configuration.</summary>
    BadInput,
    /// <summary>The host cannot do what was asked: no /dev/kvm, no permission, a missing capability.</summary>
    HostUnsupported,
    /// <summary>A fault inside Nestor itself.</summary>
    Internal,
    /// <summary>A workload did not run as it must (a guest failed, or two engines or techniques disagreed).</summary>
    WorkloadFailed,
}

/// <summary>Base of every error Nestor reports to a user. The message says what happened; <see cref="Advice"/>
/// says what to do about it.</summary>
public abstract class NestorException : Exception
{
    protected NestorException(string message, string? advice, Exception? inner = null)
        : base(message, inner)
    {
        Advice = advice;
    }

    /// <summary>What the user can do about it, or null.</summary>
    public string? Advice { get; }

    /// <summary>Which class of failure this is.</summary>
    public abstract FailureClass Class { get; }
}

/// <summary>The user's input cannot be used: an option, a size, a kernel file.</summary>
public sealed class BadInputException(string message, string? advice = null, Exception? inner = null)
    : NestorException(message, advice, inner)
{
    public override FailureClass Class => FailureClass.BadInput;
}

/// <summary>A workload did not run as it must: a guest failed under some configuration, or configurations disagreed.</summary>
public sealed class WorkloadFailedException(string message, string? advice = null, Exception? inner = null)
    : NestorException(message, advice, inner)
{
    public override FailureClass Class => FailureClass.WorkloadFailed;

    /// <summary>How the guest's run ended, when a run was what failed (a timeout gets its own exit status).</summary>
    public Exits.VmOutcomeKind? Outcome { get; init; }
}

/// <summary>The host cannot run what was asked (no KVM, no permission, a capability the guest needs is missing).</summary>
public sealed class HostUnsupportedException(string message, string? advice = null, Exception? inner = null)
    : NestorException(message, advice, inner)
{
    public override FailureClass Class => FailureClass.HostUnsupported;
}
