using System.CommandLine;
using System.Globalization;
using Nestor.Hypervisor;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Migration;
using Nestor.Hypervisor.Migration.Kvm;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor run --engine kvm</c>'s live migration (docs/migration.md, "On KVM"): <c>--migrate-to
/// tcp:HOST:PORT</c> (with <c>--migrate-after-ms</c>, <c>--migrate-bandwidth</c>, <c>--migrate-downtime-ms</c>) on the
/// source, <c>--incoming tcp:HOST:PORT</c> on the destination, which takes its kernel, RAM and command line from the
/// stream.</summary>
internal sealed class KvmMigrationOptions
{
    private readonly Option<string?> migrateTo = new("--migrate-to") { Description = "With --engine kvm: live-migrate the VM to a 'nestor run --engine kvm --incoming' at tcp:HOST:PORT (pre-copy with KVM's dirty log; docs/migration.md)" };
    private readonly Option<double?> after = TypedOptions.Quantity("--migrate-after-ms", "With --migrate-to: start the migration this many milliseconds after the VM starts", 0, "milliseconds", "500");
    private readonly Option<string?> bandwidth = new("--migrate-bandwidth") { Description = "With --migrate-to: the most bytes a second the stream carries, e.g. 64M (QEMU's default 128M)" };
    private readonly Option<double?> downtime = TypedOptions.Quantity("--migrate-downtime-ms", "With --migrate-to: the downtime target in milliseconds (QEMU's default 300)", 0, "milliseconds", "300");
    private readonly Option<string?> incoming = new("--incoming") { Description = "With --engine kvm: wait for a live migration at tcp:HOST:PORT and run the VM it brings (its kernel, RAM and command line come from the source)" };

    public IEnumerable<Option> All => [migrateTo, after, bandwidth, downtime, incoming];

    /// <summary>The values given, or null when no migration option was.</summary>
    public KvmMigrationPlan? Parse(ParseResult parse)
    {
        string? to = parse.GetValue(migrateTo), from = parse.GetValue(incoming), rate = parse.GetValue(bandwidth);
        double afterMs = parse.GetValue(after) ?? 0;
        double? downtimeMs = parse.GetValue(downtime);
        if (to is null && from is null)
        {
            return rate is not null || downtimeMs is not null || afterMs != 0
                ? throw new BadInputException("--migrate-after-ms, --migrate-bandwidth and --migrate-downtime-ms shape a migration", "Add --migrate-to tcp:HOST:PORT")
                : null;
        }
        if (to is not null && from is not null)
        {
            throw new BadInputException("a run is either the source of a migration (--migrate-to) or its destination (--incoming), not both", "Drop one of them");
        }
        var settings = to is null ? null : new MigrationSettings(to)
        {
            MaxBandwidth = rate is null ? MigrationSettings.DefaultBandwidth : (long)Size.Parse(rate, "--migrate-bandwidth"),
            DowntimeLimit = downtimeMs is { } ms ? TimeSpan.FromMilliseconds(ms) : MigrationSettings.DefaultDowntime,
        };
        settings?.Validate();
        if (from is not null)
        {
            MigrationSettings.ParseAddress(from, "--incoming");
        }
        return new KvmMigrationPlan(settings, TimeSpan.FromMilliseconds(afterMs), from);
    }
}

/// <summary>What <see cref="KvmMigrationOptions"/> asked for, and the run it shapes.</summary>
internal sealed record KvmMigrationPlan(MigrationSettings? Source, TimeSpan After, string? Incoming)
{
    /// <summary>Refuses what the KVM migration does not combine with.</summary>
    public void Check(EngineKind engine, bool snapshots)
    {
        if (engine != EngineKind.Kvm)
        {
            throw new BadInputException("--migrate-to and --incoming of nestor run migrate a VM of --engine kvm",
                "Add --engine kvm; a sim VM migrates with nestor host run --incoming and nestor migrate");
        }
        if (snapshots)
        {
            throw new BadInputException("a migrating run does not also take or restore snapshots", "Drop --snapshot-at, --snapshot-on-signal or --restore");
        }
    }

    /// <summary>On the destination: listens and waits for the source's header (up to <paramref name="timeout"/>).</summary>
    public (KvmIncomingMigration Incoming, KernelImageSource Kernel, KvmMigrationDescription Description)? Accept(double? timeout)
    {
        if (Incoming is null)
        {
            return null;
        }
        var listening = KvmIncomingMigration.Listen(Incoming);
        try
        {
            Console.Error.WriteLine($"nestor: waiting for a migration at {listening.Address}");
            var (kernel, description) = listening.Accept(timeout is { } s ? TimeSpan.FromSeconds(s) : null);
            return (listening, kernel, description);
        }
        catch
        {
            listening.Dispose();
            throw;
        }
    }

    /// <summary>An unmigrated run of the migration workload, checked at its end as a migrated one is; null for
    /// another kernel.</summary>
    public static KvmMigrationRun? Unmigrated(Vm vm, IEngine engine, RunControl control) =>
        MigrationGuest.IsWorkload(vm.Config.Kernel) ? new KvmMigrationRun(vm, engine, control, null, null, MigrationGuestPort.Attach(vm)) : null;

    /// <summary>The run: on the source, the VM migrating; on the destination, the VM received and resumed.</summary>
    public KvmMigrationRun Start(Vm vm, IEngine engine, RunControl control, KvmIncomingMigration? incoming)
    {
        var kvm = (KvmEngine)engine;
        var port = MigrationGuestPort.Attach(vm);
        if (incoming is not null)
        {
            incoming.Check(vm);
            incoming.Receive(vm, kvm);
            Console.Error.WriteLine($"nestor: received the VM: {incoming.Rounds} rounds, {incoming.Pages:N0} pages in {incoming.Elapsed.TotalMilliseconds:0.0} ms; resuming it on KVM");
            return new KvmMigrationRun(vm, engine, control, null, incoming, port);
        }
        return new KvmMigrationRun(vm, engine, control, new KvmMigrationSource(vm, kvm, control, Source!, After), null, port);
    }
}

/// <summary>One migrating run of <c>nestor run</c> and what it prints.</summary>
internal sealed class KvmMigrationRun(Vm vm, IEngine engine, RunControl control, KvmMigrationSource? source, KvmIncomingMigration? incoming, MigrationGuestPort port)
{
    /// <summary>True when the VM left for the destination.</summary>
    public bool MigratedAway => source?.Migrated == true;

    public RunResult Run()
    {
        var run = source is null ? vm.Run(engine, control) : source.Run();
        if (source is not null)
        {
            var s = source.Status;
            foreach (var r in s.Rounds)
            {
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"nestor: migration round {r.Number}: {r.Pages} pages ({r.FilledPages} filled), {r.Bytes} bytes, {r.Milliseconds:0.0} ms, throttle {r.ThrottlePercent}%"));
            }
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"nestor: migration {s.Phase.ToString().ToLowerInvariant()}: {s.Message}; total {s.TotalMilliseconds:0.0} ms, downtime {(s.DowntimeMilliseconds is { } d ? $"{d:0.0} ms" : "none")}, " +
                $"{s.PagesSent} pages sent, {s.BytesSent} bytes; KVM's dirty log named {s.PagesLogged} pages, {s.FinalPagesFound} after the vCPU stopped"));
        }
        else if (incoming is { Resumed: true })
        {
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"nestor: resumed on KVM {incoming.ResumeMilliseconds:0.0} ms after the stream's end marker"));
        }
        else if (incoming is { Resumed: false })
        {
            Console.Error.WriteLine("nestor: the source was not told the VM resumed here (the connection broke after the state arrived)");
        }
        if (MigratedAway && MigrationGuest.IsWorkload(vm.Config.Kernel))
        {
            Console.Error.WriteLine($"nestor: the migration workload had done {port.Passes} passes here when its vCPU stopped");
        }
        if (!MigratedAway && MigrationGuest.IsWorkload(vm.Config.Kernel))
        {
            var workload = MigrationWorkload.Parse(vm.Config.CommandLine, vm.Config.MemoryBytes);
            long passes = port.Passes;
            var wrong = MigrationGuest.Check(vm.Memory, workload, passes);
            Console.Error.WriteLine(wrong.Count == 0 && port.MismatchedPage is null
                ? $"nestor: migration workload: {passes} passes; every one of its {workload.Pages} pages holds {passes}"
                : $"nestor: migration workload: {passes} passes; WRONG pages: {(port.MismatchedPage is { } m ? $"the guest found page {m}; " : "")}{string.Join(", ", wrong.Select(w => $"page {w.Page} holds {w.Counter}"))}");
        }
        return run;
    }
}
