using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Nestor.Cli.Output;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.CostModel;
using Nestor.Hypervisor.Errors;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench PROGRAM [ARGS]</c>: one NestorOS workload under each technique on the software machine,
/// with modelled cost (by a named profile), counted events and measured wall time, in one table.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var program = new Argument<string[]>("program") { Description = "A NestorOS program and its arguments, e.g. forkwait 40000", Arity = ArgumentArity.OneOrMore };
        var profile = new Option<string>("--profile") { Description = $"Cost profile: {string.Join(", ", CostProfile.All.Select(p => p.Name))}", DefaultValueFactory = _ => CostProfile.Pentium4.Name };
        var json = new Option<bool>("--json") { Description = "Print {\"rows\":[...]} as JSON instead of a table" };
        var memory = new Option<string>("--memory", "-m") { Description = "Guest RAM", DefaultValueFactory = _ => "64M" };
        var verbose = new Option<bool>("--verbose") { Description = "Show stack traces of internal errors" };
        var timeout = TypedOptions.Seconds("--timeout", "Stop any one run (each technique runs the program and a baseline) that takes longer than this many seconds; the bench then fails");
        var command = new Command("bench", "Run one NestorOS program natively, under hardware assist with shadow paging and with nested paging, and compare modelled cost and counted events")
        {
            program, profile, json, memory, verbose, timeout,
        };
        command.Subcommands.Add(BenchDiskCommand.Create());
        command.Subcommands.Add(Host.BenchConsolidateCommand.Create());
        command.Subcommands.Add(BenchOvercommitCommand.Create());
        command.Subcommands.Add(BenchMigrateCommand.Create());
        var mmuOptions = new MmuOptions();
        foreach (var option in mmuOptions.All)
        {
            command.Options.Add(option);
        }
        command.SetAction(parse =>
        {
            try
            {
                var costs = CostProfile.Find(parse.GetValue(profile)!) ?? throw new BadInputException(
                    $"there is no cost profile '{parse.GetValue(profile)}'", $"Use --profile {string.Join(" or ", CostProfile.All.Select(p => p.Name))}");
                // The program's words are checked as NestorOS would read them: System.CommandLine hands this
                // argument every token it does not know, unknown options included.
                string commandLine = NestorOSCommandLine.Check(parse.GetValue(program)!);
                TimeSpan? limit = parse.GetValue(timeout) is { } seconds ? TypedOptions.ToTimeSpan(seconds) : null;
                ulong bytes = Size.Parse(parse.GetValue(memory)!, "--memory");
                bool asJson = parse.GetValue(json);
                var kernel = new KernelImageSource("built-in NestorOS", BuiltInGuests.NestorOS(), KernelFormat.Elf);
                var progress = asJson ? null : Console.Out;
                progress?.WriteLine($"nestor bench: '{commandLine}' on the software machine, costed with the {costs.Name} profile");
                var caches = mmuOptions.Parse(parse);
                var configurations = BenchConfiguration.Standard.Select(c => c with { Options = c.Options with { Mmu = caches } }).ToList();
                var result = TechniqueComparison.Run(kernel, commandLine, bytes, costs, configurations, progress, limit);
                if (asJson)
                {
                    WriteJson(result);
                }
                else
                {
                    WriteTable(result);
                }
                return 0;
            }
            catch (Exception e)
            {
                return CommandErrors.Report(e, parse.GetValue(verbose));
            }
        });
        return command;
    }

    private static string Exits(MachineEvents e) =>
        e.TotalExits == 0 ? "0" : $"{e.TotalExits:N0} (" + string.Join(", ", e.Exits.Where(x => x.Value > 0).OrderByDescending(x => x.Value).Take(3)
            .Select(x => $"{Name(x.Key.ToString())} {x.Value:N0}")) + ")";

    private static void WriteTable(ComparisonResult r)
    {
        var p = r.Profile;
        Console.WriteLine();
        Console.WriteLine($"Workload '{r.Workload}', net of a boot running '{r.Baseline}'. Modelled with the {p.Name} profile ({p.Description});");
        Console.WriteLine("counts are the software machine's; wall time is this host's, for the whole run. Sources of the costs: docs/cost-model.md.");
        Console.WriteLine();
        long operations = r.Operations ?? 0;
        Console.WriteLine($"{"configuration",-13} {"modelled cycles",16} {"modelled ms",12} {"× native",9} {(operations > 0 ? "cycles/op" : ""),10} {"instructions",14} {"page walks",11} {"refs/walk",9} {"TLB miss",9} {"hidden/true #PF",16} {"PT writes",10} {"wall s",7}  entries into the VMM: exits, traps, callouts (most frequent)");
        foreach (var row in r.Rows)
        {
            var e = row.Events;
            string perOperation = operations > 0 ? $"{row.Cost.Total / operations:N0}" : "";
            string faults = row.Configuration.Mmu == "shadow" ? $"{e.HiddenFaults:N0}/{e.TrueFaults:N0}" : "–";
            string writes = row.Configuration.Mmu == "shadow" ? $"{e.PageTableWrites:N0}" : "–"; // writes that trapped
            Console.WriteLine($"{row.Configuration.Name,-13} {row.Cost.Total,16:N0} {row.Cost.Time(p).TotalMilliseconds,12:N2} {row.RatioToNative,9:N2} {perOperation,10} {e.Instructions,14:N0} " +
                $"{e.Walks,11:N0} {e.ReferencesPerWalk,9:N2} {e.TlbMissRate * 100,8:N2}% {faults,16} {writes,10} {row.Wall.TotalSeconds,7:N2}  {Exits(e)}");
        }
        string program = r.Workload.Split(' ')[0];
        if (p.References.TryGetValue(program, out var reference))
        {
            Console.WriteLine();
            Console.WriteLine($"Beside the published figures ({reference.Source}):");
            foreach (var (name, ratio) in reference.Ratios)
            {
                var row = r.Rows.FirstOrDefault(row => row.Configuration.Name == name);
                Console.WriteLine($"  {name,-13} published {ratio,6:N2} × native   modelled here {(row is null ? "–" : $"{row.RatioToNative:N2} × native")}");
            }
        }
        Console.WriteLine();
        Console.WriteLine("Where the modelled cycles went (instructions / memory / page walks / guest events / exit transitions / VMM work):");
        foreach (var row in r.Rows)
        {
            var c = row.Cost;
            Console.WriteLine($"  {row.Configuration.Name,-13} {c.Instructions,14:N0} / {c.Memory,12:N0} / {c.PageWalks,12:N0} / {c.Events,12:N0} / {c.ExitTransitions,12:N0} / {c.VmmWork,12:N0}");
        }
        Console.WriteLine();
        Console.WriteLine($"Results under {r.Rows[0].Configuration.Name} (timing fields left out):");
        foreach (var line in r.Results)
        {
            Console.WriteLine($"  {line}");
        }
        foreach (var row in r.Rows.Where(row => row.ResultsDiffer.Count > 0))
        {
            Console.WriteLine($"Under {row.Configuration.Name} these differ" +
                (row.Configuration.Technique == "trap" ? " (trap-and-emulate cannot catch sensitive unprivileged instructions: expected on x86):" : ":"));
            foreach (var line in row.ResultsDiffer)
            {
                Console.WriteLine($"  {line}");
            }
        }
    }

    private static void WriteJson(ComparisonResult r)
    {
        using var stream = Console.OpenStandardOutput();
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("workload", r.Workload);
        json.WriteString("baseline", r.Baseline);
        json.WriteString("profile", r.Profile.Name);
        json.WriteString("profile_description", r.Profile.Description);
        json.WriteNumber("clock_hz", r.Profile.ClockHz);
        json.WriteStartArray("rows");
        foreach (var row in r.Rows)
        {
            var e = row.Events;
            json.WriteStartObject();
            json.WriteString("technique", row.Configuration.Technique);
            if (row.Configuration.Mmu is { } mmu)
            {
                json.WriteString("mmu", mmu);
            }
            else
            {
                json.WriteNull("mmu");
            }
            json.WriteNumber("modelled_cycles", Math.Round(row.Cost.Total));
            json.WriteNumber("modelled_seconds", row.Cost.Time(r.Profile).TotalSeconds);
            json.WriteNumber("ratio_to_native", row.RatioToNative);
            if (r.Operations is { } n)
            {
                json.WriteNumber("operations", n);
                json.WriteNumber("modelled_cycles_per_operation", row.Cost.Total / n);
            }
            json.WriteStartObject("modelled_cycles_by_part");
            json.WriteNumber("instructions", Math.Round(row.Cost.Instructions));
            json.WriteNumber("memory", Math.Round(row.Cost.Memory));
            json.WriteNumber("page_walks", Math.Round(row.Cost.PageWalks));
            json.WriteNumber("guest_events", Math.Round(row.Cost.Events));
            json.WriteNumber("exit_transitions", Math.Round(row.Cost.ExitTransitions));
            json.WriteNumber("vmm_work", Math.Round(row.Cost.VmmWork));
            json.WriteEndObject();
            json.WriteNumber("instructions", e.Instructions);
            json.WriteNumber("memory_references", e.MemoryReferences);
            json.WriteNumber("page_walks", e.Walks);
            json.WriteNumber("page_walk_references", e.WalkReferences);
            json.WriteNumber("nested_walk_references", e.NestedWalkReferences);
            json.WriteNumber("references_per_walk", e.ReferencesPerWalk);
            json.WriteNumber("tlb_miss_rate", e.TlbMissRate);
            json.WriteNumber("vm_exits", e.TotalExits);
            json.WriteStartObject("vm_exits_by_reason");
            foreach (var (reason, count) in e.Exits.Where(x => x.Value != 0).OrderByDescending(x => x.Value))
            {
                json.WriteNumber(Name(reason.ToString()), count);
            }
            json.WriteEndObject();
            json.WriteNumber("shadow_hidden_faults", e.HiddenFaults);
            json.WriteNumber("shadow_true_faults", e.TrueFaults);
            json.WriteNumber("shadow_page_table_writes", e.PageTableWrites);
            json.WriteNumber("vmm_walk_references", e.VmmWalkReferences);
            json.WriteNumber("wall_seconds", row.Wall.TotalSeconds);
            json.WriteBoolean("results_match", row.ResultsDiffer.Count == 0);
            json.WriteStartArray("results_that_differ");
            foreach (var line in row.ResultsDiffer)
            {
                json.WriteStringValue(line);
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        json.WriteEndArray();
        if (r.Profile.References.TryGetValue(r.Workload.Split(' ')[0], out var reference))
        {
            json.WriteStartObject("published_ratios_to_native");
            json.WriteString("source", reference.Source);
            foreach (var (name, ratio) in reference.Ratios)
            {
                json.WriteNumber(name, ratio);
            }
            json.WriteEndObject();
        }
        json.WriteStartArray("results");
        foreach (var line in r.Results)
        {
            json.WriteStringValue(line);
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static string Name(string pascal) =>
        string.Concat(pascal.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLower(c, CultureInfo.InvariantCulture) : char.ToLower(c, CultureInfo.InvariantCulture).ToString()));
}
