using System.CommandLine;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;

namespace Nestor.Cli.Commands.Host;

/// <summary><c>nestor bench consolidate</c>: the four-VMs-at-40% experiment, fairness under equal and unequal shares,
/// a reservation, limits and caps, and a latency-sensitive VM next to CPU-bound ones, under both schedulers, in one
/// table (docs/host.md).</summary>
internal static class BenchConsolidateCommand
{
    public static Command Create()
    {
        var duration = new Option<double>("--duration-ms") { Description = "Virtual time each experiment runs", DefaultValueFactory = _ => 1000 };
        var mhz = new Option<double>("--mhz") { Description = "The virtual clock's rate: at 100 MHz a 10 ms tick is a million instructions", DefaultValueFactory = _ => 100 };
        var command = new Command("consolidate", "Server consolidation on one host CPU: limits, shares, reservations, caps and latency under share and credit; credit's load balancing on two")
        {
            duration, mhz,
        };
        command.SetAction(parse =>
        {
            try
            {
                double ms = parse.GetValue(duration), rate = parse.GetValue(mhz);
                if (!(ms > 0) || !double.IsFinite(ms) || !(rate >= 1) || !double.IsFinite(rate))
                {
                    throw new BadInputException("--duration-ms and --mhz must be positive numbers", "Give e.g. --duration-ms 1000 --mhz 100");
                }
                var clock = new HostClock((long)(rate * 1000));
                var experiments = ConsolidationBench.Run(clock, ms);
                Print(experiments, ms, rate);
                return 0;
            }
            catch (NestorException e)
            {
                return CommandErrors.Report(e);
            }
        });
        return command;
    }

    private static void Print(IReadOnlyList<ConsolidationExperiment> experiments, double duration, double mhz)
    {
        var c = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(c, $"One host CPU unless the experiment says otherwise, {duration:0.#} ms of virtual time per experiment, {mhz:0.#} MHz virtual clock; CPU % is measured (retired cycles over host time), entitled % is what ESX's rules give by the controls (reservations, then shares, limits water-filled); Xen's credit scheduler gives a capped VM at most its weight's share; migr: moves to another host CPU's run queue (credit's load balancing)."));
        Console.WriteLine($"{"experiment",-28} {"sched",-6} {"vm",-9} {"shares",6} {"resv%",5} {"limit%",6} {"cpu %",7} {"ESX-entl",8} {"lat mean",9} {"lat max",8} {"migr",5}");
        foreach (var e in experiments)
        {
            foreach (var r in e.Rows)
            {
                string limit = r.Cpu.LimitPercent is { } l ? l.ToString("0.#", c) : "-";
                string expected = r.ExpectedPercent is { } x ? x.ToString("0.0", c) : "-";
                string mean = r.MeanLatencyMilliseconds is { } m ? m.ToString("0.000", c) + "ms" : "-";
                string max = r.MaximumLatencyMilliseconds is { } mx ? mx.ToString("0.00", c) + "ms" : "-";
                Console.WriteLine(string.Create(c, $"{e.Name,-28} {e.Scheduler,-6} {r.Vm,-9} {r.Cpu.Shares,6} {r.Cpu.ReservationPercent,5:0.#} {limit,6} {r.CpuPercent,7:0.00} {expected,8} {mean,9} {max,8} {r.Migrations,5}"));
            }
            if (e.JainIndex is { } j)
            {
                Console.WriteLine(string.Create(c, $"{e.Name,-28} {e.Scheduler,-6} Jain's index over cpu/entitled: {j:0.0000}"));
            }
        }
    }
}
