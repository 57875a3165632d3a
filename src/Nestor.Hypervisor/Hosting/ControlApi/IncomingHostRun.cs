using Nestor.Hypervisor.Migration;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary><c>nestor host run --incoming tcp:HOST:PORT</c>: before the host is built, waits for a VM migrated to it
/// and receives it whole (<see cref="IncomingMigration"/>); the host then runs it with the others, restored as it
/// powers it on. Until the source's end marker has arrived nothing runs here, so a source that fails mid-way leaves
/// this host with nothing to run, and it ends saying why.</summary>
public sealed class IncomingHostRun : IDisposable
{
    private readonly IncomingMigration migration;

    private IncomingHostRun(IncomingMigration migration, HostedVmSpec spec)
    {
        this.migration = migration;
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
            migration.Receive();
            log.WriteLine($"nestor: received VM '{spec.Name}': {migration.Rounds} rounds, {migration.Pages:N0} pages in {migration.Elapsed.TotalMilliseconds:N0} ms");
            log.Flush();
            return new IncomingHostRun(migration, spec);
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
            if (ReferenceEquals(vm.Spec, Spec))
            {
                migration.Install(vm);
            }
        };
    }

    public void Dispose() => migration.Dispose();
}
