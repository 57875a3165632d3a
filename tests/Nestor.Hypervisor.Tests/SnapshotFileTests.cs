using System.Buffers.Binary;
using System.Text;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Techniques;
using Xunit;

namespace Nestor.Hypervisor.Tests;

/// <summary>The snapshot file (docs/migration.md): its CRC-64 is the catalogue's CRC-64/REDIS, its header says what
/// was saved, and every way a file can be wrong — truncated, corrupted, newer, of another engine, of another
/// configuration, its disk changed — is refused with a message saying which, before anything of the VM restored
/// into, or of the file and the disk, is changed.</summary>
public class SnapshotFileTests
{
    private const long Sectors = 2048;
    private const long StopAt = 3_000_000;

    private static Vm NewVm(MemoryBlockBackend disk, ulong memory = 64UL << 20, string commandLine = "",
        Nestor.Machine.Processor.ProcessorModel? cpuModel = null) => Vm.Create(new VmConfig
    {
        CpuModel = cpuModel ?? Nestor.Machine.Processor.ProcessorModel.Intel,
        Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
        MemoryBytes = memory,
        CommandLine = commandLine,
        Timeout = TimeSpan.FromSeconds(120),
        Disks = [new DiskConfig("scratch-disk", DiskInterface.Virtio) { Backend = disk }],
    });

    private static MemoryBlockBackend Disk()
    {
        var disk = new MemoryBlockBackend(Sectors, name: "scratch-disk");
        var sector = new byte[512];
        new Random(16).NextBytes(sector);
        disk.Write(7, sector);
        return disk;
    }

    private static readonly Lazy<byte[]> Taken = new(() =>
    {
        using var vm = NewVm(Disk());
        using var engine = new SimEngine(new SimOptions { StopAtInstruction = StopAt });
        Assert.Equal(VmOutcomeKind.Breakpoint, vm.Run(engine).Outcome.Kind);
        return SnapshotFile.Encode(vm, engine);
    });

    [Fact]
    public void Crc64_is_the_catalogues_crc64_redis_and_continues_across_chunks()
    {
        // The check value of CRC-64/REDIS in the CRC catalogue (reveng): the CRC of the nine ASCII digits.
        Assert.Equal(0xE9C6D914C4B8D9CAUL, Crc64.Compute("123456789"u8));
        Assert.Equal(0UL, Crc64.Compute([]));
        var data = new byte[10_000];
        new Random(5).NextBytes(data);
        ulong whole = Crc64.Compute(data);
        Assert.Equal(whole, Crc64.Compute(data.AsSpan(4321), Crc64.Compute(data.AsSpan(0, 4321))));
        data[9_999] ^= 1;
        Assert.NotEqual(whole, Crc64.Compute(data));
    }

    [Fact]
    public void The_header_says_what_was_saved_and_the_sections_are_listed()
    {
        var contents = SnapshotFile.Decode(Taken.Value);
        var h = contents.Header;
        Assert.Equal(SnapshotFile.FormatVersion, h.FormatVersion);
        Assert.Equal(EngineKind.Sim, h.Engine);
        Assert.Equal("native", h.TechniqueName);
        Assert.Equal(64UL << 20, h.MemoryBytes);
        Assert.Equal(StopAt, h.InstructionsRetired);
        Assert.Equal(Taken.Value.Length, h.FileBytes);
        Assert.Contains("memory=67108864\n", h.Configuration);
        var disk = Assert.Single(h.Disks);
        Assert.Equal(("scratch-disk", Sectors * 512), (disk.Path, disk.Bytes));
        Assert.Equal(64, disk.Sha256.Length);
        var tags = contents.Sections.Select(s => s.Tag).ToList();
        Assert.Equal(["CPU0", "RAM ", "UART"], tags.Take(3));
        Assert.Contains("VIO0", tags); // the virtio-blk disk's transport and device
        Assert.Equal("VMM ", tags[^1]);
        Assert.Equal(contents.Body.Length - 6, contents.Sections.Sum(s => 10 + (long)s.Length));
    }

    [Fact]
    public void A_restored_vm_continues_to_the_same_end_as_an_uninterrupted_one()
    {
        var wholeSerial = new MemoryStream();
        long wholeInstructions;
        using (var vm = Vm.Create(new VmConfig
        {
            Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
            MemoryBytes = 64UL << 20,
            SerialOutput = wholeSerial,
            Timeout = TimeSpan.FromSeconds(120),
            Disks = [new DiskConfig("scratch-disk", DiskInterface.Virtio) { Backend = Disk() }],
        }))
        using (var engine = new SimEngine())
        {
            Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
            vm.Serial.Flush();
            wholeInstructions = vm.Vcpus[0].State.InstructionsRetired;
        }
        var restSerial = new MemoryStream();
        using (var vm = Vm.Create(new VmConfig
        {
            Kernel = new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf),
            MemoryBytes = 64UL << 20,
            SerialOutput = restSerial,
            Timeout = TimeSpan.FromSeconds(120),
            Disks = [new DiskConfig("scratch-disk", DiskInterface.Virtio) { Backend = Disk() }],
        }))
        using (var engine = new SimEngine())
        {
            SnapshotFile.Restore(SnapshotFile.Decode(Taken.Value), vm, engine);
            Assert.Equal(StopAt, vm.Vcpus[0].State.InstructionsRetired);
            Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
            vm.Serial.Flush();
            Assert.Equal(wholeInstructions, vm.Vcpus[0].State.InstructionsRetired);
        }
        string whole = Encoding.UTF8.GetString(wholeSerial.ToArray());
        string rest = Encoding.UTF8.GetString(restSerial.ToArray());
        Assert.Contains("RESULT init", rest);
        Assert.EndsWith(rest, whole);
    }

    public static TheoryData<string> Cuts => ["one byte short", "half", "inside the header", "inside the magic"];

    [Theory]
    [MemberData(nameof(Cuts))]
    public void A_truncated_file_is_refused_as_truncated(string cut)
    {
        byte[] file = Taken.Value;
        int length = cut switch { "one byte short" => file.Length - 1, "half" => file.Length / 2, "inside the header" => 15, _ => 5 };
        var e = Refused(file[..length]);
        Assert.Equal(SnapshotRefusal.Truncated, e.Refusal);
        Assert.Contains("truncated", e.Message);
    }

    public static TheoryData<string> Flips => ["technique byte", "configuration text", "RAM", "last section", "checksum"];

    [Theory]
    [MemberData(nameof(Flips))]
    public void A_flipped_byte_anywhere_is_refused_as_corrupted(string where)
    {
        byte[] file = (byte[])Taken.Value.Clone();
        int at = where switch
        {
            "technique byte" => 21,
            "configuration text" => 80,
            "RAM" => file.Length / 2,
            "last section" => file.Length - 9,
            _ => file.Length - 1,
        };
        file[at] ^= 0x20;
        var e = Refused(file);
        Assert.Equal(SnapshotRefusal.Corrupted, e.Refusal);
        Assert.Contains("CRC-64", e.Message);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_newer_format_version_is_refused_as_newer_whether_or_not_its_checksum_was_recomputed(bool recompute)
    {
        byte[] file = (byte[])Taken.Value.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(8), SnapshotFile.FormatVersion + 1);
        if (recompute)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(file.Length - 8), Crc64.Compute(file.AsSpan(0, file.Length - 8)));
        }
        var e = Refused(file);
        Assert.Equal(SnapshotRefusal.NewerVersion, e.Refusal);
        Assert.Contains($"format version is {SnapshotFile.FormatVersion + 1}, newer than this Nestor reads ({SnapshotFile.FormatVersion})", e.Message);
    }

    [Fact]
    public void Not_a_snapshot_is_refused_as_such() =>
        Assert.Contains("not a Nestor snapshot", Refused(Encoding.ASCII.GetBytes("#!/bin/sh\necho this is not a snapshot\n")).Message);

    [Fact]
    public void A_snapshot_taken_on_sim_is_refused_by_the_kvm_engine_before_anything_is_restored()
    {
        var e = RefusedOnRestore(vm => new KvmEngine());
        Assert.Equal(SnapshotRefusal.WrongEngine, e.Refusal);
        Assert.Contains("taken on engine sim, and this VM runs on kvm", e.Message);
    }

    [Fact]
    public void Another_memory_size_is_refused_naming_both()
    {
        var e = RefusedOnRestore(_ => new SimEngine(), memory: 32UL << 20);
        Assert.Equal(SnapshotRefusal.WrongConfiguration, e.Refusal);
        Assert.Contains("64 MiB of memory (67,108,864 bytes), this one 32 MiB", e.Message);
    }

    [Fact]
    public void Another_technique_is_refused_naming_both()
    {
        var e = RefusedOnRestore(_ => new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow }));
        Assert.Equal(SnapshotRefusal.WrongConfiguration, e.Refusal);
        Assert.Contains("taken under technique native, and this VM runs hw+shadow", e.Message);
    }

    [Fact]
    public void Another_command_line_is_refused_naming_the_line_that_differs()
    {
        var e = RefusedOnRestore(_ => new SimEngine(), commandLine: "hello");
        Assert.Equal(SnapshotRefusal.WrongConfiguration, e.Refusal);
        Assert.Contains("had cmdline=, this one has cmdline=hello", e.Message);
    }

    [Fact]
    public void Another_processor_model_is_refused_naming_both_and_the_option()
    {
        // The model is configuration (docs/cpu-model.md "Processor models"): a guest that read CPUID's vendor and
        // took that vendor's paths cannot continue on the other.
        var e = RefusedOnRestore(_ => new SimEngine(), cpuModel: Nestor.Machine.Processor.ProcessorModel.Amd);
        Assert.Equal(SnapshotRefusal.WrongConfiguration, e.Refusal);
        Assert.Contains("taken on the intel processor model, and this VM's is amd", e.Message);
        Assert.Contains("--cpu-model intel", e.Advice);
        using var amd = NewVm(Disk(), cpuModel: Nestor.Machine.Processor.ProcessorModel.Amd);
        string text = SnapshotFile.ConfigurationText(amd, null);
        Assert.Contains("cpu-model=amd\n", text);
        Assert.Equal("amd", SnapshotFile.CpuModelOf(text));
        Assert.Equal("intel", SnapshotFile.CpuModelOf(SnapshotFile.Decode(Taken.Value).Header.Configuration));
    }

    [Fact]
    public void A_disk_changed_since_the_snapshot_is_refused_naming_it()
    {
        var disk = Disk();
        var sector = new byte[512];
        sector[0] = 1;
        disk.Write(100, sector);
        var e = RefusedOnRestore(_ => new SimEngine(), disk: disk);
        Assert.Equal(SnapshotRefusal.DiskChanged, e.Refusal);
        Assert.Contains("the disk 'scratch-disk' (virtio slot 0) changed since the snapshot", e.Message);
        var read = new byte[512];
        disk.Read(100, read);
        Assert.Equal(sector, read); // the refusal wrote nothing to the disk
    }

    [Fact]
    public void A_save_replaces_the_file_whole_and_a_failed_save_leaves_nothing()
    {
        string directory = Directory.CreateTempSubdirectory("nestor-snapshot-test-").FullName;
        try
        {
            string path = Path.Combine(directory, "vm.snap");
            File.WriteAllText(path, "the previous snapshot");
            Assert.Equal(Taken.Value.Length, SnapshotFile.Write(path, Taken.Value));
            Assert.Equal(Taken.Value, File.ReadAllBytes(path));
            Assert.Equal(["vm.snap"], Directory.GetFiles(directory).Select(Path.GetFileName));
            string missing = Path.Combine(directory, "no-such-directory", "vm.snap");
            var e = Assert.Throws<BadInputException>(() => SnapshotFile.Write(missing, Taken.Value));
            Assert.Contains("cannot write the snapshot", e.Message);
            Assert.Equal(Taken.Value, File.ReadAllBytes(path));
            Assert.Equal(["vm.snap"], Directory.GetFiles(directory).Select(Path.GetFileName));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static SnapshotFormatException Refused(byte[] file)
    {
        byte[] before = (byte[])file.Clone();
        var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Decode(file));
        Assert.Equal(before, file);
        return e;
    }

    /// <summary>Restores the snapshot into a fresh VM (of <paramref name="memory"/>, <paramref name="commandLine"/>,
    /// <paramref name="disk"/>) and engine, expecting a refusal; checks that the VM kept its boot state and the
    /// snapshot its bytes.</summary>
    private static SnapshotFormatException RefusedOnRestore(Func<Vm, IEngine> engineFor, ulong memory = 64UL << 20, string commandLine = "",
        MemoryBlockBackend? disk = null, Nestor.Machine.Processor.ProcessorModel? cpuModel = null)
    {
        using var vm = NewVm(disk ?? Disk(), memory, commandLine, cpuModel);
        var engine = engineFor(vm);
        try
        {
            byte[] file = (byte[])Taken.Value.Clone();
            var boot = vm.Vcpus[0].State;
            var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Restore(SnapshotFile.Decode(file), vm, engine));
            Assert.Equal(Taken.Value, file);
            Assert.Equal(0, vm.Vcpus[0].State.InstructionsRetired);
            Assert.Equal(boot.Rip, vm.Vcpus[0].State.Rip);
            return e;
        }
        finally
        {
            (engine as IDisposable)?.Dispose();
        }
    }
}
