using System.CommandLine;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory.Reclamation;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench overcommit idletax</c>: ESX's idle memory tax on two NestorOS VMs, one idle and one active,
/// with equal shares on a host short of memory, at τ = 0 and τ = 0.75 (issue 15; Waldspurger, OSDI 2002, §5.4, Fig. 8).</summary>
internal static class BenchOvercommitIdleTax
{
    public static Command Create()
    {
        var defaults = IdleTaxBenchSetup.Default;
        var taus = new Option<string>("--tau") { Description = "Tax rates to compare, a list in [0, 1)", DefaultValueFactory = _ => "0,0.75" };
        var memory = new Option<string>("--memory", "-m") { Description = "Each VM's RAM (its max)", DefaultValueFactory = _ => $"{defaults.MemoryBytes >> 20}M" };
        var min = new Option<string>("--min") { Description = "Each VM's min", DefaultValueFactory = _ => $"{defaults.MinBytes >> 20}M" };
        var hostMemory = new Option<string>("--host-memory") { Description = "Memory the host can give the two VMs together", DefaultValueFactory = _ => $"{defaults.AvailablePages >> 8}M" };
        var period = new Option<double>("--period-ms") { Description = "Sampling and policy period, in virtual milliseconds of the VM's clock", DefaultValueFactory = _ => defaults.SamplePeriodMilliseconds };
        var duration = new Option<double>("--duration-ms") { Description = "How long the host runs, in virtual milliseconds", DefaultValueFactory = _ => defaults.DurationMilliseconds };
        var samples = new Option<int>("--samples") { Description = "Pages sampled per period (ESX: 100)", DefaultValueFactory = _ => defaults.SamplesPerPeriod };
        var idle = new Option<string>("--idle-workload") { Description = "The idle VM's NestorOS command line", DefaultValueFactory = _ => defaults.IdleWorkload };
        var active = new Option<string>("--active-workload") { Description = "The active VM's NestorOS command line", DefaultValueFactory = _ => defaults.ActiveWorkload };
        var command = new Command("idletax", "An idle and an active NestorOS VM with equal shares on a host short of memory: the idle memory tax at τ = 0 against τ = 0.75 (Waldspurger's Fig. 8)")
        {
            taus, memory, min, hostMemory, period, duration, samples, idle, active,
        };
        command.SetAction(parse =>
        {
            try
            {
                var rates = ParseRates(parse.GetValue(taus)!);
                ulong bytes = Size.Parse(parse.GetValue(memory)!, "--memory"), minBytes = Size.Parse(parse.GetValue(min)!, "--min");
                ulong host = Size.Parse(parse.GetValue(hostMemory)!, "--host-memory");
                if (minBytes > bytes)
                {
                    throw new BadInputException($"--min {minBytes >> 20} MiB is more than --memory {bytes >> 20} MiB", "Give a min at most the VM's memory");
                }
                if (host < 2 * minBytes)
                {
                    throw new BadInputException($"--host-memory {host >> 20} MiB cannot hold the two VMs' mins ({2 * minBytes >> 20} MiB)", "Give more host memory or smaller --min");
                }
                double p = parse.GetValue(period), d = parse.GetValue(duration);
                if (!(p > 0) || !(d >= p) || double.IsInfinity(d))
                {
                    throw new BadInputException($"--period-ms {p} and --duration-ms {d} must be positive with the duration at least one period", "Give e.g. --period-ms 1 --duration-ms 40");
                }
                int n = parse.GetValue(samples);
                if (n < 1)
                {
                    throw new BadInputException($"--samples must be at least 1, not {n}", "Give e.g. --samples 100 (ESX's default)");
                }
                var setup = new IdleTaxBenchSetup(parse.GetValue(idle)!, parse.GetValue(active)!, bytes, minBytes, (long)(host >> 12), p, d, n);
                Print(setup, IdleTaxBench.Run(setup, rates));
                return 0;
            }
            catch (NestorException e)
            {
                Console.Error.WriteLine($"nestor: {e.Message}");
                if (e.Advice is not null)
                {
                    Console.Error.WriteLine($"  what to do: {e.Advice}");
                }
                return ExitStatus.For(e);
            }
        });
        return command;
    }

    private static void Print(IdleTaxBenchSetup setup, IEnumerable<IdleTaxRun> runs)
    {
        var c = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(c, $"Two NestorOS VMs ({setup.MemoryBytes >> 20} MiB max, {setup.MinBytes >> 20} MiB min, 1000 shares each, hw + nested paging, virtio balloon) on a host with {setup.AvailablePages} pages ({setup.AvailablePages >> 8} MiB) for both, {setup.DurationMilliseconds:0.#} ms of virtual time; {setup.SamplesPerPeriod} pages sampled per {setup.SamplePeriodMilliseconds:0.##} ms period, targets applied through the balloons every period. Measured {DateTime.UtcNow:yyyy-MM-dd}."));
        Console.WriteLine(string.Create(c, $"idle: '{setup.IdleWorkload}'; active: '{setup.ActiveWorkload.Split(" ; ")[0]}' x {setup.ActiveWorkload.Split(" ; ").Length}"));
        Console.WriteLine($"{"tau",5} {"VM",-7} {"f",5} {"last t/n",8} {"target",7} {"formula",7} {"held",6} {"peak",6} {"balloon",7} {"actual",7} {"inflated",8} {"deflated",8} {"faults",6} {"periods",7} {"programs",8} {"Mcyc/prog",9}");
        var all = new List<IdleTaxRun>();
        foreach (var run in runs)
        {
            all.Add(run);
            foreach (var v in run.Vms)
            {
                Console.WriteLine(string.Create(c, $"{run.TaxRate,5:0.00} {v.Name,-7} {v.ActiveFraction,5:0.00} {v.LastSample,8:0.00} {v.TargetPages,7} {v.FormulaPages,7} {v.HeldPages,6} {v.PeakHeldPages,6} {v.BalloonTarget,7} {v.BalloonActual,7} {v.PagesInflated,8} {v.PagesDeflated,8} {v.SampledFaults,6} {v.Periods,7} {v.Programs,8} {v.GuestCyclesPerProgram / 1e6,9:0.00}"));
            }
        }
        Console.WriteLine("f: the sampler's estimate (max of slow, fast and fast-with-current averages); target: the policy's; formula: equal ρ = S/(P(f + k(1-f))) solved in closed form for the same f; held: guest pages with a host frame at the end; balloon/actual: the target max - target and the driver's pages; faults: sampled pages touched (the sampling's minor faults); programs: RESULT lines of its programs in the run, Mcyc/prog: the mean total_cycles they measured for themselves.");
        foreach (var run in all)
        {
            Console.WriteLine(string.Create(c, $"  tau {run.TaxRate:0.00}: ") + string.Join("; ", run.Vms.Select(v => $"{v.Name}: {v.Outcome}")));
        }
        Console.WriteLine("Held pages (idle/active) over virtual time:");
        foreach (var run in all)
        {
            int stride = Math.Max(1, run.Timeline.Count / 10);
            var points = run.Timeline.Where((_, i) => i % stride == stride - 1 || i == run.Timeline.Count - 1).Distinct();
            Console.WriteLine(string.Create(c, $"  tau {run.TaxRate:0.00}: ") + string.Join("  ", points.Select(s => string.Create(c, $"{s.Milliseconds:0}ms {s.IdleHeld}/{s.ActiveHeld}"))));
        }
    }

    private static List<double> ParseRates(string text)
    {
        var rates = new List<double>();
        foreach (var part in text.Split(','))
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out double tau) || !(tau >= 0 && tau < 1))
            {
                throw new BadInputException($"--tau '{text}': '{part}' is not a tax rate in [0, 1)", "Give e.g. --tau 0,0.75 (τ = 1 is refused: an idle page would cost infinitely more than an active one)");
            }
            rates.Add(tau);
        }
        return rates;
    }
}
