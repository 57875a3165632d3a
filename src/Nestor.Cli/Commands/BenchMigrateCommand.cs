using System.CommandLine;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Migration;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench migrate</c>: live migrations of a NestorOS VM running <c>migtouch</c> with small and large
/// writable working sets, between two hosts in this process over loopback TCP (docs/migration.md), by pre-copy,
/// post-copy and hybrid, with and without the balloon inflated to the guest's free memory first: total time,
/// downtime, rounds and pages sent per round, and post-copy's demand faults, measured (<see cref="MigrationBench"/>).</summary>
internal static class BenchMigrateCommand
{
    // Writable working sets: 256 pages written slowly (2,048 LCG steps after every page), 1,024 pages slowly and fast
    // (after every 64 pages), and 4,096 pages as fast as the guest can (faster than the link: only the throttle makes
    // the rounds shrink). Each runs long enough (tens of seconds unmigrated here) to be migrated mid-run.
    private static readonly string[] DefaultWorkloads = ["migtouch 256 200 1", "migtouch 1024 50 1", "migtouch 1024 1200 64", "migtouch 4096 3000 0"];

    public static Command Create()
    {
        var workloads = new Option<string[]>("--workload") { Description = "A migtouch command line; may be repeated (default: four writable working sets)", Arity = ArgumentArity.ZeroOrMore };
        var memory = new Option<string>("--memory", "-m") { Description = "The VM's RAM", DefaultValueFactory = _ => "24M" };
        var technique = new Option<string>("--technique") { Description = "native, hw (nested paging), trap, bt or pv", DefaultValueFactory = _ => "hw" };
        var bandwidth = new Option<string>("--max-bandwidth") { Description = "The link's limit (QEMU's default 128M)", DefaultValueFactory = _ => "128M" };
        var downtime = new Option<double>("--downtime-limit") { Description = "Milliseconds (QEMU's default 300)", DefaultValueFactory = _ => 300 };
        var noConverge = new Option<bool>("--no-auto-converge") { Description = "Without QEMU's auto-converge throttle" };
        var warmUp = new Option<double>("--warm-up-ms") { Description = "Wall milliseconds the guest runs before the migration starts", DefaultValueFactory = _ => 300 };
        var methods = new Option<string[]>("--method")
        {
            Description = "precopy, postcopy or hybrid, each optionally +balloon (inflate the balloon to the guest's free memory first); may be repeated (default: precopy)",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var command = new Command("migrate", "Live migration of migtouch with small and large writable working sets, by pre-copy, post-copy or hybrid, with or without the balloon first: total time, downtime, rounds, pages per round, demand faults")
        {
            workloads, memory, technique, bandwidth, downtime, noConverge, warmUp, methods,
        };
        command.SetAction(parse =>
        {
            try
            {
                var c = CultureInfo.InvariantCulture;
                string[] lines = parse.GetValue(workloads) is { Length: > 0 } given ? given : DefaultWorkloads;
                ulong bytes = Size.Parse(parse.GetValue(memory)!, "--memory");
                var sim = parse.GetValue(technique) switch
                {
                    "native" => new SimOptions(),
                    "hw" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
                    "trap" => new SimOptions { Technique = Technique.TrapAndEmulate },
                    "bt" => new SimOptions { Technique = Technique.BinaryTranslation },
                    "pv" => new SimOptions { Technique = Technique.Paravirtual },
                    var t => throw new BadInputException($"there is no technique '{t}'", "Use native, hw, trap, bt or pv"),
                };
                long limit = (long)Size.Parse(parse.GetValue(bandwidth)!, "--max-bandwidth");
                double ms = parse.GetValue(downtime);
                bool converge = !parse.GetValue(noConverge);
                string[] chosen = parse.GetValue(methods) is { Length: > 0 } m ? m : ["precopy"];
                Console.WriteLine(string.Create(c, $"Live migration of NestorOS ({bytes >> 20} MiB, {sim.Name}) between two sim hosts in one process over loopback TCP; " +
                    $"max-bandwidth {limit / 1048576.0:0.#} MiB/s, downtime-limit {ms:0} ms, auto-converge {(converge ? "on" : "off")}. {Environment.ProcessorCount} host CPUs, measured {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC."));
                Console.WriteLine($"{"workload",-22} {"method",-16} {"rounds",6} {"total ms",9} {"downtime ms",11} {"MiB sent",9} {"balloon",7} {"throttle",8} {"demanded",8} {"prepaged",8} {"faults",6} {"wait ms",8} {"checker",7}  pages per round (pre-copy: last is the stop-and-copy; post-copy: after the switch-over)");
                var rows = new List<MigrationBenchRow>();
                foreach (string line in lines)
                {
                    foreach (string method in chosen)
                    {
                        string[] parts = method.Split('+');
                        var mode = MigrationSettings.ParseMode(parts[0]);
                        bool balloon = parts.Length == 2 && parts[1] == "balloon"
                            ? true
                            : parts.Length == 1 ? false : throw new BadInputException($"--method '{method}' is not METHOD or METHOD+balloon", "Give e.g. precopy, postcopy+balloon");
                        var row = MigrationBench.RunOne(line, sim, bytes, address => new MigrationSettings(address)
                        {
                            MaxBandwidth = limit,
                            DowntimeLimit = TimeSpan.FromMilliseconds(ms),
                            AutoConverge = converge,
                            Mode = mode,
                            BalloonFirst = balloon,
                        }, TimeSpan.FromMilliseconds(parse.GetValue(warmUp)));
                        rows.Add(row);
                        var s = row.Status;
                        var p = s.PostCopy;
                        int maxThrottle = s.Rounds.Where(r => r.ThrottlePercent < 100).Select(r => r.ThrottlePercent).DefaultIfEmpty(0).Max();
                        Console.WriteLine(string.Create(c, $"{row.Workload,-22} {row.Method,-16} {s.Rounds.Count,6} {s.TotalMilliseconds,9:0} {s.DowntimeMilliseconds ?? 0,11:0.0} {s.BytesSent / 1048576.0,9:0.00} {s.BalloonPages,7} {maxThrottle,7}% " +
                            $"{(p is null ? "-" : p.Demanded.ToString(c)),8} {(p is null ? "-" : p.Prepaged.ToString(c)),8} {(p is null ? "-" : p.DemandFaults.ToString(c)),6} {(p is null ? "-" : p.FaultWaitMilliseconds.ToString("0.0", c)),8} " +
                            $"{(row.Consistent ? "ok" : "FAILED"),7}  {string.Join(' ', s.Rounds.Select(r => r.Pages))}"));
                    }
                }
                return rows.All(r => r.Consistent) ? 0 : 1;
            }
            catch (Exception e)
            {
                return CommandErrors.Report(e);
            }
        });
        return command;
    }
}
