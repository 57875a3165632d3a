using System.Diagnostics;
using System.Globalization;

namespace Nestor.Bench;

/// <summary>Peak and current resident memory of a process, from /proc/PID/status.</summary>
/// <param name="HighWaterKiB">VmHWM: the largest resident set the process has had so far.</param>
/// <param name="ResidentKiB">VmRSS at the last sample.</param>
/// <param name="Samples">How many times /proc/PID/status was read.</param>
/// <param name="SampledFor">From the guest's marker byte to the last sample.</param>
/// <param name="ProportionalKiB">The largest Pss seen (/proc/PID/smaps_rollup): resident memory with each shared
/// page divided among the processes that map it, so a runtime library mapped by two VMM processes counts half in
/// each. VmHWM counts such pages whole.</param>
/// <param name="Breakdown">Resident KiB by mapping (file name, or [heap], [anon], …), from the last read of
/// /proc/PID/smaps, largest first.</param>
internal sealed record MemorySample(long HighWaterKiB, long ResidentKiB, long ProportionalKiB, int Samples, TimeSpan SampledFor,
    IReadOnlyList<(string Mapping, long KiB)> Breakdown);

/// <summary>What one VMM process did.</summary>
/// <param name="Wall">From just before the process was started to its exit being observed.</param>
/// <param name="FirstByte">From just before the process was started to the first byte of any kind arriving on its
/// stdout (under QEMU that is SeaBIOS's banner).</param>
/// <param name="Marker">From just before the process was started to the guest's <see cref="BenchGuests.MarkerByte"/>
/// arriving on its stdout.</param>
internal sealed record RunResult(TimeSpan Wall, int ExitCode, byte[] Stdout, string Stderr, TimeSpan? FirstByte, TimeSpan? Marker,
    MemorySample? Memory);

/// <summary>Starts a VMM process and times it. All times start just before <see cref="Process.Start()"/>, so both
/// VMMs pay the same fork/exec cost of the harness, and include everything the VMM does until the guest's effect is
/// seen: loading its own code, creating the VM, booting (SeaBIOS and the option ROM for QEMU), running the guest.</summary>
internal static class ProcessRunner
{
    public static RunResult Run(ProcessStartInfo info, TimeSpan limit, bool sampleMemory = false)
    {
        long start = Stopwatch.GetTimestamp();
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {info.FileName}");
        // stdin stays open but silent for the whole run: an EOF on QEMU's -serial stdio is not something the
        // reference command line has.
        long firstByteAt = 0, markerAt = 0;
        using var markerSeen = new ManualResetEventSlim(false);
        var stdout = new MemoryStream();
        // A dedicated thread blocked in read() on the pipe timestamps the first byte with no scheduling delay of a
        // thread pool in between.
        var reader = new Thread(() =>
        {
            var buffer = new byte[4096];
            var stream = process.StandardOutput.BaseStream;
            int n;
            while ((n = stream.Read(buffer)) > 0)
            {
                long now = Stopwatch.GetTimestamp();
                if (stdout.Length == 0)
                {
                    Volatile.Write(ref firstByteAt, now);
                }
                if (!markerSeen.IsSet && buffer.AsSpan(0, n).Contains(BenchGuests.MarkerByte))
                {
                    Volatile.Write(ref markerAt, now);
                    markerSeen.Set();
                }
                stdout.Write(buffer, 0, n);
            }
        })
        { IsBackground = true, Name = "vmm-stdout" };
        reader.Start();
        var stderr = process.StandardError.ReadToEndAsync();

        MemorySample? memory = null;
        if (sampleMemory)
        {
            memory = SampleMemory(process, markerSeen, start, limit);
        }

        bool exited = process.WaitForExit(Remaining(start, limit));
        long end = Stopwatch.GetTimestamp();
        if (!exited)
        {
            process.Kill();
            process.WaitForExit();
        }
        reader.Join();
        string errors = stderr.Result;
        process.StandardInput.Close();
        if (!exited)
        {
            throw new BenchmarkException($"{info.FileName} did not finish within {limit.TotalSeconds:0} s and was killed. " +
                                         $"stderr: {errors.Trim()}");
        }
        return new RunResult(Stopwatch.GetElapsedTime(start, end), process.ExitCode, stdout.ToArray(), errors,
            Since(start, Volatile.Read(ref firstByteAt)), Since(start, Volatile.Read(ref markerAt)), memory);
    }

    /// <summary>Once the guest has printed its marker (so the VM is built and the guest running), reads VmHWM and VmRSS
    /// every 10 ms until the process exits. The high-water mark only grows, so the last one read is the peak over
    /// the run as far as the sampling saw it.</summary>
    private static MemorySample? SampleMemory(Process process, ManualResetEventSlim markerSeen, long start, TimeSpan limit)
    {
        if (!markerSeen.Wait(Remaining(start, limit)))
        {
            return null;
        }
        long sampling = Stopwatch.GetTimestamp();
        long hwm = 0, rss = 0, pss = 0;
        int samples = 0;
        IReadOnlyList<(string, long)> breakdown = [];
        string status = $"/proc/{process.Id}/status", rollup = $"/proc/{process.Id}/smaps_rollup", smaps = $"/proc/{process.Id}/smaps";
        while (!process.HasExited && Stopwatch.GetElapsedTime(start) < limit)
        {
            long sampleHwm = ReadField(status, "VmHWM:");
            if (sampleHwm > 0)
            {
                hwm = Math.Max(hwm, sampleHwm);
                rss = ReadField(status, "VmRSS:");
                pss = Math.Max(pss, ReadField(rollup, "Pss:"));
                // The full per-mapping list is dearer to read, so only every tenth sample.
                if (samples % 10 == 0 && Breakdown(smaps) is { Count: > 0 } b)
                {
                    breakdown = b;
                }
                samples++;
            }
            Thread.Sleep(10);
        }
        return samples == 0 ? null : new MemorySample(hwm, rss, pss, samples, Stopwatch.GetElapsedTime(sampling), breakdown);
    }

    /// <summary>Resident KiB per mapped file (by file name) or kind of anonymous memory, largest first.</summary>
    private static IReadOnlyList<(string, long)> Breakdown(string smaps)
    {
        var byName = new Dictionary<string, long>(StringComparer.Ordinal);
        try
        {
            string name = "[anon]";
            foreach (var line in File.ReadLines(smaps))
            {
                // A mapping header: "start-end perms offset dev inode [path]"; its fields follow on "Key: value" lines.
                var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                if (parts.Length >= 5 && parts[0].Contains('-') && !parts[0].EndsWith(':'))
                {
                    string path = parts.Length == 6 ? parts[5].Trim() : "";
                    name = path.Length == 0 ? "[anon]" : path.StartsWith('[') ? path : Path.GetFileName(path.Replace(" (deleted)", "", StringComparison.Ordinal));
                }
                else if (line.StartsWith("Rss:", StringComparison.Ordinal))
                {
                    byName[name] = byName.GetValueOrDefault(name) + KiB(line);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
        return byName.Where(kv => kv.Value > 0).OrderByDescending(kv => kv.Value).Select(kv => (kv.Key, kv.Value)).ToList();
    }

    /// <summary>The KiB figure on the line of <paramref name="path"/> that starts with <paramref name="field"/>, or 0
    /// once the process is gone (a zombie has no Vm* lines).</summary>
    private static long ReadField(string path, string field)
    {
        try
        {
            foreach (var line in File.ReadLines(path))
            {
                if (line.StartsWith(field, StringComparison.Ordinal))
                {
                    return KiB(line);
                }
            }
            return 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    // "VmHWM:\t   12345 kB" or "Pss:      12345 kB"
    private static long KiB(string line) =>
        long.Parse(line[(line.IndexOf(':') + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);

    private static TimeSpan? Since(long start, long timestamp) => timestamp == 0 ? null : Stopwatch.GetElapsedTime(start, timestamp);

    private static TimeSpan Remaining(long start, TimeSpan limit)
    {
        var left = limit - Stopwatch.GetElapsedTime(start);
        return left > TimeSpan.Zero ? left : TimeSpan.Zero;
    }
}

/// <summary>A run did not do what the benchmark needs (wrong exit status, no output): its numbers would be wrong,
/// so the benchmark stops instead of reporting them.</summary>
internal sealed class BenchmarkException(string message) : Exception(message);
