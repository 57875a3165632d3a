using System.CommandLine;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory.Sharing;
using Nestor.Hypervisor.Memory.Swapping;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor bench overcommit sharing|swap|balloon|squeeze</c>: memory overcommitment on the software machine
/// (issue 15, docs/overcommit.md): the memory content-based page sharing saves for 1…N identical NestorOS VMs
/// (Waldspurger, OSDI 2002, Fig. 4), a VM squeezed by host swapping, and a VM ballooned to half its size against one
/// configured that small, and the same squeeze by host swapping (Fig. 2, §3.2–3.3).</summary>
internal static class BenchOvercommitCommand
{
    private const string DefaultWorkload = "compute 20000 ; syscall 500 ; forkwait 5";

    public static Command Create()
    {
        var command = new Command("overcommit", "Memory overcommitment on sim: page sharing across identical VMs, host swapping, ballooning; KVM with KSM and real resident memory");
        // One line per subcommand: each builds its own Command.
        foreach (var subcommand in new[] { Sharing(), Swap(), Balloon(), Squeeze(), BenchOvercommitKvm.Create(), BenchOvercommitStatesCommand.Create(), BenchOvercommitIdleTax.Create() })
        {
            command.Subcommands.Add(subcommand);
        }
        return command;
    }

    private static Option<string> Workload() => new("--workload") { Description = "Each VM's NestorOS command line", DefaultValueFactory = _ => DefaultWorkload };

    private static Option<string> Memory() => new("--memory", "-m") { Description = "Each VM's RAM", DefaultValueFactory = _ => "32M" };

    private static Command Sharing()
    {
        var vms = new Option<string>("--vms") { Description = "How many identical VMs: a range 1..10 or a list 1,2,4", DefaultValueFactory = _ => "1..10" };
        var rate = new Option<double>("--pages-per-second") { Description = "The scanner's system-wide rate, pages per second of virtual time", DefaultValueFactory = _ => 2_000_000 };
        var workload = Workload();
        var memory = Memory();
        var command = new Command("sharing", "Memory saved by content-based page sharing for 1..N identical NestorOS VMs (the shape of Waldspurger's Fig. 4)")
        {
            vms, rate, workload, memory,
        };
        command.SetAction(parse => Guarded(() =>
        {
            var counts = ParseCounts(parse.GetValue(vms)!);
            double pagesPerSecond = parse.GetValue(rate);
            if (!(pagesPerSecond > 0) || double.IsInfinity(pagesPerSecond))
            {
                throw new BadInputException($"--pages-per-second must be a positive number, not {pagesPerSecond}", "Give e.g. --pages-per-second 2000000");
            }
            ulong bytes = Size.Parse(parse.GetValue(memory)!, "--memory");
            string cmdline = parse.GetValue(workload)!;
            var native = SoloRun(cmdline, bytes);
            var c = CultureInfo.InvariantCulture;
            Console.WriteLine(string.Create(c, $"Identical NestorOS VMs ({bytes >> 20} MiB, '{cmdline}', hw + nested paging) on one sim host; the scanner runs between rounds at {pagesPerSecond:N0} pages/s of virtual time, then scans everything twice more. Measured {DateTime.UtcNow:yyyy-MM-dd}."));
            Console.WriteLine($"{"VMs",4} {"guest pages",11} {"host frames",11} {"shared",7} {"sharing",8} {"zero",6} {"saved MiB",9} {"saved %",7} {"res MiB",8} {"res freed",9} {"RSS freed",9} {"COW",5} {"scanned",8} {"scan ms",8} {"model Mcyc",10} {"results",8}");
            foreach (var row in SharingBench.Run(counts, cmdline, bytes, pagesPerSecond, native))
            {
                var k = row.Counters;
                Console.WriteLine(string.Create(c, $"{row.Vms,4} {row.GuestPages,11} {row.HostFrames,11} {k.PagesShared,7} {k.PagesSharing,8} {k.ZeroPages,6} {k.BytesSaved / 1048576.0,9:0.00} {row.SavedPercent,7:0.0} {row.ResidentAfter / 1048576.0,8:0.00} {(row.ResidentBefore - row.ResidentAfter) / 1048576.0,9:0.00} {(row.RssBefore - row.RssAfter) / 1048576.0,9:0.00} {k.CopyOnWriteBreaks,5} {k.PagesScanned,8} {k.ScanTime.TotalMilliseconds,8:0.0} {k.ModelledCycles / 1e6,10:0.00} {(row.AllNative ? "native" : "DIFFER"),8}"));
                if (!row.AllNative)
                {
                    throw new WorkloadFailedException($"with {row.Vms} VMs some VM's RESULT lines differ from a VM's alone", "Report it: sharing must not change what the guest computes");
                }
            }
            Console.WriteLine("res MiB: the VMs' RAM and the frame pool resident in the host after the final scans (mincore); res freed: what those scans gave back; RSS freed: the fall of this process's VmRSS over them (/proc/self/status).");
            return 0;
        }));
        return command;
    }

    private static Command Swap()
    {
        var fraction = new Option<double>("--fraction") { Description = "Resident target as a fraction of the pages the VM touches alone", DefaultValueFactory = _ => 0.5 };
        var diskUs = new Option<double>("--disk-us") { Description = "Modelled host swap disk latency per 4 KiB read or write, in µs (an assumption: a SATA SSD's random 4 KiB access)", DefaultValueFactory = _ => 100 };
        var directory = new Option<string>("--swap-dir") { Description = "Where the host swap file goes", DefaultValueFactory = _ => Path.GetTempPath() };
        var workload = new Option<string>("--workload") { Description = "The VM's NestorOS command line", DefaultValueFactory = _ => "memtouch 16 rand ; compute 20000" };
        var memory = Memory();
        var command = new Command("swap", "A NestorOS VM squeezed by host swapping (random and clock victims): slowdown and swap counts")
        {
            fraction, directory, workload, memory, diskUs,
        };
        command.SetAction(parse => Guarded(() =>
        {
            double f = parse.GetValue(fraction), us = parse.GetValue(diskUs);
            if (!(us >= 0) || double.IsInfinity(us))
            {
                throw new BadInputException($"--disk-us must be a number of microseconds, not {us}", "Give e.g. --disk-us 100");
            }
            if (!(f > 0 && f <= 1))
            {
                throw new BadInputException($"--fraction must be in (0, 1], not {f}", "Give e.g. --fraction 0.5 to squeeze the VM to half its pages");
            }
            ulong bytes = Size.Parse(parse.GetValue(memory)!, "--memory");
            string cmdline = parse.GetValue(workload)!;
            var rows = SwapBench.Run(cmdline, bytes, f, parse.GetValue(directory)!);
            var c = CultureInfo.InvariantCulture;
            var baseline = rows[0];
            Console.WriteLine(string.Create(c, $"One NestorOS VM ({bytes >> 20} MiB, '{cmdline}', hw + nested paging) alone, then squeezed by host swapping to {f:0.##} of the {baseline.TouchedPages} pages it touches (target enforced every 50,000 instructions). Measured {DateTime.UtcNow:yyyy-MM-dd}."));
            Console.WriteLine($"{"run",-9} {"target",7} {"peak res",8} {"swap out",8} {"swap in",8} {"2x-page",7} {"2nd-ch",7} {"EPT faults",10} {"guest Mcyc",10} {"wall s",7} {"slowdown",8} {"model",6} {"results",8}");
            foreach (var r in rows)
            {
                string target = r.TargetPages?.ToString(c) ?? "-";
                double slowdown = r.Wall.TotalSeconds / baseline.Wall.TotalSeconds;
                // Modelled: the guest's own time at the default 1 GHz clock plus the swap disk's time for each page moved.
                double guestUs = r.GuestCycles / (Nestor.Hypervisor.Scheduling.HostClock.Default.CyclesPerMillisecond / 1000.0);
                double modelled = (guestUs + (r.SwappedIn + r.SwappedOut) * us) / guestUs;
                Console.WriteLine(string.Create(c, $"{r.Name,-9} {target,7} {r.PeakResident,8} {r.SwappedOut,8} {r.SwappedIn,8} {r.DoublePaging,7} {r.SecondChances,7} {r.NestedFaults,10} {r.GuestCycles / 1e6,10:0.00} {r.Wall.TotalSeconds,7:0.00} {slowdown,8:0.00} {modelled,6:0.00} {(r.Native ? "native" : "DIFFER"),8}"));
                if (r.Error is not null)
                {
                    Console.WriteLine($"  {r.Name}: swapping stopped: {r.Error}");
                }
            }
            Console.WriteLine("2x-page: double paging, counted as swap-ins caused by a device's DMA read (none without a guest disk). Slowdown: host wall time against the baseline's (after a warm-up run); the guest's own cycles do not change, its time is its own.");
            Console.WriteLine(string.Create(c, $"Model: (guest time at 1 GHz + (swap-ins + swap-outs) × {us:0.#} µs of swap disk) / guest time, the disk time a host would wait without overlapping it."));
            return rows.All(r => r.Native) ? 0 : throw new WorkloadFailedException("a squeezed run's RESULT lines differ from the baseline's", "Report it: host swapping must not change what the guest computes");
        }));
        return command;
    }

    private static Option<string> SmallSize() => new("--small") { Description = "What the VM is squeezed to (and the small VM's RAM)", DefaultValueFactory = _ => "16M" };

    private static Option<double> DiskLatency() => new("--disk-us")
    {
        Description = "Modelled swap disk latency per 4 KiB read or write, host's or guest's, in µs (an assumption: a SATA SSD's random 4 KiB access)",
        DefaultValueFactory = _ => 100,
    };

    // The squeeze benches' default: init's programs that allocate, fork and touch memory, and swaptouch over 3,600
    // pages (14 MiB): more than a 16 MiB NestorOS has free, less than a 32 MiB one has.
    private const string SqueezeWorkload = "memtouch 4 rand ; forkwait 20 ; swaptouch 3600 ; compute 20000";

    private static Command Balloon()
    {
        var memory = new Option<string>("--memory", "-m") { Description = "The ballooned VM's configured RAM", DefaultValueFactory = _ => "32M" };
        var small = SmallSize();
        var workload = new Option<string>("--workload") { Description = "Each VM's NestorOS programs (swap=vda is put before them)", DefaultValueFactory = _ => SqueezeWorkload };
        var diskUs = DiskLatency();
        var command = new Command("balloon", "A VM ballooned from its configured size to --small against a VM configured that small: the balloon's overhead (Waldspurger, Fig. 2: 1.4-4.4%)")
        {
            memory, small, workload, diskUs,
        };
        command.SetAction(parse => Guarded(() => PrintSqueeze(parse.GetValue(memory)!, parse.GetValue(small)!, parse.GetValue(workload)!, parse.GetValue(diskUs),
            [Nestor.Hypervisor.Memory.SqueezeKind.Small, Nestor.Hypervisor.Memory.SqueezeKind.Balloon], Path.GetTempPath())));
        return command;
    }

    private static Command Squeeze()
    {
        var memory = new Option<string>("--memory", "-m") { Description = "The squeezed VM's configured RAM", DefaultValueFactory = _ => "32M" };
        var small = SmallSize();
        var workload = new Option<string>("--workload") { Description = "Each VM's NestorOS programs (swap=vda is put before them)", DefaultValueFactory = _ => SqueezeWorkload };
        var diskUs = DiskLatency();
        var directory = new Option<string>("--swap-dir") { Description = "Where the host swap files go", DefaultValueFactory = _ => Path.GetTempPath() };
        var command = new Command("squeeze", "The balloon's squeeze done by host swapping instead (random and clock victims): slowdown, swap-ins, double paging")
        {
            memory, small, workload, diskUs, directory,
        };
        command.SetAction(parse => Guarded(() => PrintSqueeze(parse.GetValue(memory)!, parse.GetValue(small)!, parse.GetValue(workload)!, parse.GetValue(diskUs),
            [Nestor.Hypervisor.Memory.SqueezeKind.Small, Nestor.Hypervisor.Memory.SqueezeKind.Balloon, Nestor.Hypervisor.Memory.SqueezeKind.SwapRandom, Nestor.Hypervisor.Memory.SqueezeKind.SwapClock,
                Nestor.Hypervisor.Memory.SqueezeKind.BalloonAndSwap],
            parse.GetValue(directory)!)));
        return command;
    }

    private static int PrintSqueeze(string memoryText, string smallText, string workload, double diskUs, Nestor.Hypervisor.Memory.SqueezeKind[] kinds, string swapDirectory)
    {
        if (!(diskUs >= 0) || double.IsInfinity(diskUs))
        {
            throw new BadInputException($"--disk-us must be a number of microseconds, not {diskUs}", "Give e.g. --disk-us 100");
        }
        ulong full = Size.Parse(memoryText, "--memory"), small = Size.Parse(smallText, "--small");
        var rows = Nestor.Hypervisor.Memory.SqueezeBench.Run(workload, full, small, kinds, swapDirectory);
        var c = CultureInfo.InvariantCulture;
        double cyclesPerUs = Nestor.Hypervisor.Scheduling.HostClock.Default.CyclesPerMillisecond / 1000.0;
        var baseline = rows[0];
        double baseModel = baseline.ModelledMicroseconds(cyclesPerUs, diskUs);
        Console.WriteLine(string.Create(c, $"NestorOS 'swap=vda {workload}' on sim (hw + nested paging, a virtio-blk swap disk each): configured {small >> 20} MiB, against configured {full >> 20} MiB squeezed to {small >> 20} MiB. Measured {DateTime.UtcNow:yyyy-MM-dd}."));
        Console.WriteLine($"{"run",-12} {"config",6} {"target",7} {"balloon",7} {"guest out",9} {"guest in",8} {"host out",8} {"host in",8} {"2x-page",7} {"guest Mcyc",10} {"wall s",7} {"model ms",9} {"overhead",8} {"results",8}");
        foreach (var r in rows)
        {
            double model = r.ModelledMicroseconds(cyclesPerUs, diskUs);
            string name = r.Kind switch
            {
                Nestor.Hypervisor.Memory.SqueezeKind.Small => "small",
                Nestor.Hypervisor.Memory.SqueezeKind.Balloon => "ballooned",
                Nestor.Hypervisor.Memory.SqueezeKind.SwapRandom => "swap-random",
                Nestor.Hypervisor.Memory.SqueezeKind.SwapClock => "swap-clock",
                _ => "balloon+swap",
            };
            Console.WriteLine(string.Create(c, $"{name,-12} {(r.ConfiguredBytes >> 20) + "M",6} {r.ResidentTarget?.ToString(c) ?? "-",7} {r.BalloonPages,7} {r.GuestPagesOut,9} {r.GuestPagesIn,8} {r.HostSwapOuts,8} {r.HostSwapIns,8} {r.DoublePaging,7} {r.GuestCycles / 1e6,10:0.00} {r.Wall.TotalSeconds,7:0.00} {model / 1000,9:0.00} {(model / baseModel - 1) * 100,7:0.0}% {(r.Results == baseline.Results ? "same" : "DIFFER"),8}"));
        }
        Console.WriteLine(string.Create(c, $"overhead: modelled time against the small VM's: guest cycles at 1 GHz + {diskUs:0.#} µs of disk for every page the guest or the host moves. 2x-page: host swap-ins caused by the guest's disk DMA reading a host-swapped page (double paging). results: the programs' RESULT lines, cycles and paging reports aside."));
        return rows.All(r => r.Results == baseline.Results) ? 0
            : throw new WorkloadFailedException("a squeezed VM's RESULT lines differ from the small VM's", "Report it: squeezing a VM must not change what it computes");
    }

    private static List<string> SoloRun(string cmdline, ulong bytes)
    {
        var output = new MemoryStream();
        var sim = new Nestor.Hypervisor.Techniques.SimOptions { Technique = Nestor.Hypervisor.Techniques.Technique.HardwareAssist, Memory = Nestor.Hypervisor.Techniques.MemoryVirtualization.Nested };
        using var vm = Nestor.Hypervisor.Vm.Create(new Nestor.Hypervisor.Configuration.VmConfig { Engine = Nestor.Hypervisor.Configuration.EngineKind.Sim, Sim = sim, Kernel = Nestor.Hypervisor.BuiltIn.BuiltInGuests.Get("nestoros"), MemoryBytes = bytes, CommandLine = cmdline, SerialOutput = output });
        using var engine = new Nestor.Hypervisor.Engines.SimEngine(sim);
        var run = vm.Run(engine);
        vm.Serial.Flush();
        if (run.Outcome.Kind != Nestor.Hypervisor.Exits.VmOutcomeKind.DebugExit)
        {
            throw new WorkloadFailedException($"NestorOS alone did not finish: {run.Outcome.Message}", "Check the workload with nestor run --technique hw");
        }
        return [.. System.Text.Encoding.UTF8.GetString(output.ToArray()).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal))];
    }

    internal static List<int> ParseCounts(string text)
    {
        var bad = new BadInputException($"--vms '{text}' is not a range or list of VM counts", "Give e.g. --vms 1..10 or --vms 1,2,4,8 (1 to 64)");
        List<int> counts = [];
        if (text.Split("..") is [var from, var to])
        {
            if (!int.TryParse(from, CultureInfo.InvariantCulture, out int a) || !int.TryParse(to, CultureInfo.InvariantCulture, out int b) || a < 1 || b < a || b > 64)
            {
                throw bad;
            }
            counts.AddRange(Enumerable.Range(a, b - a + 1));
            return counts;
        }
        foreach (var part in text.Split(','))
        {
            if (!int.TryParse(part, CultureInfo.InvariantCulture, out int n) || n < 1 || n > 64)
            {
                throw bad;
            }
            counts.Add(n);
        }
        return counts;
    }

    private static int Guarded(Func<int> action)
    {
        try
        {
            return action();
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
    }
}
