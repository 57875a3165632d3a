using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;

namespace Nestor.Cli.Commands;

/// <summary>--timeout counted from the moment <c>nestor run</c> starts, not from the guest's first instruction: the
/// limit is a promise that the command ends by then, and reading a kernel and setting up guest memory take time too.
/// While Nestor is loading there is no VM to stop cleanly (loading is synchronous file reading and memory set-up,
/// and nothing the guest did can be reported), so an expiry then ends the process at once with 124; once the VM
/// runs, an expiry stops it through <see cref="RunControl"/> like any other stop.</summary>
internal sealed class RunWatchdog : IDisposable
{
    private readonly Lock gate = new();
    private readonly double seconds;
    private readonly Deadline deadline;
    private RunControl? running;

    public RunWatchdog(double seconds)
    {
        this.seconds = seconds;
        deadline = new Deadline(TypedOptions.ToTimeSpan(seconds), Expire);
    }

    /// <summary>The VM is about to run under <paramref name="control"/>: from now on an expiry stops it.</summary>
    public void Running(RunControl control)
    {
        lock (gate)
        {
            running = control;
        }
    }

    private void Expire()
    {
        lock (gate)
        {
            if (running is { } control)
            {
                control.Stop(VmOutcomeKind.Timeout);
                return;
            }
            // Holding the lock on purpose: the main thread must not start the VM while the process exits.
            Console.Error.WriteLine($"nestor: --timeout {seconds.ToString(CultureInfo.InvariantCulture)} s expired while Nestor was " +
                "still loading the kernel and setting up the VM; no guest code ran");
            Console.Error.WriteLine("  what to do: Give a longer --timeout (it counts loading too)");
            Console.Error.Flush();
            Environment.Exit(ExitStatus.Timeout);
        }
    }

    public void Dispose() => deadline.Dispose();
}
