using Nestor.Hypervisor.Migration;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary><c>nestor host run --incoming tcp:HOST:PORT</c>: before the host is built, waits for a VM migrated to it
/// and checks the stream's header (<see cref="IncomingMigration"/>); the host then builds the VM as it powers it on,
/// receives the rounds straight into its RAM, restores its state and runs it with the others. Until the source's end
/// marker has arrived the VM does not run, so a source that fails mid-way leaves this host ending with a message
/// saying why.</summary>
public sealed class IncomingHostRun : IDisposable
{
    private readonly IncomingMigration migration;

    private readonly TextWriter log;

    private IncomingHostRun(IncomingMigration migration, HostedVmSpec spec, TextWriter log)
    {
        this.migration = migration;
        this.log = log;
        Spec = spec;
    }

    /// <summary>The VM that arrived.</summary>
    public HostedVmSpec Spec { get; }

    /// <summary>Listens on <paramref name="address"/>, says so on <paramref name="log"/>, and receives one VM.</summary>
    /// <exception cref="MigrationStreamException">The stream was refused or cut (the source runs its VM on).</exception>
    public static IncomingHostRun Receive(string address, TextWriter log)
    {
        var migration = IncomingMigration.Listen(address);
        try
        {
            log.WriteLine($"nestor: waiting for a migrated VM on {migration.Address}");
            log.Flush();
            var spec = migration.Accept();
            log.WriteLine($"nestor: receiving VM '{spec.Name}' ({spec.Sim.Name}, {spec.Memory.MaxBytes >> 20} MiB)");
            log.Flush();
            return new IncomingHostRun(migration, spec, log);
        }
        catch
        {
            migration.Dispose();
            throw;
        }
    }

    /// <summary>The host's VMs with the incoming one added.</summary>
    public HostSpec AddTo(HostSpec spec) => spec with { Vms = [.. spec.Vms, Spec] };

    /// <summary>Makes <paramref name="host"/> restore the incoming VM as it powers it on.</summary>
    public void Attach(VirtualMachineHost host)
    {
        var previous = host.VmCreated;
        host.VmCreated = vm =>
        {
            previous?.Invoke(vm);
            if (ReferenceEquals(vm.Spec, Spec) && vm.Vm is { } built)
            {
                // The host built the VM as it powers it on: the rounds arrive straight into its RAM, and it runs once
                // the state is restored. The host's other VMs power on after it.
                migration.Receive(built);
                log.WriteLine($"nestor: received VM '{Spec.Name}': {migration.Rounds} rounds, {migration.Pages:N0} pages in {migration.Elapsed.TotalMilliseconds:N0} ms");
                log.Flush();
                migration.PostCopyCompleted = done =>
                {
                    log.WriteLine($"nestor: post-copy of VM '{Spec.Name}' complete: {done.PagesReceived:N0} pages in {done.Elapsed.TotalMilliseconds:N0} ms; " +
                                  $"{done.DemandFaults:N0} demand faults waited {done.FaultWait.TotalMilliseconds:0.0} ms (longest {done.LongestFaultWait.TotalMilliseconds:0.0} ms)");
                    log.Flush();
                };
                migration.PostCopyLost = why =>
                {
                    log.WriteLine($"nestor: VM '{Spec.Name}' is lost: {why}");
                    log.Flush();
                };
                migration.Install(vm);
                if (migration.PostCopy is { } postCopy)
                {
                    log.WriteLine($"nestor: VM '{Spec.Name}' runs here by post-copy with {postCopy.PagesAtSwitch:N0} pages still at the source: " +
                                  "until they have all arrived, the VM exists in two halves, and if the source fails it is lost");
                    log.Flush();
                }
            }
        };
    }

    /// <summary>Waits, after the host's run and before its VMs go, for the post-copy pages still on their way (a guest
    /// that ended before it needed them).</summary>
    public void AwaitPostCopy() => migration.AwaitPostCopy();

    public void Dispose() => migration.Dispose();
}
