using System.Diagnostics;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Hosting.ControlApi;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Migration;

/// <summary>One migration measured by <see cref="MigrationBench"/>.</summary>
/// <param name="Workload">The guest's command line.</param>
/// <param name="Method">How it was migrated: <c>precopy</c>, <c>postcopy</c> or <c>hybrid</c>, with <c>+balloon</c> when the
/// balloon was inflated to the guest's free memory first.</param>
/// <param name="Status">The source's status at the end: rounds, pages per round, downtime, total time.</param>
/// <param name="Results">The destination's RESULT lines.</param>
/// <param name="Consistent">The guest's checker found no stale page, none behind its neighbour, none wrong.</param>
public sealed record MigrationBenchRow(string Workload, string Method, MigrationStatus Status, IReadOnlyList<string> Results, bool Consistent);

/// <summary><c>nestor bench migrate</c>: live migrations of one NestorOS VM running <c>migtouch</c> between two hosts
/// in this process over loopback TCP, for workloads of small and large writable working sets (the area's pages, and
/// the dirty rate: integer work after every RATE pages), with total time, downtime, rounds and pages per round
/// measured: the data of Clark et al.'s writable-working-set discussion (NSDI'05 §5: the pages dirtied per round
/// shrink fast for a small, slowly written set, and not at all for a set written faster than the link).</summary>
public static class MigrationBench
{
    /// <summary>Migrates each workload once, waiting <paramref name="warmUp"/> after the guest's program started.</summary>
    public static IReadOnlyList<MigrationBenchRow> Run(IReadOnlyList<string> workloads, SimOptions sim, ulong memoryBytes,
        Func<string, MigrationSettings> settings, TimeSpan warmUp, TextWriter? log = null)
    {
        var rows = new List<MigrationBenchRow>();
        foreach (string workload in workloads)
        {
            rows.Add(RunOne(workload, sim, memoryBytes, settings, warmUp, log));
        }
        return rows;
    }

    /// <summary>Migrates one workload with the settings <paramref name="settings"/> gives for the destination's address
    /// (its <see cref="MigrationSettings.BalloonFirst"/> gives the VM a balloon).</summary>
    public static MigrationBenchRow RunOne(string workload, SimOptions sim, ulong memoryBytes, Func<string, MigrationSettings> settings, TimeSpan warmUp,
        TextWriter? log = null)
    {
        var kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf);
        bool balloon = settings("tcp:127.0.0.1:1").BalloonFirst;
        var vmSpec = new HostedVmSpec("w", kernel, workload, sim, new MemoryControls(memoryBytes, memoryBytes, 10), new CpuControls(1000, 0, null)) { Balloon = balloon };
        // The balloon needs the host's balloon on (the operator's target, as nestor host ctl balloon sets it), nothing else.
        var overcommit = balloon ? OvercommitOptions.Off with { Balloon = true } : OvercommitOptions.Off;
        var hostSpec = new HostSpec(1UL << 30, 0, 1, SchedulerKind.ProportionalShare, [vmSpec]) { Overcommit = overcommit };
        using var incoming = IncomingMigration.Listen("tcp:127.0.0.1:0");
        string address = incoming.Address;
        IReadOnlyList<string> results = [];
        Exception? destinationFailure = null;
        var destination = new Thread(() =>
        {
            try
            {
                var spec = incoming.Accept(TimeSpan.FromMinutes(2));
                using var host = new VirtualMachineHost(new HostSpec(1UL << 30, 0, 1, SchedulerKind.ProportionalShare, [spec]) { WallTimeout = TimeSpan.FromMinutes(10), Overcommit = overcommit }, null);
                host.VmCreated = vm =>
                {
                    incoming.Receive(vm.Vm);
                    incoming.Install(vm);
                };
                host.Run();
                incoming.AwaitPostCopy(); // before the VM's RAM goes with the host
                results = host.Vms[0].ResultLines;
            }
            catch (Exception e)
            {
                destinationFailure = e;
            }
        })
        { IsBackground = true, Name = "bench destination" };
        destination.Start();
        using var source = new VirtualMachineHost(hostSpec with { WallTimeout = TimeSpan.FromMinutes(10) }, null);
        var running = new Thread(source.Run) { IsBackground = true, Name = "bench source" };
        running.Start();
        var started = Stopwatch.StartNew();
        while (source.Vms[0].Serial?.Text.Contains("migtouch: started", StringComparison.Ordinal) != true)
        {
            if (!running.IsAlive || started.Elapsed > TimeSpan.FromMinutes(2))
            {
                throw new WorkloadFailedException($"'{workload}' did not start migtouch ({source.Vms[0].Outcome ?? "no outcome"})", "Give a migtouch command line");
            }
            Thread.Sleep(20);
        }
        Thread.Sleep(warmUp);
        var chosen = settings(address);
        var migration = MigrationSource.Start(source, "w", chosen);
        migration.Wait(TimeSpan.FromMinutes(10));
        var status = migration.Status;
        log?.WriteLine($"  {workload}: {status.Message}");
        running.Join();
        destination.Join(TimeSpan.FromMinutes(10));
        if (status.Phase != MigrationPhase.Completed)
        {
            throw new WorkloadFailedException($"the migration of '{workload}' failed: {status.Message}{(destinationFailure is null ? "" : $" (destination: {destinationFailure.Message})")}",
                "Give the guest more to do (more ROUNDS), so that it still runs when the migration ends");
        }
        bool consistent = results.Any(r => r.StartsWith("RESULT migtouch", StringComparison.Ordinal) && r.Contains("stale=0 behind=0 wrong=0", StringComparison.Ordinal));
        return new MigrationBenchRow(workload, MigrationSettings.NameOf(chosen.Mode) + (chosen.BalloonFirst ? "+balloon" : ""), status, results, consistent);
    }
}
