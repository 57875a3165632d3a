using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory.Kvm;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench overcommit kvm</c>: memory overcommitment on KVM, where the memory is real (issue 15,
/// docs/overcommit.md "On KVM"): 1…k ring-0 pattern VMs in one process with their RAM offered to the host's KSM,
/// resident and proportional memory before and after the scanner settles, and one VM ballooned down.</summary>
internal static class BenchOvercommitKvm
{
    public static Command Create()
    {
        var vms = new Option<string>("--vms") { Description = "How many VMs: a range 1..4 or a list 1,2,4", DefaultValueFactory = _ => "1..3" };
        var memory = new Option<string>("--memory", "-m") { Description = "Each VM's RAM (more than 2 MiB; small, as this host's nested KVM runs the guest slowly)", DefaultValueFactory = _ => "4M" };
        var identical = new Option<double>("--identical") { Description = "Fraction of each VM's fill that is the same in every VM", DefaultValueFactory = _ => 0.5 };
        var zero = new Option<double>("--zero") { Description = "Fraction written with zeros (the rest is random, unique per VM)", DefaultValueFactory = _ => 0.25 };
        var balloon = new Option<double>("--balloon") { Description = "Fraction of the fill the balloon run inflates", DefaultValueFactory = _ => 0.5 };
        var pages = TypedOptions.Integer("--pages-to-scan", "KSM's pages_to_scan while the bench runs (default 4000)", 1, 1_000_000, "a number of pages from 1 to 1000000", "--pages-to-scan 4000");
        var sleep = TypedOptions.Integer("--sleep-ms", "KSM's sleep_millisecs while the bench runs (default 10)", 0, 60_000, "milliseconds from 0 to 60000", "--sleep-ms 10");
        var settle = TypedOptions.Seconds("--settle-timeout", "Longest wait for KSM to settle per row, in seconds (default 180)");
        var verbose = new Option<bool>("--verbose") { Description = "Show stack traces of internal errors" };
        var command = new Command("kvm", "Memory overcommitment on KVM, measured from real resident memory: KSM across 1..N ring-0 pattern VMs, and a VM ballooned down with madvise")
        {
            vms, memory, identical, zero, balloon, pages, sleep, settle, verbose,
        };
        command.SetAction(parse =>
        {
            // SIGINT and SIGTERM end the process without running the KSM session's using: restore there too.
            using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, _ => SamePageMerging.RestoreCurrent());
            using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, _ => SamePageMerging.RestoreCurrent());
            try
            {
                var counts = BenchOvercommitCommand.ParseCounts(parse.GetValue(vms)!);
                var settings = new KvmOvercommitSettings(Size.Parse(parse.GetValue(memory)!, "--memory"), parse.GetValue(identical), parse.GetValue(zero),
                    parse.GetValue(balloon), parse.GetValue(pages) ?? 4000, parse.GetValue(sleep) ?? 10,
                    parse.GetValue(settle) is { } limit ? TypedOptions.ToTimeSpan(limit) : null);
                _ = settings.Plan; // validates the fractions and the memory before anything runs
                Console.Error.WriteLine($"nestor: {counts.Count} sharing rows and a balloon run of {settings.MemoryBytes >> 20} MiB pattern VMs on KVM");
                var report = KvmOvercommitBench.Run(counts, settings, Console.Error);
                Print(report);
                return 0;
            }
            catch (Exception e)
            {
                return CommandErrors.Report(e, parse.GetValue(verbose));
            }
        });
        return command;
    }

    private static void Print(KvmOvercommitReport report)
    {
        var c = CultureInfo.InvariantCulture;
        var s = report.Settings;
        var p = report.Plan;
        static string MiB(double pages) => (pages * ResidentMemory.PageBytes / 1048576.0).ToString("0.00", CultureInfo.InvariantCulture);
        Console.WriteLine(string.Create(c, $"Ring-0 pattern VMs on KVM, one process, {s.MemoryBytes >> 20} MiB each; each fills {p.FilledPages} pages from 2 MiB: {p.IdenticalPages} identical across VMs, {p.ZeroPages} zero, {p.RandomPages} random (seeded per VM). KSM: {report.Ksm.Reason}; pages_to_scan {s.PagesToScan} every {s.SleepMilliseconds} ms while measuring."));
        Console.WriteLine(string.Create(c, $"Measured {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.ProcessorCount} CPUs ({CpuModel()}), Linux {Environment.OSVersion.Version}. RSS and PSS of the VMs' RAM from /proc/self/pagemap and /proc/kpagecount; KSM counters from /sys/kernel/mm/ksm."));
        if (report.Sharing.Count > 0)
        {
            Console.WriteLine($"{"VMs",4} {"RSS MiB",8} {"PSS MiB",8} {"RSS' MiB",8} {"PSS' MiB",8} {"KSM pg",7} {"shared",7} {"sharing",8} {"saved MiB",9} {"per VM",7} {"saved %",7} {"model MiB",9} {"scans",6} {"settle s",8} {"smaps Rss",9} {"smaps Pss",9} {"smaps KSM",9} {"fill ms/pg",10} {"read ms/pg",10}");
            foreach (var r in report.Sharing)
            {
                var k = r.Counters;
                Console.WriteLine(string.Create(c, $"{r.Vms,4} {MiB(r.ResidentBefore),8} {MiB(r.ProportionalBefore),8} {MiB(r.ResidentAfter),8} {MiB(r.ProportionalAfter),8} {r.KsmPages,7} {k.PagesShared,7} {k.PagesSharing,8} {MiB(r.SavedPages),9} {r.SavedBytesPerVm / 1048576.0,7:0.00} {r.SavedPercent,7:0.0} {MiB(r.ModelledSavedPages),9} {k.FullScans,6} {r.SettleTime.TotalSeconds,8:0.0} {r.Smaps.RssBytes / 1048576.0,9:0.00} {r.Smaps.PssBytes / 1048576.0,9:0.00} {r.Smaps.KsmBytes / 1048576.0,9:0.00} {r.FillMillisecondsPerPage,10:0.0} {r.VerifyMillisecondsPerPage,10:0.0}"));
            }
            Console.WriteLine("RSS, PSS: once filled, KSM stopped; RSS', PSS': after it settled. A merged page stays mapped in every VM (RSS does not drop) but is held once (PSS counts 1/k of a page shared k ways); saved = RSS' - PSS'. shared, sharing, scans: KSM's pages_shared, pages_sharing, full_scans (host-wide). model: the pages the fill plan lets KSM save, (N-1) x identical + (N x zero - 1), the boot pages below 2 MiB left out. fill ms/pg: the slowest VM's time to fill, per page it wrote (its first touch of each page faults it in); read ms/pg: its time to re-read every word after KSM settled (the same instructions; a fault only where KSM remapped a page).");
        }
        var b = report.Balloon;
        Console.WriteLine(string.Create(c, $"Balloon: one VM ({b.GuestPages} pages of RAM) filled, then {b.BalloonPages} pages inflated through the port balloon and released with madvise(MADV_DONTNEED): its RAM's RSS {MiB(b.ResidentFilled)} -> {MiB(b.ResidentInflated)} MiB ({b.BytesReturned / 1048576.0:0.00} MiB returned; process RSS {b.ProcessRssFilled / 1048576.0:0.0} -> {b.ProcessRssInflated / 1048576.0:0.0} MiB); deflated and read back: {(b.ReadBackZero ? "all zero" : "NOT ZERO")}, RSS {MiB(b.ResidentDeflated)} MiB."));
        foreach (string limitation in report.Limitations)
        {
            Console.WriteLine($"Not shown: {limitation}");
        }
    }

    private static string CpuModel()
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "unknown CPU";
        }
        catch (IOException)
        {
            return "unknown CPU";
        }
    }
}
