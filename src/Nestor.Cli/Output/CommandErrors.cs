using Nestor.Hypervisor.Errors;
using Nestor.Kvm;

namespace Nestor.Cli.Output;

/// <summary>How every command reports an exception that ends it (docs/ARCHITECTURE.md, "Errors"): a
/// <see cref="NestorException"/> is its message and advice, without a stack trace, with the status of its failure class;
/// a failure of the KVM binding is the engine's failure; anything else is a bug, said as one, with its stack trace only
/// under <c>--verbose</c>. One place, so that the commands cannot drift apart in wording or status.</summary>
internal static class CommandErrors
{
    /// <summary>Writes the report of <paramref name="exception"/> to <paramref name="error"/> (stderr by default) and
    /// returns the process exit status for it.</summary>
    public static int Report(Exception exception, bool verbose = false, TextWriter? error = null)
    {
        error ??= Console.Error;
        switch (exception)
        {
            case NestorException e:
                error.WriteLine($"nestor: {e.Message}");
                if (e.Advice is not null)
                {
                    error.WriteLine($"  what to do: {e.Advice}");
                }
                return ExitStatus.For(e);
            case KvmException e:
                error.WriteLine($"nestor: {e.Message}");
                return ExitStatus.EngineFailure;
            default:
                error.WriteLine($"nestor: internal error: {exception.Message}");
                error.WriteLine(verbose ? exception.ToString() : "  (run with --verbose for details, and please report it)");
                return ExitStatus.InternalError;
        }
    }
}
