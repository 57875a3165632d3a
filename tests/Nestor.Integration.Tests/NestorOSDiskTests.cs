using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Reference;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Virtualization;
using Xunit.Abstractions;

namespace Nestor.Integration.Tests;

/// <summary>The host's own model of NestorOS's <c>disktest</c> (guest/user/disk.c): the same request sizes, slots,
/// pattern and checksum, computed here independently, applied to a copy of the disk image so that the image's final
/// bytes are known too.</summary>
internal static class DiskTestModel
{
    public const int SectorSize = 512;
    public const int MaxTransfer = 1 << 20;
    private const int BytesPerSize = 64 << 10;
    private const ulong FnvOffset = 0xcbf29ce484222325, FnvPrime = 0x100000001b3;

    /// <summary>What disktest should print and leave on the disk.</summary>
    public sealed record Expectation(ulong Bytes, ulong Requests, string Checksum);

    /// <summary>MurmurHash3's 64-bit finalizer, the pattern's mixing function.</summary>
    private static ulong Fmix64(ulong x)
    {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccd;
        x ^= x >> 33;
        x *= 0xc4ceb9fe1a85ec53;
        x ^= x >> 33;
        return x;
    }

    /// <summary>Word <paramref name="k"/> of sector <paramref name="sector"/> in pass <paramref name="pass"/>.</summary>
    public static ulong PatternWord(ulong sector, ulong pass, ulong k) => Fmix64(sector << 16 ^ pass << 8 ^ k ^ 0x9E3779B97F4A7C15);

    /// <summary>Writes the pattern of <paramref name="pass"/> over <paramref name="count"/> sectors from
    /// <paramref name="sector"/> into <paramref name="image"/>.</summary>
    public static void Fill(Span<byte> image, ulong sector, ulong count, ulong pass)
    {
        for (ulong s = sector; s < sector + count; s++)
        {
            for (ulong k = 0; k < SectorSize / 8; k++)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(image[(int)(s * SectorSize + k * 8)..], PatternWord(s, pass, k));
            }
        }
    }

    /// <summary>Runs disktest's requests against <paramref name="image"/> (changed in place): what a correct disk
    /// returns and keeps.</summary>
    public static Expectation Run(byte[] image, bool random, int? onlySize = null)
    {
        ulong diskSectors = (ulong)image.Length / SectorSize, bytes = 0, requests = 0, checksum = FnvOffset;
        IEnumerable<int> sizes = onlySize is { } one ? [one] : Enumerable.Range(0, 12).Select(i => SectorSize << i);
        foreach (int size in sizes)
        {
            ulong sectors = (ulong)size / SectorSize;
            ulong slots = diskSectors / sectors;
            if (slots == 0)
            {
                continue;
            }
            slots = 1UL << (63 - System.Numerics.BitOperations.LeadingZeroCount(slots));
            ulong n = Math.Min(slots, Math.Max(1, (ulong)(BytesPerSize / size)));
            ulong pass = sectors | (random ? 1UL << 12 : 0);
            ulong first = random ? Fmix64(pass) & (slots - 1) : 0;
            var order = new List<ulong>();
            for (ulong i = 0, slot = first; i < n; i++)
            {
                order.Add(slot);
                slot = random ? (slot * 6364136223846793005 + 1442695040888963407) & (slots - 1) : slot + 1;
            }
            Assert.Equal(order.Count, order.Distinct().Count());   // a full-period LCG visits no slot twice
            foreach (ulong slot in order)
            {
                Fill(image, slot * sectors, sectors, pass);
                requests++;
            }
            foreach (ulong slot in order)
            {
                var read = image.AsSpan((int)(slot * sectors * SectorSize), size);
                for (int o = 0; o < size; o += 8)
                {
                    checksum = (checksum ^ BinaryPrimitives.ReadUInt64LittleEndian(read[o..])) * FnvPrime;
                }
                bytes += (ulong)size;
                requests++;
            }
        }
        return new Expectation(bytes, requests, checksum.ToString("x"));
    }

    /// <summary>A disk image of <paramref name="bytes"/> bytes of seeded noise: what disktest does not write must
    /// still be there afterwards.</summary>
    public static byte[] Noise(int bytes, int seed)
    {
        var image = new byte[bytes];
        new Random(seed).NextBytes(image);
        return image;
    }

    public static Dictionary<string, string> Result(string serial, string program)
    {
        var m = Regex.Match(serial, $@"^RESULT {program} (.*)$", RegexOptions.Multiline);
        Assert.True(m.Success, $"no RESULT {program} line in:\n{serial}");
        return m.Groups[1].Value.Trim().Split(' ').Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => f[1]);
    }
}

/// <summary>NestorOS's block layer and its drivers on the reference machine: ATA PIO on QEMU's PC (IDE), virtio-blk on
/// QEMU's microvm (virtio-mmio version 2). Each <c>disktest</c> RESULT is checked against <see cref="DiskTestModel"/>
/// and the image file's bytes against the model's copy after QEMU exits.</summary>
public class NestorOSDiskTests
{
    private const int DiskBytes = 8 << 20;

    // The block layer's errors (guest/include/nestoros.h, the Linux errno values).
    private const int EIO = 5, EFAULT = 14, ENODEV = 19, EINVAL = 22, EROFS = 30, ERANGE = 34;

    private static (QemuOutcome Outcome, string Serial) Boot(string commandLine, params QemuDisk[] disks)
    {
        string kernel = NestorProcess.WriteTemp(BuiltInGuests.NestorOS(), ".elf");
        var serial = new MemoryStream();
        var outcome = QemuReferenceMachine.Run(kernel, 64UL << 20, commandLine, serial, TimeSpan.FromMinutes(3), disks: disks);
        File.Delete(kernel);
        string text = Encoding.UTF8.GetString(serial.ToArray());
        Assert.False(outcome.TimedOut, $"NestorOS did not finish '{commandLine}' on QEMU within 3 minutes:\n{text}");
        return (outcome, text);
    }

    private static string Image(byte[] contents)
    {
        string path = NestorProcess.TempPath(".img");
        File.WriteAllBytes(path, contents);
        return path;
    }

    private static void AssertDisktest(string serial, string device, bool random, DiskTestModel.Expectation expected)
    {
        var r = DiskTestModel.Result(serial, "disktest");
        Assert.Equal(device, r["dev"]);
        Assert.Equal(random ? "rand" : "seq", r["mode"]);
        Assert.Equal("0", r["errors"]);
        Assert.Equal(expected.Bytes.ToString(), r["bytes"]);
        Assert.Equal(expected.Requests.ToString(), r["requests"]);
        Assert.Equal(expected.Checksum, r["checksum"]);
    }

    [Theory]
    [InlineData(QemuDiskInterface.Ide, "ata0", "", false, null)]
    [InlineData(QemuDiskInterface.Ide, "ata0", "", true, null)]
    [InlineData(QemuDiskInterface.Ide, "ata0", "ata=irq ", true, null)]
    [InlineData(QemuDiskInterface.Ide, "0", "", false, 4096)]
    [InlineData(QemuDiskInterface.VirtioMmio, "vda", "", false, null)]
    [InlineData(QemuDiskInterface.VirtioMmio, "vda", "", true, null)]
    [InlineData(QemuDiskInterface.VirtioMmio, "vda", "", true, 65536)]
    public void Disktest_on_qemu_reads_back_what_it_wrote_and_the_image_holds_it(QemuDiskInterface kind, string device,
        string options, bool random, int? size)
    {
        var initial = DiskTestModel.Noise(DiskBytes, 13);
        string path = Image(initial);
        var expectedImage = (byte[])initial.Clone();
        var expected = DiskTestModel.Run(expectedImage, random, size);

        var (outcome, serial) = Boot($"{options}disktest {device} {(random ? "rand" : "seq")}{(size is { } s ? $" {s}" : "")}", new QemuDisk(path, kind));

        Assert.True(outcome.GuestStatus == 0, serial + outcome.Diagnostics);
        AssertDisktest(serial, kind == QemuDiskInterface.Ide ? "ata0" : "vda", random, expected);
        var actual = File.ReadAllBytes(path);
        Assert.Equal(expectedImage.Length, actual.Length);
        Assert.True(expectedImage.AsSpan().SequenceEqual(actual), "the image file holds other bytes than disktest wrote (or lost noise it did not overwrite)");
        Assert.False(initial.AsSpan().SequenceEqual(actual));
    }

    [Fact]
    public void Master_and_slave_are_two_devices_and_a_disktest_on_the_slave_leaves_the_master_alone()
    {
        var master = DiskTestModel.Noise(DiskBytes, 1);
        var slave = DiskTestModel.Noise(DiskBytes / 2, 2);
        string masterPath = Image(master), slavePath = Image(slave);
        var expectedSlave = (byte[])slave.Clone();
        var expected = DiskTestModel.Run(expectedSlave, random: true);

        var (outcome, serial) = Boot("disktest ata1 rand", new QemuDisk(masterPath, QemuDiskInterface.Ide), new QemuDisk(slavePath, QemuDiskInterface.Ide));

        Assert.True(outcome.GuestStatus == 0, serial + outcome.Diagnostics);
        Assert.Contains($"block device 0: ata0, {DiskBytes / 512} sectors", serial);
        Assert.Contains($"block device 1: ata1, {DiskBytes / 2 / 512} sectors", serial);
        AssertDisktest(serial, "ata1", true, expected);
        Assert.True(master.AsSpan().SequenceEqual(File.ReadAllBytes(masterPath)), "the master changed");
        Assert.True(expectedSlave.AsSpan().SequenceEqual(File.ReadAllBytes(slavePath)), "the slave holds other bytes than disktest wrote");
    }

    [Fact]
    public void Without_a_disk_the_kernel_reports_no_block_device_and_passes_the_command_line_to_init_unchanged()
    {
        var (outcome, serial) = Boot("hello ; disktest ata0");
        Assert.DoesNotContain("NestorOS: block device", serial);
        Assert.Contains("disktest: no block device 'ata0'", serial);
        var init = DiskTestModel.Result(serial, "init");
        Assert.Equal("2", init["programs"]);
        Assert.Equal("1", init["failures"]);
        Assert.Equal(1u, outcome.GuestStatus);
        var frames = Regex.Match(serial, @"(\d+) frames free \((\d+) when init started\)");
        Assert.Equal(frames.Groups[2].Value, frames.Groups[1].Value);
    }

    [Theory]
    [InlineData(QemuDiskInterface.Ide, "ata0")]
    [InlineData(QemuDiskInterface.VirtioMmio, "vda")]
    public void The_block_layer_refuses_bad_requests_with_an_errno_and_counts_what_reached_the_driver(QemuDiskInterface kind, string device)
    {
        var initial = DiskTestModel.Noise(DiskBytes, 3);
        string path = Image(initial);
        var (outcome, serial) = Boot($"diskcheck {device}", new QemuDisk(path, kind));
        Assert.True(outcome.GuestStatus == 0, serial + outcome.Diagnostics);
        var r = DiskTestModel.Result(serial, "diskcheck");
        Assert.Equal($"-{ENODEV}", r["info_bad_index"]);
        Assert.Equal($"-{ENODEV}", r["bad_index"]);
        Assert.Equal($"-{EINVAL}", r["unaligned"]);
        Assert.Equal($"-{EINVAL}", r["empty"]);
        Assert.Equal($"-{EINVAL}", r["too_large"]);
        Assert.Equal($"-{ERANGE}", r["beyond_end"]);
        Assert.Equal($"-{ERANGE}", r["past_end"]);
        Assert.Equal($"-{EINVAL}", r["bad_op"]);
        Assert.Equal($"-{EFAULT}", r["kernel_buffer"]);
        Assert.Equal($"{DiskTestModel.SectorSize}", r["last"]);
        Assert.Equal($"{DiskTestModel.SectorSize}", r["read"]);
        Assert.Equal($"{DiskTestModel.SectorSize}", r["rewrite"]);
        Assert.Equal("0", r["flush"]);
        // The refused calls never reach the driver: only the last read, the read, the rewrite and the flush do.
        Assert.Equal("4", r["requests"]);
        Assert.Equal("0", r["errors"]);
        Assert.True(initial.AsSpan().SequenceEqual(File.ReadAllBytes(path)), "rewriting sector 0 with its own bytes changed the image");
        Assert.NotEqual($"-{EIO}", r["read"]);
    }

    [Fact]
    public void A_read_only_virtio_disk_refuses_writes_with_erofs_and_disktest_refuses_it()
    {
        string path = Image(DiskTestModel.Noise(DiskBytes, 4));
        var (_, serial) = Boot("diskcheck vda ; disktest vda", new QemuDisk(path, QemuDiskInterface.VirtioMmio, ReadOnly: true));
        Assert.Contains("read-only", Regex.Match(serial, "block device 0: vda.*").Value);
        var r = DiskTestModel.Result(serial, "diskcheck");
        Assert.Equal("1", r["read_only"]);
        Assert.Equal($"-{EROFS}", r["rewrite"]);
        Assert.Equal("3", r["requests"]);
        Assert.Contains("disktest: vda is read-only", serial);
    }

    [Theory]
    [InlineData(QemuDiskInterface.Ide, "ata0")]
    [InlineData(QemuDiskInterface.VirtioMmio, "vda")]
    public void Diskbench_reports_its_requests_and_its_writes_reach_the_image(QemuDiskInterface kind, string device)
    {
        const int size = 65536, count = 3, disk = 2 * size;   // the third write wraps around to the start
        var initial = DiskTestModel.Noise(disk, 5);
        string path = Image(initial);
        var (outcome, serial) = Boot($"diskbench {device} read 4096 10 ; diskbench {device} write {size} {count}", new QemuDisk(path, kind));
        Assert.True(outcome.GuestStatus == 0, serial + outcome.Diagnostics);
        var results = Regex.Matches(serial, @"^RESULT diskbench (.*)$", RegexOptions.Multiline)
            .Select(m => m.Groups[1].Value.Trim().Split(' ').Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => f[1])).ToList();
        Assert.Equal(2, results.Count);
        Assert.Equal(("read", "4096", "10", $"{4096 * 10}"), (results[0]["op"], results[0]["size"], results[0]["count"], results[0]["bytes"]));
        Assert.Equal(("write", $"{size}", $"{count}", $"{size * count}"), (results[1]["op"], results[1]["size"], results[1]["count"], results[1]["bytes"]));
        Assert.True(ulong.Parse(results[1]["total_cycles"]) > 0);
        // One buffer of the pattern of sectors 0.. written at every offset.
        var expected = new byte[disk];
        DiskTestModel.Fill(expected, 0, size / DiskTestModel.SectorSize, 1UL << 13);
        expected.AsSpan(0, size).CopyTo(expected.AsSpan(size));
        Assert.True(expected.AsSpan().SequenceEqual(File.ReadAllBytes(path)), "the image does not hold diskbench's pattern");
    }
}

/// <summary>The same drivers on Nestor's software machine through <c>--disk</c> (VmConfig.Disks): ATA, virtio-blk and
/// the assigned controller, natively and under hardware assist (nested and shadow paging) and paravirtualization.
/// Each RESULT must be what the host model predicts (and so what QEMU printed for ATA and virtio-blk), and the image
/// file must hold what the guest wrote once the VM is disposed.</summary>
public class NestorOSDiskOnSimTests(ITestOutputHelper output)
{
    private const int DiskBytes = 4 << 20;

    internal static SimEngine Engine(string technique) => technique switch
    {
        "native" => new SimEngine(),
        "hw-nested" => new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested }),
        "hw-shadow" => new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow }),
        "pv" => new SimEngine(new SimOptions { Technique = Technique.Paravirtual }),
        _ => throw new ArgumentOutOfRangeException(nameof(technique)),
    };

    /// <summary>Boots NestorOS on sim with <paramref name="disks"/>; the VM is disposed (its disks flushed and closed)
    /// before this returns.</summary>
    internal static (VmOutcome Outcome, string Serial, ExitStatistics Exits) Boot(string commandLine, SimEngine engine, params DiskConfig[] disks)
    {
        var serial = new MemoryStream();
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
            MemoryBytes = 64UL << 20,
            CommandLine = commandLine,
            SerialOutput = serial,
            Timeout = TimeSpan.FromMinutes(5),
            Disks = disks,
        });
        var run = vm.Run(engine);
        vm.Serial.Flush();
        return (run.Outcome, Encoding.UTF8.GetString(serial.ToArray()), vm.Exits);
    }

    private static string Image(byte[] contents)
    {
        string path = NestorProcess.TempPath(".img");
        File.WriteAllBytes(path, contents);
        return path;
    }

    public static TheoryData<DiskInterface, string, string, string> Matrix()
    {
        var data = new TheoryData<DiskInterface, string, string, string>();
        foreach (var (kind, device) in new[] { (DiskInterface.Ata, "ata0"), (DiskInterface.Virtio, "vda"), (DiskInterface.Assigned, "nd0") })
        {
            foreach (string technique in new[] { "native", "hw-nested", "hw-shadow", "pv" })
            {
                data.Add(kind, device, technique, "");
            }
        }
        foreach (string technique in new[] { "native", "hw-nested", "hw-shadow", "pv" })
        {
            data.Add(DiskInterface.Ata, "ata0", technique, "ata=irq ");
            data.Add(DiskInterface.Virtio, "vda", technique, "virtio=irq ");
            data.Add(DiskInterface.Assigned, "nd0", technique, "ndma=irq ");
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Matrix))]
    public void Disktest_passes_through_every_interface_and_technique_and_the_image_holds_what_was_written(
        DiskInterface kind, string device, string technique, string options)
    {
        const int size = 8192;
        var initial = DiskTestModel.Noise(DiskBytes, 21);
        string path = Image(initial);
        var expectedImage = (byte[])initial.Clone();
        var expected = DiskTestModel.Run(expectedImage, random: true, size);

        var (outcome, serial, _) = Boot($"{options}disktest {device} rand {size}", Engine(technique), new DiskConfig(path, kind));

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Contains($"NestorOS: block device 0: {device}, {DiskBytes / DiskTestModel.SectorSize} sectors", serial);
        var r = DiskTestModel.Result(serial, "disktest");
        Assert.Equal((device, "rand", "0"), (r["dev"], r["mode"], r["errors"]));
        Assert.Equal((expected.Bytes.ToString(), expected.Requests.ToString(), expected.Checksum), (r["bytes"], r["requests"], r["checksum"]));
        Assert.True(expectedImage.AsSpan().SequenceEqual(File.ReadAllBytes(path)), "the image file holds other bytes than disktest wrote");
    }

    /// <summary>Every request size from 512 B to 1 MiB, once per interface, natively.</summary>
    [Theory]
    [InlineData(DiskInterface.Ata, "ata0")]
    [InlineData(DiskInterface.Virtio, "vda")]
    [InlineData(DiskInterface.Assigned, "nd0")]
    public void Disktest_of_every_size_passes_natively(DiskInterface kind, string device)
    {
        var initial = DiskTestModel.Noise(DiskBytes, 22);
        string path = Image(initial);
        var expectedImage = (byte[])initial.Clone();
        var expected = DiskTestModel.Run(expectedImage, random: false);

        var (outcome, serial, _) = Boot($"disktest {device} seq", Engine("native"), new DiskConfig(path, kind));

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        var r = DiskTestModel.Result(serial, "disktest");
        Assert.Equal((expected.Bytes.ToString(), expected.Requests.ToString(), expected.Checksum, "0"), (r["bytes"], r["requests"], r["checksum"], r["errors"]));
        Assert.True(expectedImage.AsSpan().SequenceEqual(File.ReadAllBytes(path)), "the image file holds other bytes than disktest wrote");
    }

    /// <summary>The cost the course predicts, from the counted exits (hw+nested): a 4 KiB read by ATA PIO is one port
    /// exit per 16-bit word (2,048) plus the register protocol; by virtio-blk a handful (one notify per batch); by the
    /// assigned controller, whose registers are the guest's own, fewer still. Two runs of 10 and 20 reads: the
    /// difference is the cost of 10 reads, without boot and program start.</summary>
    [Fact]
    public void A_4_KiB_read_costs_thousands_of_exits_by_ata_a_handful_by_virtio_and_fewer_assigned()
    {
        (long Exits, long Cycles) Run(DiskInterface kind, string device, int count)
        {
            string path = Image(new byte[DiskBytes]);
            var (outcome, serial, exits) = Boot($"diskbench {device} read 4096 {count}", Engine("hw-nested"), new DiskConfig(path, kind));
            Assert.True(outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
            return (exits.TotalExits, long.Parse(DiskTestModel.Result(serial, "diskbench")["total_cycles"]));
        }
        (double Exits, double Cycles) PerRead(DiskInterface kind, string device)
        {
            var (e10, c10) = Run(kind, device, 10);
            var (e20, c20) = Run(kind, device, 20);
            return ((e20 - e10) / 10.0, (c20 - c10) / 10.0);
        }
        var ata = PerRead(DiskInterface.Ata, "ata0");
        var virtio = PerRead(DiskInterface.Virtio, "vda");
        var assigned = PerRead(DiskInterface.Assigned, "nd0");
        output.WriteLine($"exits per 4 KiB read under hw+nested: ata {ata.Exits}, virtio {virtio.Exits}, assigned {assigned.Exits}; " +
            $"guest cycles per read: ata {ata.Cycles}, virtio {virtio.Cycles}, assigned {assigned.Cycles}");
        const int wordsPer4KiB = 4096 / 2;
        Assert.InRange(ata.Exits, wordsPer4KiB, 2 * wordsPer4KiB);
        Assert.InRange(virtio.Exits, 1, 16);
        Assert.InRange(assigned.Exits, 0, virtio.Exits - 1);
    }

    /// <summary>With one data descriptor limited to 4 KiB (<c>virtioseg=4096</c>, below the device's size_max), a
    /// 1 MiB transfer becomes several requests in several batches, one notify each; the data is still right.</summary>
    [Fact]
    public void Virtio_transfers_beyond_a_descriptors_limit_are_split_into_several_requests()
    {
        var initial = DiskTestModel.Noise(DiskBytes, 24);
        string path = Image(initial);
        var expectedImage = (byte[])initial.Clone();
        var expected = DiskTestModel.Run(expectedImage, random: true, DiskTestModel.MaxTransfer);
        var (outcome, serial, _) = Boot($"virtioseg=4096 disktest vda rand {DiskTestModel.MaxTransfer}", Engine("native"), new DiskConfig(path, DiskInterface.Virtio));
        Assert.True(outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        var r = DiskTestModel.Result(serial, "disktest");
        Assert.Equal((expected.Bytes.ToString(), expected.Checksum, "0"), (r["bytes"], r["checksum"], r["errors"]));
        Assert.True(expectedImage.AsSpan().SequenceEqual(File.ReadAllBytes(path)));

        long Exits(string options, int count)
        {
            var (o, text, exits) = Boot($"{options}diskbench vda read {DiskTestModel.MaxTransfer} {count}", Engine("hw-nested"),
                new DiskConfig(Image(new byte[DiskBytes]), DiskInterface.Virtio));
            Assert.True(o.GuestStatus == 0, o.Message + "\n" + text);
            return exits.TotalExits;
        }
        long whole = Exits("", 6) - Exits("", 3), split = Exits("virtioseg=4096 ", 6) - Exits("virtioseg=4096 ", 3);
        output.WriteLine($"exits per 1 MiB virtio read: {whole / 3.0} with one descriptor, {split / 3.0} with 4 KiB descriptors");
        Assert.True(split > whole, $"{split} exits for 3 split reads, {whole} for 3 whole ones");
    }

    /// <summary>The sim engine prints what QEMU prints for the same disktest on the same image (ATA: QEMU's PC;
    /// virtio-blk: QEMU's microvm).</summary>
    [Theory]
    [InlineData(DiskInterface.Ata, QemuDiskInterface.Ide, "ata0")]
    [InlineData(DiskInterface.Virtio, QemuDiskInterface.VirtioMmio, "vda")]
    public void Disktest_prints_the_same_result_on_sim_as_on_qemu(DiskInterface kind, QemuDiskInterface qemuKind, string device)
    {
        var initial = DiskTestModel.Noise(DiskBytes, 23);
        string simPath = Image(initial), qemuPath = Image(initial);
        string command = $"disktest {device} rand 32768";
        var (outcome, serial, _) = Boot(command, Engine("native"), new DiskConfig(simPath, kind));
        Assert.True(outcome.GuestStatus == 0, outcome.Message + "\n" + serial);

        string kernel = NestorProcess.WriteTemp(BuiltInGuests.NestorOS(), ".elf");
        var qemuSerial = new MemoryStream();
        var qemu = QemuReferenceMachine.Run(kernel, 64UL << 20, command, qemuSerial, TimeSpan.FromMinutes(3), disks: [new QemuDisk(qemuPath, qemuKind)]);
        string qemuText = Encoding.UTF8.GetString(qemuSerial.ToArray());
        Assert.True(qemu.GuestStatus == 0, qemuText + qemu.Diagnostics);

        Assert.Equal(SimEngineTests.ResultsWithoutTimings(qemuText), SimEngineTests.ResultsWithoutTimings(serial));
        Assert.True(File.ReadAllBytes(qemuPath).AsSpan().SequenceEqual(File.ReadAllBytes(simPath)), "sim and QEMU left different images");
    }
}
