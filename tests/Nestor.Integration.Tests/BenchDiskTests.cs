using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Nestor.Integration.Tests;

/// <summary><c>nestor bench disk</c> from the command line: the table and its JSON, the exit counts against what the
/// ATA register protocol and virtio's one notify per batch predict, the scratch image's removal, and its refusals.</summary>
public class BenchDiskTests
{
    private const int Sector = 512, WordsPerSector = Sector / 2;

    /// <summary>The port accesses NestorOS's polling ATA driver (guest/kernel/ata.c) makes for one READ SECTORS of
    /// <paramref name="bytes"/> (LBA28, at most 256 sectors), from ATA/ATAPI-6's PIO data-in protocol (§9.7): Device
    /// Control (nIEN), Device, then four Alternate Status reads to let the selection settle (§9.7's 400 ns), Sector
    /// Count, LBA Low/Mid/High and Command; then per sector one Status read (DRQ set at once on Nestor) and 256 data
    /// words. Under a VMM and on sim's platform each is one exit.</summary>
    private static long AtaReadExits(long bytes)
    {
        long sectors = bytes / Sector;
        const long registerWrites = 1 + 1 + 4 + 1, settleReads = 4;
        return registerWrites + settleReads + sectors * (1 + WordsPerSector);
    }

    /// <summary>virtio-blk's request, polled with interrupts suppressed: one QueueNotify write (virtio 1.2 §4.2.3.3);
    /// the rings are guest memory.</summary>
    private const long VirtioReadExits = 1;

    private static string ScratchDirectory() => Directory.CreateTempSubdirectory("nestor-bench-disk-test-").FullName;

    private static ProcessStartInfo Start(string temporary, params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add("exec");
        info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "nestor.dll"));
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }
        // The scratch image goes in the temporary directory: a private one, so that the test sees exactly what the
        // command left there.
        info.Environment["TMPDIR"] = temporary;
        return info;
    }

    private static NestorResult Run(string temporary, TimeSpan limit, params string[] args)
    {
        using var p = Process.Start(Start(temporary, args))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"nestor {string.Join(' ', args)} did not finish within {limit.TotalSeconds} s");
        }
        return new NestorResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void The_json_counts_match_the_protocols_and_the_scratch_image_is_gone()
    {
        const int size = 4096, count = 4;
        string temporary = ScratchDirectory();
        var r = Run(temporary, TimeSpan.FromMinutes(5), "bench", "disk", "--size", $"{size}", "--count", $"{count}", "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Empty(Directory.EnumerateFileSystemEntries(temporary));

        using var doc = JsonDocument.Parse(r.Stdout);
        var rows = doc.RootElement.GetProperty("rows").EnumerateArray().ToList();
        // The defaults: every interface, natively and under hw+nested.
        // The service VM needs a VMM: its row is under hw-nested only.
        Assert.Equal(["ata/native", "ata/hw-nested", "virtio/native", "virtio/hw-nested", "assigned/native", "assigned/hw-nested", "service/hw-nested"],
            rows.Select(x => $"{x.GetProperty("interface").GetString()}/{x.GetProperty("technique").GetString()}"));
        foreach (var row in rows)
        {
            Assert.Equal(count, row.GetProperty("requests").GetInt64());
            Assert.Equal(size * count, row.GetProperty("bytes").GetInt64());
            Assert.True(row.GetProperty("modelled_cycles").GetDouble() > 0);
        }
        JsonElement Row(string kind, string technique) => rows.Single(x => x.GetProperty("interface").GetString() == kind &&
                                                                           x.GetProperty("technique").GetString() == technique);
        long Exits(string kind, string technique) => Row(kind, technique).GetProperty("exits").GetInt64();
        // The device's own exits, by reason: the total may also hold a timer tick's external-interrupt and
        // interrupt-window exits under a VMM, which fall in the run and not in the baseline.
        long Of(string kind, string technique, params string[] reasons) =>
            reasons.Sum(r => Row(kind, technique).GetProperty("exits_by_reason").TryGetProperty(r, out var n) ? n.GetInt64() : 0);
        foreach (string technique in new[] { "native", "hw-nested" })
        {
            Assert.Equal(count * AtaReadExits(size), Of("ata", technique, "port_read", "port_write"));
            Assert.Equal(count * VirtioReadExits, Of("virtio", technique, "mmio_write", "mmio_read"));
            Assert.InRange(Exits("ata", technique) - count * AtaReadExits(size), 0, 8);
            Assert.InRange(Exits("virtio", technique) - count * VirtioReadExits, 0, 8);
            double ratio = doc.RootElement.GetProperty("ata_virtio_exit_ratios").EnumerateArray()
                .Single(x => x.GetProperty("technique").GetString() == technique).GetProperty("ratio").GetDouble();
            Assert.Equal((double)Exits("ata", technique) / Exits("virtio", technique), ratio, 6);
            Assert.InRange(ratio, AtaReadExits(size) / (VirtioReadExits + 2.0), AtaReadExits(size) + 8.0);
        }
        // The assigned controller's registers are mapped into the guest under a VMM: no exits, only direct accesses
        // (SUBMIT written, COMPLETED read per request); natively every access is a trapped MMIO access.
        var assigned = rows.Single(x => x.GetProperty("interface").GetString() == "assigned" && x.GetProperty("technique").GetString() == "hw-nested");
        Assert.Equal(0, assigned.GetProperty("exits").GetInt64());
        Assert.Equal(2 * count, assigned.GetProperty("direct_device_accesses").GetInt64());
        Assert.Equal(2 * count, Of("assigned", "native", "mmio_read", "mmio_write"));
        // The cost model charges each exit: ATA's per KiB is far above virtio's.
        double PerKiB(string kind) => rows.Single(x => x.GetProperty("interface").GetString() == kind && x.GetProperty("technique").GetString() == "hw-nested")
            .GetProperty("modelled_cycles_per_kib").GetDouble();
        Assert.True(PerKiB("ata") > 100 * PerKiB("virtio"), $"ata {PerKiB("ata")} virtio {PerKiB("virtio")} cycles/KiB");

        // The service VM's row: each read is one ring request in one batch (one notify, a switch each way, the event
        // and the completion interrupt), its data one grant copy (a 4 KiB read is one frame) besides the ring's four
        // (header in, slot in, slot out, response index out), and the service VM's own ATA driver makes exactly the
        // ATA row's port accesses.
        var service = Row("service", "hw-nested");
        var steps = service.GetProperty("service_vm_steps");
        long Step(string name) => steps.GetProperty(name).GetInt64();
        Assert.Equal(count, Step("notify_exits"));
        Assert.Equal(2 * count, Step("switches"));
        Assert.Equal(count, Step("event_interrupts"));
        Assert.Equal(count, Step("completion_interrupts"));
        Assert.Equal(2 * count, service.GetProperty("interrupts").GetInt64());
        Assert.Equal(5 * count, Step("grant_copies"));
        const int ringBytesPerBatch = 32 + 64 + 64 + 4;
        Assert.Equal((long)count * (size + ringBytesPerBatch), Step("grant_copy_bytes"));
        Assert.Equal(0, Step("refused_grants"));
        Assert.Equal(Of("ata", "hw-nested", "port_read", "port_write"), Step("device_exits"));
        Assert.Equal(Step("device_exits"), Of("service", "hw-nested", "port_read", "port_write"));
        // The steps' modelled cycles are in the row's, and the row costs more than ATA alone (the same device exits
        // and the ring's on top).
        double stepCycles = new[] { "notify_cycles", "switch_cycles", "device_cycles", "interrupt_cycles", "grant_copy_cycles" }
            .Sum(n => steps.GetProperty(n).GetDouble());
        Assert.True(service.GetProperty("modelled_cycles").GetDouble() >= stepCycles * 0.99, r.Stdout);
        Assert.True(PerKiB("service") > PerKiB("ata"), $"service {PerKiB("service")} ata {PerKiB("ata")} cycles/KiB");
    }

    [Fact]
    public void The_table_has_its_rows_and_columns_and_the_ratio_comes_from_the_printed_counts()
    {
        const int count = 2;
        string temporary = ScratchDirectory();
        var r = Run(temporary, TimeSpan.FromMinutes(5), "bench", "disk", "--count", $"{count}", "--interfaces", "ata,virtio", "--techniques", "hw+nested",
            "--op", "write", "--wait", "irq");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Empty(Directory.EnumerateFileSystemEntries(temporary));
        var lines = r.Stdout.Split('\n');
        string header = lines.Single(l => l.StartsWith("interface ", StringComparison.Ordinal));
        foreach (string column in new[] { "technique", "requests", "bytes", "exits", "exits/KiB", "interrupts", "direct", "cycles/op", "cycles/KiB", "wall s", "net s", "MiB/s" })
        {
            Assert.Contains(column, header);
        }
        var rows = lines.Where(l => Regex.IsMatch(l, @"^(ata|virtio|assigned) +(native|hw-nested|hw-shadow|pv) ")).Select(l => Regex.Split(l.Trim(), @"\s+")).ToList();
        Assert.Equal(["ata", "virtio"], rows.Select(x => x[0]));
        Assert.All(rows, x => Assert.Equal("hw-nested", x[1]));
        long Number(string text) => long.Parse(text, NumberStyles.AllowThousands, CultureInfo.InvariantCulture);
        long ataExits = Number(rows[0][4]), virtioExits = Number(rows[1][4]);
        // The writes only: diskbench's closing flush is in the count-0 baseline too, and cancels.
        Assert.Equal(count, Number(rows[0][2]));
        Assert.Equal(count, Number(rows[1][2]));
        // Waiting for interrupts: virtio's one per batch, ATA's one per DRQ block (8 sectors).
        Assert.True(Number(rows[1][6]) >= count, r.Stdout);
        Assert.True(Number(rows[0][6]) >= count * 8, r.Stdout);
        var ratio = Regex.Match(r.Stdout, @"ATA PIO / virtio-blk exits per request under hw-nested: ([\d,.]+)");
        Assert.True(ratio.Success, r.Stdout);
        Assert.Equal(Math.Round((double)ataExits / virtioExits, 1), double.Parse(ratio.Groups[1].Value, NumberStyles.Number, CultureInfo.InvariantCulture));
        Assert.True(ataExits > 100 * virtioExits, r.Stdout);
    }

    [Fact]
    public async Task An_interrupted_bench_removes_its_scratch_image()
    {
        string temporary = ScratchDirectory();
        using var p = Process.Start(Start(temporary, "bench", "disk", "--count", "100000", "--interfaces", "ata"))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        var clock = Stopwatch.StartNew();
        while (!Directory.EnumerateFiles(temporary, "*.img").Any() && clock.Elapsed < TimeSpan.FromSeconds(60) && !p.HasExited)
        {
            Thread.Sleep(50);
        }
        if (!Directory.EnumerateFiles(temporary, "*.img").Any())
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"no scratch image appeared in {temporary}: {await stdout}{await stderr}");
        }
        using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)]))
        {
            kill.WaitForExit();
        }
        Assert.True(p.WaitForExit(TimeSpan.FromSeconds(30)), "nestor bench disk did not stop on SIGINT");
        string output = await stdout + await stderr;
        Assert.True(p.ExitCode != 0, output);
        Assert.Empty(Directory.EnumerateFileSystemEntries(temporary));
    }

    [Theory]
    [InlineData("--size", "1000", "--size must be a multiple of 512")]
    [InlineData("--size", "2M", "--size must be a multiple of 512")]
    [InlineData("--op", "erase", "--op is read or write")]
    [InlineData("--count", "0", "--count must be at least 1")]
    [InlineData("--interfaces", "ata,scsi", "--interfaces: there is no 'scsi'")]
    [InlineData("--interfaces", "virtio,virtio", "--interfaces names 'virtio' twice")]
    [InlineData("--interfaces", "service --techniques native", "a service VM needs a VMM")]
    [InlineData("--techniques", "trap", "--techniques: there is no 'trap'")]
    [InlineData("--wait", "sometimes", "--wait is poll or irq")]
    [InlineData("--profile", "cray", "there is no cost profile 'cray'")]
    public void Bad_options_are_refused_with_what_to_do(string option, string value, string message)
    {
        string temporary = ScratchDirectory();
        var r = Run(temporary, TimeSpan.FromSeconds(60), ["bench", "disk", option, .. value.Split(' ')]);
        Assert.True(r.ExitCode == 120, r.ToString()); // ExitStatus.BadInput
        Assert.Contains(message, r.Stderr);
        Assert.Contains("what to do:", r.Stderr);
        Assert.Empty(Directory.EnumerateFileSystemEntries(temporary));
    }

    [Theory]
    [InlineData("ata=fast hello", "the kernel option ata= is poll or irq, not 'fast'")]
    [InlineData("virtioseg=100 hello", "virtioseg= is a number of bytes, a multiple of 512")]
    [InlineData("dma=irq hello", "there is no NestorOS kernel option 'dma='")]
    [InlineData("ata=irq", "kernel options but no program")]
    [InlineData("diskbench vda read 1000 4", "diskbench's SIZE must be a multiple of 512")]
    [InlineData("diskbench vda erase 4096 4", "diskbench's OP is one of read, write")]
    [InlineData("diskbench vda read", "diskbench needs at least 4 arguments")]
    [InlineData("disktest vda sideways", "disktest's MODE is one of seq, rand")]
    [InlineData("diskcheck", "diskcheck needs at least 1 argument")]
    public void Nestor_bench_checks_the_disk_programs_and_kernel_options(string commandLine, string message)
    {
        var r = NestorProcess.Run(["bench", .. commandLine.Split(' ')]);
        Assert.True(r.ExitCode == 120, r.ToString()); // ExitStatus.BadInput
        Assert.Contains(message, r.Stderr);
    }
}
