using System.Diagnostics;
using System.Globalization;

namespace Nestor.Bench;

/// <summary><c>nestor-bench</c>: measures Nestor against QEMU/KVM on the same guest images and prints a markdown
/// section (machine, date, figures, ratios); <c>--write</c> puts it into bench/RESULTS.md. See bench/run.</summary>
public static class Program
{
    private const string Usage = """
        usage: nestor-bench [options]
               nestor-bench nestoros-tcg [options]   NestorOS's programs on QEMU TCG (see nestoros-tcg --help)
               nestor-bench sim-throughput [options] NestorOS on the sim engine against QEMU TCG, and the differential
                                                     test of sim against KVM (see sim-throughput --help)
          --nestor PATH        nestor executable (framework-dependent JIT build). Default: publish src/Nestor.Cli
                               in Release to bench/out/nestor-jit and use that
          --nestor-r2r PATH    also measure this ReadyToRun build of nestor
          --nestor-aot PATH    also measure this NativeAOT build of nestor
          --aot-note TEXT      why there is no NativeAOT build (goes into the report)
          --tweak-env [r2r:]K=V,...
                               also measure the --nestor build (with r2r: the --nestor-r2r build) started with
                               these runtime environment variables; may be given more than once
          --qemu PATH          QEMU (default: qemu-system-x86_64)
          --exits N            VM exits in the exit-cost guest (default 1000000)
          --reps N             repetitions of the exit-cost runs (default 5)
          --startup-reps N     repetitions of the start-up runs (default 10)
          --memory-reps N      repetitions of the memory runs (default 3)
          --write              put the section into bench/RESULTS.md (or --results PATH)
          --results PATH       the results file (default: bench/RESULTS.md of this repository)
          --command TEXT       how the benchmark was started, for the report (bench/run passes its own command line)
        """;

    public static int Main(string[] args)
    {
        try
        {
            return Run(args);
        }
        catch (BenchmarkException e)
        {
            Console.Error.WriteLine($"nestor-bench: {e.Message}");
            return 1;
        }
    }

    private static int Run(string[] args)
    {
        if (args.Length > 0 && args[0] == "nestoros-tcg")
        {
            return NestorOSBaseline.Run(args[1..], FindRepository());
        }
        if (args.Length > 0 && args[0] == "sim-throughput")
        {
            return SimThroughput.Run(args[1..], FindRepository());
        }
        var o = CommandOptions.Parse(args, "nestor-bench", Usage, null, "--tweak-env", out int exitCode);
        if (o is null)
        {
            return exitCode;
        }
        bool write = o.Write;
        var tweaks = o.Repeated;
        string repository = FindRepository();
        string outDirectory = Path.Combine(repository, "bench", "out");
        string images = Path.Combine(outDirectory, "images");
        Directory.CreateDirectory(images);

        string qemuPath = o.Get("--qemu", "qemu-system-x86_64");
        string nestorPath = o.TryGet("--nestor", out var given) ? Path.GetFullPath(given) : PublishNestor(repository, outDirectory);
        var vmms = new List<Vmm>
        {
            Vmm.Qemu(qemuPath) with { Description = "`qemu-system-x86_64 -accel kvm -m 64M -nographic -no-reboot -nodefaults -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x4 -kernel IMAGE`" },
            Vmm.Nestor("Nestor (JIT)", nestorPath) with { Description = "`dotnet publish src/Nestor.Cli -c Release` (framework-dependent, tiered JIT), `nestor run --engine kvm --memory 64M IMAGE`" },
        };
        string? r2rPath = o.TryGet("--nestor-r2r", out var r2r) ? Path.GetFullPath(r2r) : null;
        if (r2rPath is not null)
        {
            vmms.Add(Vmm.Nestor("Nestor (ReadyToRun)", r2rPath) with
            {
                Description = "`dotnet publish src/Nestor.Cli -c Release -r linux-x64 --self-contained false -p:PublishReadyToRun=true`: " +
                              "Nestor's assemblies and its dependencies precompiled, the JIT only for what R2R code cannot cover",
            });
        }
        if (o.TryGet("--nestor-aot", out var aot))
        {
            vmms.Add(Vmm.Nestor("Nestor (NativeAOT)", Path.GetFullPath(aot)) with
            {
                Description = "`dotnet publish src/Nestor.Cli -c Release -r linux-x64 -p:PublishAot=true` (scripts/publish): one native executable, no JIT, no IL",
            });
        }
        foreach (var tweak in tweaks)
        {
            // Runtime knobs read from the environment: no change to Nestor's code or build, reported as such.
            bool onR2r = tweak.StartsWith("r2r:", StringComparison.Ordinal);
            var environment = tweak[(onR2r ? 4 : 0)..].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(kv => kv.Split('=', 2))
                .ToDictionary(kv => kv[0], kv => kv.Length > 1 ? kv[1] : "", StringComparer.Ordinal);
            string build = onR2r ? "ReadyToRun" : "JIT";
            string path = onR2r ? r2rPath ?? throw new BenchmarkException("--tweak-env r2r:... needs --nestor-r2r") : nestorPath;
            vmms.Add(Vmm.Nestor($"Nestor ({build}, {string.Join(' ', environment.Select(kv => $"{kv.Key.Replace("DOTNET_", "", StringComparison.Ordinal)}={kv.Value}"))})", path, environment) with
            {
                Description = $"the {build} build above, started with runtime settings from the environment (no code change)",
            });
        }
        var notes = new List<string>();
        if (o.TryGet("--aot-note", out var aotNote))
        {
            notes.Add($"NativeAOT: not measured. {aotNote}");
        }

        int reps = o.Whole("--reps", 5, 1), startupReps = o.Whole("--startup-reps", 10, 1), memoryReps = o.Whole("--memory-reps", 3, 1);
        uint exits = (uint)o.Whole("--exits", 1_000_000, 1);
        var machine = MachineFacts.Read(qemuPath);
        string loadAtStart = LoadAverage();
        string command = o.Get("--command", $"dotnet bench/Nestor.Bench/bin/Release/net10.0/nestor-bench.dll {string.Join(' ', args)}".TrimEnd());
        var progress = Console.Error;
        var measure = new Measurements(vmms, images, progress);

        progress.WriteLine($"VM-exit round trip: {exits:N0} vs 0 exits, {reps} repetitions");
        var (exitCosts, self) = measure.MeasureExits(exits, reps);
        foreach (var e in exitCosts)
        {
            progress.WriteLine($"  {e.Vmm.Name}: {e.NanosecondsPerExit:0} ns/exit");
        }

        progress.WriteLine($"Start-up to first UART byte, {startupReps} repetitions");
        var startups = measure.MeasureStartup(startupReps);

        // Size the memory guest so that the VMM with the cheapest exits is busy for about 1.5 s; a VMM with dearer
        // exits runs longer, which only gives its resident set more time to grow.
        double cheapest = Math.Max(exitCosts.Min(e => e.NanosecondsPerExit), 50);
        uint memoryExits = (uint)Math.Clamp(1.5e9 / cheapest, 10_000, 100_000_000);
        progress.WriteLine($"Resident memory with a {Vmm.GuestMemory} guest doing {memoryExits:N0} exits, {memoryReps} repetitions");
        var memories = measure.MeasureMemory(memoryExits, memoryReps);

        var results = new Results(DateTimeOffset.UtcNow, machine, vmms, exitCosts, self, startups, memories, memoryExits,
            reps, startupReps, memoryReps, notes, Commit(repository), loadAtStart, LoadAverage(), command);
        string section = Report.Markdown(results);
        Console.Write(section);
        if (write)
        {
            string path = o.Get("--results", Path.Combine(repository, "bench", "RESULTS.md"));
            Report.WriteInto(path, section);
            progress.WriteLine($"Updated {path}");
        }
        return 0;
    }

    /// <summary>The repository root: the nearest directory upwards holding Nestor.slnx, from the working directory
    /// and then from this program's own location.</summary>
    private static string FindRepository()
    {
        foreach (var startAt in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        {
            for (var d = new DirectoryInfo(startAt); d is not null; d = d.Parent)
            {
                if (File.Exists(Path.Combine(d.FullName, "Nestor.slnx")))
                {
                    return d.FullName;
                }
            }
        }
        throw new BenchmarkException("cannot find the repository (no Nestor.slnx above the working directory)");
    }

    /// <summary>The 1, 5 and 15 minute load averages: how busy this shared machine was.</summary>
    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "unknown";

    /// <summary>The commit the measured builds were made from, and whether the sources differed from it.</summary>
    private static string Commit(string repository)
    {
        string? commit = NestorOSBaseline.Git(repository, "rev-parse", "--short", "HEAD");
        string? changes = NestorOSBaseline.Git(repository, "status", "--porcelain", "--", "src", "guest", "bench", "Directory.Build.props");
        // Porcelain lines are "XY path": the top folder of each changed path.
        var changed = (changes ?? "").Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => line.Length > 3 ? line[3..].Split('/')[0] : "")
            .Where(top => top.Length > 0).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        return commit is null
            ? "unknown"
            : commit + (changed.Count == 0 ? "" : $" with uncommitted changes in {string.Join(", ", changed)}");
    }

    /// <summary>Builds the nestor command the way a user gets it, when no --nestor was given.</summary>
    private static string PublishNestor(string repository, string outDirectory)
    {
        string target = Path.Combine(outDirectory, "nestor-jit");
        Console.Error.WriteLine($"Publishing src/Nestor.Cli (Release) to {target}");
        var info = new ProcessStartInfo("dotnet") { UseShellExecute = false, WorkingDirectory = repository };
        foreach (var a in new[] { "publish", "src/Nestor.Cli", "-c", "Release", "-o", target, "--nologo", "-v", "quiet" })
        {
            info.ArgumentList.Add(a);
        }
        using var p = Process.Start(info) ?? throw new BenchmarkException("cannot start dotnet");
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new BenchmarkException($"dotnet publish src/Nestor.Cli failed with status {p.ExitCode}");
        }
        return Path.Combine(target, "nestor");
    }

}
