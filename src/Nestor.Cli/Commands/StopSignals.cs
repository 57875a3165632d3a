using System.Runtime.InteropServices;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;

namespace Nestor.Cli.Commands;

/// <summary>SIGINT (Ctrl-C), SIGTERM and SIGHUP during <c>nestor run</c>: each stops the VM cleanly through
/// <see cref="RunControl.Stop"/>, so that the outcome is printed, --stats, --json and --dump-state are written and the
/// serial log keeps its tail, and the exit status says which signal it was (130, 143, 129: 128 + the signal number,
/// as a shell reports a process the signal killed). A second signal while the VM is stopping ends Nestor at once,
/// for a run that does not stop. PosixSignalRegistration, unlike Console.CancelKeyPress, covers all three and works
/// under NativeAOT.</summary>
internal sealed class StopSignals : IDisposable
{
    private readonly PosixSignalRegistration[] registrations;
    private int received;

    public StopSignals(RunControl control)
    {
        registrations =
        [
            Register(control, PosixSignal.SIGINT, VmOutcomeKind.Interrupted, "SIGINT"),
            Register(control, PosixSignal.SIGTERM, VmOutcomeKind.Terminated, "SIGTERM"),
            Register(control, PosixSignal.SIGHUP, VmOutcomeKind.HungUp, "SIGHUP"),
        ];
    }

    private PosixSignalRegistration Register(RunControl control, PosixSignal signal, VmOutcomeKind reason, string name) =>
        PosixSignalRegistration.Create(signal, context =>
        {
            // Handlers run on a thread-pool thread, not in signal context: Stop only takes a lock and kicks the vCPU.
            context.Cancel = true;
            if (Interlocked.Increment(ref received) == 1)
            {
                control.Stop(reason);
                return;
            }
            Console.Error.WriteLine($"nestor: {name} again while the VM was stopping: ending at once, without the report");
            Console.Error.Flush();
            Environment.Exit(ExitStatus.For(reason));
        });

    public void Dispose()
    {
        foreach (var registration in registrations)
        {
            registration.Dispose();
        }
    }
}
