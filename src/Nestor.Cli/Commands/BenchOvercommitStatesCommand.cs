using System.CommandLine;
using System.Globalization;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory.Reclamation;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench overcommit states</c>: a host short of memory driven through ESX's free-memory states and
/// back (Waldspurger, OSDI'02 §6.1; docs/overcommit.md, "Reclamation on one host").</summary>
internal static class BenchOvercommitStatesCommand
{
    public static Command Create()
    {
        var vms = new Option<int>("--vms") { Description = "How many VMs", DefaultValueFactory = _ => 4 };
        var memory = new Option<string>("--memory", "-m") { Description = "Each VM's memory (max; min is a quarter)", DefaultValueFactory = _ => "32M" };
        var hostMemory = new Option<string>("--host-memory") { Description = "Host memory", DefaultValueFactory = _ => "64M" };
        var workload = new Option<string>("--workload") { Description = "What every VM runs first (touching memory)", DefaultValueFactory = _ => "memtouch 20 seq" };
        var tail = new Option<string>("--tail") { Description = "What VM i runs i times after it, so that the VMs end one after another", DefaultValueFactory = _ => "compute 200000" };
        var step = new Option<double>("--step-ms") { Description = "Virtual milliseconds between rows (a row is also printed at every state change)", DefaultValueFactory = _ => 5 };
        var directory = new Option<string>("--swap-dir") { Description = "Where the host swap files go", DefaultValueFactory = _ => Path.GetTempPath() };
        var command = new Command("states", "A host short of memory driven through the free-memory states high, soft, hard, low and back: free memory, balloons, host swap per step")
        {
            vms, memory, hostMemory, workload, tail, step, directory,
        };
        command.SetAction(parse =>
        {
            try
            {
                int count = parse.GetValue(vms);
                if (count is < 1 or > 32)
                {
                    throw new BadInputException($"--vms {count} is out of range", "Give 1 to 32 VMs");
                }
                double stepMs = parse.GetValue(step);
                if (!(stepMs > 0) || double.IsInfinity(stepMs))
                {
                    throw new BadInputException($"--step-ms {stepMs} is not a length of time", "Give a positive number of milliseconds");
                }
                ulong vmBytes = Size.Parse(parse.GetValue(memory)!, "--memory");
                ulong hostBytes = Size.Parse(parse.GetValue(hostMemory)!, "--host-memory");
                string first = parse.GetValue(workload)!, then = parse.GetValue(tail)!;
                var result = StatesBench.Run(count, vmBytes, hostBytes, first, then, stepMs, parse.GetValue(directory)!);
                var c = CultureInfo.InvariantCulture;
                Console.WriteLine(string.Create(c,
                    $"{count} NestorOS VMs ({vmBytes >> 20} MiB max, {vmBytes >> 22} MiB min, balloon, hw + nested paging; VM i runs '{first}' then '{then}' i times) on a host of {hostBytes >> 20} MiB and 2 CPUs, a {result.Spec.Clock.CyclesPerMillisecond / 1000} MHz virtual clock; " +
                    $"thresholds {result.Spec.Overcommit.Thresholds}; proportional share (τ = 0); host swap random. Measured {DateTime.UtcNow:yyyy-MM-dd}, {result.Wall.TotalSeconds:0} s of wall time."));
                Console.WriteLine($"{"ms",8} {"free MiB",8} {"free %",6} {"state",-5} {"balloon target",14} {"ballooned",9} {"swapped",7} {"swap out",8} {"blocked",7} {"running",7}");
                foreach (var r in result.Rows)
                {
                    Console.WriteLine(string.Create(c,
                        $"{r.Milliseconds,8:0.0} {r.FreePages / 256.0,8:0.00} {r.FreePercent,6:0.0} {r.State.ToString().ToLowerInvariant(),-5} {r.BalloonTargetPages,14} {r.BalloonPages,9} {r.SwappedPages,7} {r.SwappedOutTotal,8} {r.BlockedVms,7} {r.RunningVms,7}"));
                }
                var s = result.States;
                string times = string.Join(", ", Enum.GetValues<MemoryState>().Select(st =>
                    string.Create(c, $"{st.ToString().ToLowerInvariant()} {result.Spec.Clock.Milliseconds(s.CyclesIn(st)):0.#} ms ({s.Entries(st)}×)")));
                Console.WriteLine($"time in each state: {times}; {s.Transitions} transitions");
                Console.WriteLine("Pages are 4 KiB. balloon target and ballooned: summed over the VMs; swapped: guest pages in the host swap files now; swap out: pages swapped out so far.");
                foreach (string outcome in result.Outcomes)
                {
                    Console.WriteLine($"  {outcome}");
                }
                return 0;
            }
            catch (Exception e)
            {
                return Output.CommandErrors.Report(e, verbose: false);
            }
        });
        return command;
    }
}
