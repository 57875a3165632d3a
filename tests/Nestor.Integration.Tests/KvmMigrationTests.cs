using System.Globalization;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Migration;
using Nestor.Hypervisor.Migration.Kvm;
using Child = Nestor.Integration.Tests.MigrationTests.Child;
using CuttingProxy = Nestor.Integration.Tests.MigrationTests.CuttingProxy;

namespace Nestor.Integration.Tests;

/// <summary>Live migration of a KVM VM between two real <c>nestor run --engine kvm</c> processes over loopback TCP
/// (docs/migration.md, "On KVM"), with KVM's dirty log: the workload (<see cref="MigrationGuest"/>) increments a
/// counter in every page of its area each pass and checks, in the guest, that each page holds the pass count before
/// it increments it; after its last pass the host checks every page holds the pass count. Migrated mid-run, the
/// destination ends as an unmigrated run does; the fault tests (a destination killed mid-way, a connection cut, a
/// destination of another engine) leave the source running to that same end. Children are killed when a test ends,
/// passed or failed.</summary>
public sealed class KvmMigrationTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(240);
    private readonly List<Child> children = [];

    public KvmMigrationTests() => NestorProcess.RequireKvm();

    public void Dispose()
    {
        foreach (var child in children)
        {
            child.Dispose();
        }
    }

    [Fact]
    public void A_small_dirty_set_migrates_and_the_destination_ends_as_an_unmigrated_run()
    {
        const string workload = "pages=256 passes=2500 spin=0";
        var unmigrated = NestorProcess.Run(Limit, "run", "--engine", "kvm", MigrationGuest.BuiltInName, "--cmdline", workload, "-m", "32M");
        Assert.True(unmigrated.ExitCode == (int)MigrationGuest.Success, unmigrated.ToString());
        string checkedLine = CheckerLine(unmigrated.Stderr);
        Assert.Equal("nestor: migration workload: 2500 passes; every one of its 256 pages holds 2500", checkedLine);

        var (source, destination) = Migrate(workload, "32M", "--migrate-after-ms", "500");
        Assert.True(source.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.True(destination.WaitForExit(Limit) == (int)MigrationGuest.Success, Dump(source, destination));
        Assert.Contains("nestor: migration completed: migrated to", source.Stderr);
        Assert.Contains("nestor: the VM left for", source.Stderr);
        Assert.DoesNotContain("migration workload:", source.Stderr); // it ended there
        Assert.Matches(@"migration round 0: \d+ pages", source.Stderr);
        Assert.Equal(checkedLine, CheckerLine(destination.Stderr));
        var rounds = Rounds(source.Stderr);
        Assert.True(rounds[^1].Pages <= 256 + 16, $"the stop-and-copy sent {rounds[^1].Pages} pages, more than the workload's 256 dirty ones\n{source.Stderr}");
        Assert.Matches(@"downtime \d+\.\d ms", source.Stderr);
    }

    [Fact]
    public void A_large_dirty_set_under_a_bandwidth_limit_takes_rounds_and_every_page_arrives()
    {
        // 24 MiB written every pass. Auto-converge raises the throttle 10 points every two rounds of about 0.5 s, and
        // the stop-and-copy comes at the latest after 30 rounds: the guest must outlast those 15 s. Unthrottled, 120
        // passes took 6.5 s, and once ended before the migration converged; 400 passes take 25 s.
        const string workload = "pages=6144 passes=400 spin=0";
        var (source, destination) = Migrate(workload, "48M", "--migrate-after-ms", "300", "--migrate-bandwidth", "64M", "--migrate-downtime-ms", "100");
        Assert.True(source.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.True(destination.WaitForExit(Limit) == (int)MigrationGuest.Success, Dump(source, destination));
        Assert.Equal("nestor: migration workload: 400 passes; every one of its 6144 pages holds 400", CheckerLine(destination.Stderr));
        var rounds = Rounds(source.Stderr);
        Assert.True(rounds.Count >= 2, source.Stderr);
        Assert.True(rounds[0].Pages >= 6144, $"round 0 sent {rounds[0].Pages} pages, fewer than the area's\n{source.Stderr}");
        // The limit held: no round went faster than 64 MiB/s (framing included), with 10 % for the clock's grain.
        foreach (var r in rounds.Where(r => r.Milliseconds > 50))
        {
            Assert.True(r.Bytes / (r.Milliseconds / 1000) <= 64 * 1.1 * (1 << 20), $"round {r.Number}: {r.Bytes} bytes in {r.Milliseconds} ms\n{source.Stderr}");
        }
    }

    [Fact]
    public void A_destination_killed_mid_way_leaves_the_source_running_to_its_normal_end()
    {
        const string workload = "pages=4096 passes=150 spin=0";
        var (source, destination) = Migrate(workload, "32M", "--migrate-after-ms", "200", "--migrate-bandwidth", "2M");
        Assert.True(destination.WaitFor(() => destination.Stderr.Contains("waiting") && source.Stderr.Length >= 0, Limit));
        Thread.Sleep(2500); // round 0 takes 8 s at 2 MiB/s
        destination.Kill();
        Assert.True(source.WaitForExit(Limit) == (int)MigrationGuest.Success, Dump(source, destination));
        Assert.Contains("nestor: migration failed: the migration failed, and the VM runs on here", source.Stderr);
        Assert.Equal("nestor: migration workload: 150 passes; every one of its 4096 pages holds 150", CheckerLine(source.Stderr));
    }

    [Fact]
    public void A_connection_cut_mid_way_leaves_the_source_running_to_its_normal_end()
    {
        const string workload = "pages=2048 passes=400 spin=0";
        var destination = Start("run", "--engine", "kvm", "--incoming", "tcp:127.0.0.1:0", "--timeout", "200");
        string address = AddressOf(destination);
        using var proxy = new CuttingProxy(MigrationSettings.ParseAddress(address, "test"), cutAfterBytes: 3 << 20);
        var source = Start("run", "--engine", "kvm", MigrationGuest.BuiltInName, "--cmdline", workload, "-m", "32M",
            "--migrate-to", proxy.Address, "--migrate-after-ms", "200", "--migrate-bandwidth", "8M", "--timeout", "200");
        Assert.True(source.WaitForExit(Limit) == (int)MigrationGuest.Success, Dump(source, destination));
        Assert.Contains("the VM runs on here", source.Stderr);
        Assert.Equal("nestor: migration workload: 400 passes; every one of its 2048 pages holds 400", CheckerLine(source.Stderr));
        Assert.NotEqual(0, destination.WaitForExit(Limit));
        Assert.Contains("cut", destination.Stderr);
    }

    [Fact]
    public void A_sim_destination_refuses_a_kvm_stream_and_the_source_runs_on()
    {
        const string workload = "pages=256 passes=1500 spin=0";
        var destination = Start("host", "run", "--incoming", "tcp:127.0.0.1:0", "--timeout", "200");
        Assert.True(destination.WaitFor(() => destination.Stderr.Contains("waiting for a migrated VM on"), Limit), destination.ToString());
        string address = Regex.Match(destination.Stderr, @"waiting for a migrated VM on (tcp:\S+)").Groups[1].Value;
        var source = Start("run", "--engine", "kvm", MigrationGuest.BuiltInName, "--cmdline", workload, "-m", "32M",
            "--migrate-to", address, "--migrate-after-ms", "200", "--timeout", "200");
        Assert.True(source.WaitForExit(Limit) == (int)MigrationGuest.Success, Dump(source, destination));
        Assert.Contains("the destination refused the migration: the source runs engine kvm, and this host runs sim only", source.Stderr);
        Assert.Equal("nestor: migration workload: 1500 passes; every one of its 256 pages holds 1500", CheckerLine(source.Stderr));
        Assert.Equal(120, destination.WaitForExit(Limit));
    }

    [Fact]
    public void Migration_options_are_checked_with_what_to_do()
    {
        var sim = NestorProcess.Run("run", "--migrate-to", "tcp:127.0.0.1:1");
        Assert.Equal(120, sim.ExitCode);
        Assert.Contains("migrate a VM of --engine kvm", sim.Stderr);
        var both = NestorProcess.Run("run", "--engine", "kvm", "--migrate-to", "tcp:127.0.0.1:1", "--incoming", "tcp:127.0.0.1:2");
        Assert.Equal(120, both.ExitCode);
        Assert.Contains("not both", both.Stderr);
        var lone = NestorProcess.Run("run", "--engine", "kvm", "--migrate-bandwidth", "1M");
        Assert.Equal(120, lone.ExitCode);
        Assert.Contains("Add --migrate-to", lone.Stderr);
        var workload = NestorProcess.Run("run", "--engine", "kvm", MigrationGuest.BuiltInName, "--cmdline", "pages=100000", "-m", "32M");
        Assert.Equal(120, workload.ExitCode);
        Assert.Contains("does not fit", workload.Stderr);
    }

    private (Child Source, Child Destination) Migrate(string workload, string memory, params string[] options)
    {
        var destination = Start("run", "--engine", "kvm", "--incoming", "tcp:127.0.0.1:0", "--timeout", "200");
        string address = AddressOf(destination);
        var source = Start([
            "run", "--engine", "kvm", MigrationGuest.BuiltInName, "--cmdline", workload, "-m", memory, "--migrate-to", address, "--timeout", "200", .. options,
        ]);
        return (source, destination);
    }

    private static string AddressOf(Child destination)
    {
        Assert.True(destination.WaitFor(() => destination.Stderr.Contains("waiting for a migration at"), Limit), destination.ToString());
        return Regex.Match(destination.Stderr, @"waiting for a migration at (tcp:\S+)").Groups[1].Value;
    }

    private static string CheckerLine(string stderr) =>
        stderr.Split('\n').SingleOrDefault(l => l.StartsWith("nestor: migration workload:", StringComparison.Ordinal)) ?? $"(no checker line in)\n{stderr}";

    private static List<MigrationRound> Rounds(string stderr) =>
    [
        .. Regex.Matches(stderr, @"migration round (\d+): (\d+) pages \((\d+) filled\), (\d+) bytes, ([\d.]+) ms, throttle (\d+)%").Select(m => new MigrationRound(
            int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), long.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture),
            long.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture), long.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture),
            double.Parse(m.Groups[5].Value, CultureInfo.InvariantCulture), int.Parse(m.Groups[6].Value, CultureInfo.InvariantCulture))),
    ];

    private static string Dump(Child source, Child destination) => $"\n=== source\n{source}\n=== destination\n{destination}";

    private Child Start(params string[] args)
    {
        var child = new Child(args);
        children.Add(child);
        return child;
    }
}
