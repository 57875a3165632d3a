using System.Text;
using System.Text.Json;

namespace Nestor.Bench;

/// <summary>One timed run of an exit guest: process start to exit, and the guest's marker (printed before the loop)
/// to process exit.</summary>
internal sealed record ExitRun(TimeSpan Wall, TimeSpan MarkerToExit);

/// <summary>VM-exit round trip of one VMM, from wall times: (median wall(N) − median wall(0)) / N. Everything that
/// does not depend on N (process start, VM creation, boot, exit) cancels out in the difference.</summary>
internal sealed record ExitCost(Vmm Vmm, long Exits, IReadOnlyList<ExitRun> WithExits, IReadOnlyList<ExitRun> Without)
{
    public double NanosecondsPerExit =>
        (Stats.Median(WithExits.Select(r => r.Wall)).TotalNanoseconds - Stats.Median(Without.Select(r => r.Wall)).TotalNanoseconds) / Exits;

    /// <summary>The same difference taken from the guest's marker byte to process exit instead of from process
    /// start. It leaves out the boot, whose length varies from run to run (by hundreds of milliseconds for QEMU's
    /// SeaBIOS on this kind of host), so it is the less noisy of the two.</summary>
    /// <summary>Per-repetition estimates, marker → exit of repetition i with N exits minus that of repetition i
    /// without: their spread shows how far apart two figures must be to mean anything on this host.</summary>
    public (double Low, double High) SpreadFromMarker
    {
        get
        {
            var each = WithExits.Zip(Without, (n, z) => (n.MarkerToExit - z.MarkerToExit).TotalNanoseconds / Exits).ToList();
            return (each.Min(), each.Max());
        }
    }

    public double NanosecondsPerExitFromMarker =>
        (Stats.Median(WithExits.Select(r => r.MarkerToExit)).TotalNanoseconds -
         Stats.Median(Without.Select(r => r.MarkerToExit)).TotalNanoseconds) / Exits;
}

/// <summary>One <c>nestor run --json</c> of the exit guest: Nestor's own clock around KVM_RUN (guest_ns) and around
/// its exit handling (handling_ns).</summary>
internal sealed record NestorReport(long TotalExits, long ScratchWrites, long GuestNanoseconds, long HandlingNanoseconds);

/// <summary>Nestor's own per-exit figure, the cross-check of <see cref="ExitCost"/>: the difference between the N
/// and the 0 run of (time in KVM_RUN + time handling exits), over the difference in exit counts. Unlike the wall
/// figure it leaves out process start and VM set-up by construction, and it splits the round trip into the part in
/// the kernel (KVM_RUN, including the guest's own loop instructions) and the part in Nestor's C# handler.</summary>
internal sealed record NestorSelfMeasure(Vmm Vmm, IReadOnlyList<NestorReport> WithExits, IReadOnlyList<NestorReport> Without)
{
    private double ExitDelta => Stats.Median(WithExits.Select(r => (double)r.TotalExits)) - Stats.Median(Without.Select(r => (double)r.TotalExits));

    public double KvmRunNanosecondsPerExit =>
        (Stats.Median(WithExits.Select(r => (double)r.GuestNanoseconds)) - Stats.Median(Without.Select(r => (double)r.GuestNanoseconds))) / ExitDelta;

    public double HandlingNanosecondsPerExit =>
        (Stats.Median(WithExits.Select(r => (double)r.HandlingNanoseconds)) - Stats.Median(Without.Select(r => (double)r.HandlingNanoseconds))) / ExitDelta;

    public double NanosecondsPerExit => KvmRunNanosecondsPerExit + HandlingNanosecondsPerExit;
}

/// <summary>Time from process start to the guest's first UART byte on the VMM's stdout, to the first byte of
/// any kind (the same for Nestor; SeaBIOS's banner for QEMU), and to the process's exit after the guest's (the
/// whole run of a trivial guest).</summary>
internal sealed record Startup(Vmm Vmm, IReadOnlyList<TimeSpan> GuestByte, IReadOnlyList<TimeSpan> AnyByte, IReadOnlyList<TimeSpan> ToExit)
{
    public double MedianMilliseconds => Stats.Median(GuestByte).TotalMilliseconds;

    public double MedianToExitMilliseconds => Stats.Median(ToExit).TotalMilliseconds;

    public double MedianAnyByteMilliseconds => Stats.Median(AnyByte).TotalMilliseconds;
}

/// <summary>Peak resident memory of the VMM process while a 64 MiB guest runs.</summary>
internal sealed record Memory(Vmm Vmm, IReadOnlyList<MemorySample> Samples)
{
    public double MedianHighWaterMiB => Stats.Median(Samples.Select(s => s.HighWaterKiB / 1024.0));

    public double MedianResidentMiB => Stats.Median(Samples.Select(s => s.ResidentKiB / 1024.0));

    public double MedianProportionalMiB => Stats.Median(Samples.Select(s => s.ProportionalKiB / 1024.0));
}

/// <summary>Runs the three measurements. Repetitions go round-robin over the VMMs (A B C, A B C, …) rather than all
/// of A then all of B, so that a slow drift of the machine (another tenant, thermal state) spreads over every VMM
/// instead of biasing one.</summary>
internal sealed class Measurements(IReadOnlyList<Vmm> vmms, string imageDirectory, TextWriter progress)
{
    /// <summary>Longest any single run may take before it is killed and the benchmark fails.</summary>
    private static readonly TimeSpan RunLimit = TimeSpan.FromMinutes(3);

    public (IReadOnlyList<ExitCost> Wall, IReadOnlyList<NestorSelfMeasure> Self) MeasureExits(uint exits, int repetitions)
    {
        string withExits = WriteImage($"exits-{exits}.elf", BenchGuests.PortWrites(exits, printFirst: true));
        string without = WriteImage("exits-0.elf", BenchGuests.PortWrites(0, printFirst: true));
        var wallN = vmms.ToDictionary(v => v, _ => new List<ExitRun>());
        var wall0 = vmms.ToDictionary(v => v, _ => new List<ExitRun>());
        var selfN = vmms.Where(v => !v.IsQemu).ToDictionary(v => v, _ => new List<NestorReport>());
        var self0 = vmms.Where(v => !v.IsQemu).ToDictionary(v => v, _ => new List<NestorReport>());
        foreach (var vmm in vmms)
        {
            // One untimed run each, so that the first timed run does not pay for a cold page cache.
            Checked(vmm, vmm.StartInfo(without), "warm-up");
        }
        for (int rep = 1; rep <= repetitions; rep++)
        {
            foreach (var vmm in vmms)
            {
                wall0[vmm].Add(Timed(vmm, without, "0 exits"));
                wallN[vmm].Add(Timed(vmm, withExits, $"{exits} exits"));
                if (!vmm.IsQemu)
                {
                    // Separate runs for --json so that the timed runs above are plain 'nestor run IMAGE'.
                    self0[vmm].Add(ParseReport(Checked(vmm, vmm.StartInfo(without, "--json"), "0 exits, --json")));
                    selfN[vmm].Add(ParseReport(Checked(vmm, vmm.StartInfo(withExits, "--json"), $"{exits} exits, --json")));
                }
                progress.WriteLine($"  exits rep {rep}/{repetitions} {vmm.Name}: wall(0) {wall0[vmm][^1].Wall.TotalMilliseconds:0.0} ms " +
                                   $"(marker → exit {wall0[vmm][^1].MarkerToExit.TotalMilliseconds:0.0} ms), " +
                                   $"wall({exits}) {wallN[vmm][^1].Wall.TotalMilliseconds:0.0} ms " +
                                   $"(marker → exit {wallN[vmm][^1].MarkerToExit.TotalMilliseconds:0.0} ms)");
            }
        }
        foreach (var (vmm, reports) in selfN)
        {
            if (reports.Any(r => r.ScratchWrites != exits))
            {
                throw new BenchmarkException($"{vmm.Name} reported {reports[0].ScratchWrites} writes to port 0x3ff, the guest made {exits}");
            }
        }
        return (vmms.Select(v => new ExitCost(v, exits, wallN[v], wall0[v])).ToList(),
                selfN.Keys.Select(v => new NestorSelfMeasure(v, selfN[v], self0[v])).ToList());
    }

    public IReadOnlyList<Startup> MeasureStartup(int repetitions)
    {
        string image = WriteImage("first-byte.elf", BenchGuests.FirstByte());
        var times = vmms.ToDictionary(v => v, _ => new List<TimeSpan>());
        var anyByte = vmms.ToDictionary(v => v, _ => new List<TimeSpan>());
        var toExit = vmms.ToDictionary(v => v, _ => new List<TimeSpan>());
        foreach (var vmm in vmms)
        {
            Checked(vmm, vmm.StartInfo(image), "warm-up", expectMarker: true);
        }
        for (int rep = 1; rep <= repetitions; rep++)
        {
            foreach (var vmm in vmms)
            {
                var run = Checked(vmm, vmm.StartInfo(image), "first byte", expectMarker: true);
                times[vmm].Add(run.Marker!.Value);
                anyByte[vmm].Add(run.FirstByte!.Value);
                toExit[vmm].Add(run.Wall);
            }
        }
        foreach (var vmm in vmms)
        {
            progress.WriteLine($"  start-up {vmm.Name}: {string.Join(", ", times[vmm].Select(t => t.TotalMilliseconds.ToString("0.0", Stats.Invariant)))} ms " +
                               $"(to exit: {string.Join(", ", toExit[vmm].Select(t => t.TotalMilliseconds.ToString("0.0", Stats.Invariant)))} ms)");
        }
        return vmms.Select(v => new Startup(v, times[v], anyByte[v], toExit[v])).ToList();
    }

    /// <summary><paramref name="exits"/> is chosen by the caller from the measured exit cost so that the guest keeps
    /// the VMM busy with exits for a second or two: long enough for anything the VMM allocates while handling exits
    /// (JIT tiering, statistics, buffers) to show in its resident set.</summary>
    public IReadOnlyList<Memory> MeasureMemory(uint exits, int repetitions)
    {
        string image = WriteImage($"memory-{exits}.elf", BenchGuests.PortWrites(exits, printFirst: true));
        var samples = vmms.ToDictionary(v => v, _ => new List<MemorySample>());
        for (int rep = 1; rep <= repetitions; rep++)
        {
            foreach (var vmm in vmms)
            {
                var run = Checked(vmm, vmm.StartInfo(image), "memory", expectMarker: true, sampleMemory: true);
                var sample = run.Memory ?? throw new BenchmarkException($"{vmm.Name}: no /proc sample while the guest ran");
                samples[vmm].Add(sample);
                progress.WriteLine($"  memory rep {rep}/{repetitions} {vmm.Name}: VmHWM {sample.HighWaterKiB / 1024.0:0.0} MiB, " +
                                   $"VmRSS {sample.ResidentKiB / 1024.0:0.0} MiB, Pss {sample.ProportionalKiB / 1024.0:0.0} MiB, {sample.Samples} samples over {sample.SampledFor.TotalSeconds:0.00} s");
            }
        }
        return vmms.Select(v => new Memory(v, samples[v])).ToList();
    }

    private static ExitRun Timed(Vmm vmm, string image, string what)
    {
        var run = Checked(vmm, vmm.StartInfo(image), what, expectMarker: true);
        return new ExitRun(run.Wall, run.Wall - run.Marker!.Value);
    }

    private string WriteImage(string name, byte[] image)
    {
        string path = Path.Combine(imageDirectory, name);
        File.WriteAllBytes(path, image);
        return path;
    }

    /// <summary>Runs once and insists the guest ended with status 0 (and printed the marker first, when asked):
    /// a time from a run that failed would be a time of something else.</summary>
    private static RunResult Checked(Vmm vmm, System.Diagnostics.ProcessStartInfo info, string what, bool expectMarker = false,
        bool sampleMemory = false)
    {
        var run = ProcessRunner.Run(info, RunLimit, sampleMemory);
        if (run.ExitCode != vmm.SuccessExitCode)
        {
            throw new BenchmarkException($"{vmm.Name} ({what}) exited with status {run.ExitCode}, expected {vmm.SuccessExitCode}. " +
                                         $"Command: {info.FileName} {string.Join(' ', info.ArgumentList)}\nstderr: {run.Stderr.Trim()}");
        }
        if (expectMarker && (run.Marker is null || run.FirstByte is null))
        {
            throw new BenchmarkException($"{vmm.Name} ({what}): the guest's marker byte never reached stdout " +
                                         $"(got {Convert.ToHexString(run.Stdout.TakeLast(32).ToArray())})");
        }
        return run;
    }

    private static NestorReport ParseReport(RunResult run)
    {
        using var json = JsonDocument.Parse(Encoding.UTF8.GetString(run.Stdout));
        var root = json.RootElement;
        var exits = root.GetProperty("exits");
        long scratch = 0;
        foreach (var port in exits.GetProperty("by_port").EnumerateArray())
        {
            if (port.GetProperty("port").GetString() == "0x3ff")
            {
                scratch = port.GetProperty("writes").GetInt64();
            }
        }
        return new NestorReport(exits.GetProperty("total").GetInt64(), scratch,
            exits.GetProperty("guest_ns").GetInt64(), exits.GetProperty("handling_ns").GetInt64());
    }
}

/// <summary>Medians, with the culture fixed so that reports look the same everywhere.</summary>
internal static class Stats
{
    public static readonly System.Globalization.CultureInfo Invariant = System.Globalization.CultureInfo.InvariantCulture;

    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.OrderBy(v => v).ToArray();
        if (sorted.Length == 0)
        {
            throw new ArgumentException("no values", nameof(values));
        }
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    public static TimeSpan Median(IEnumerable<TimeSpan> values) => TimeSpan.FromTicks((long)Median(values.Select(v => (double)v.Ticks)));
}
