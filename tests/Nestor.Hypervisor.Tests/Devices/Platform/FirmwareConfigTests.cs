using System.Buffers.Binary;
using System.Text;
using Iced.Intel;
using Nestor.Hypervisor.Devices.Platform;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>fw_cfg as QEMU's docs/specs/fw_cfg.rst describes it, read by a guest through ports 0x510/0x511.</summary>
public class FirmwareConfigTests
{
    /// <summary>Emits: select <paramref name="key"/> (a 16-bit OUT to 0x510), then read <paramref name="count"/>
    /// bytes from 0x511 into the results from slot <paramref name="slot"/> on (byte by byte).</summary>
    private static void ReadItem(Assembler a, ushort key, int count, int slot)
    {
        a.mov(dx, FirmwareConfig.SelectorPort);
        a.mov(ax, key);
        a.@out(dx, ax);
        a.mov(dx, FirmwareConfig.DataPort);
        a.lea(rdi, __[r15 + slot * 8]);
        a.mov(ecx, count);
        var loop = a.CreateLabel();
        a.Label(ref loop);
        a.@in(al, dx);
        a.stosb();
        a.dec(ecx);
        a.jnz(loop);
    }

    [Fact]
    public void A_guest_reads_the_signature_ID_CPU_count_RAM_size_and_command_line()
    {
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            ReadItem(a, FirmwareConfig.Signature, 4, 0);
            ReadItem(a, FirmwareConfig.Id, 4, 1);
            ReadItem(a, FirmwareConfig.CpuCount, 2, 2);
            ReadItem(a, FirmwareConfig.MaximumCpus, 2, 3);
            ReadItem(a, FirmwareConfig.RamSize, 8, 4);
            ReadItem(a, FirmwareConfig.CommandLineSize, 4, 5);
            ReadItem(a, FirmwareConfig.CommandLineData, 16, 6);
            ReadItem(a, 0x1234, 4, 8); // no such item: zeros
            ReadItem(a, FirmwareConfig.Signature, 6, 9); // past the end: zeros
        }, commandLine: "console=ttyS0");
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal("QEMU", PlatformGuest.Ascii(PlatformGuest.Slot(vm, 0), 4));
            Assert.Equal(1UL, PlatformGuest.Slot(vm, 1));                     // traditional interface, no DMA
            Assert.Equal((ulong)vm.Vcpus.Count, PlatformGuest.Slot(vm, 2));
            Assert.Equal((ulong)vm.Vcpus.Count, PlatformGuest.Slot(vm, 3));
            Assert.Equal(vm.Config.MemoryBytes, PlatformGuest.Slot(vm, 4));
            Assert.Equal((ulong)"console=ttyS0".Length + 1, PlatformGuest.Slot(vm, 5));
            var line = vm.Memory.Span(new Machine.Addresses.GuestPhysical(PlatformGuest.Results + 48), 14).ToArray();
            Assert.Equal("console=ttyS0\0", Encoding.ASCII.GetString(line));
            Assert.Equal(0UL, PlatformGuest.Slot(vm, 8));
            Assert.Equal("QEMU\0\0", Encoding.ASCII.GetString(vm.Memory.Span(new Machine.Addresses.GuestPhysical(PlatformGuest.Results + 72), 6)));
        }
    }

    [Fact]
    public void The_file_directory_is_big_endian_and_sorted_and_etc_e820_holds_the_memory_map()
    {
        var config = new FirmwareConfig(64UL << 20, 2, "");
        config.AddFile("etc/zeta", [1, 2, 3]);
        ushort e820 = config.AddFile("etc/e820", new byte[40]);
        byte[] Read(ushort key, int count)
        {
            config.Write(FirmwareConfig.SelectorPort, 2, key);
            return Enumerable.Range(0, count).Select(_ => (byte)config.Read(FirmwareConfig.DataPort, 1)).ToArray();
        }
        byte[] directory = Read(FirmwareConfig.FileDirectory, 4 + 2 * 64);
        Assert.Equal(2u, BinaryPrimitives.ReadUInt32BigEndian(directory));
        Assert.Equal(40u, BinaryPrimitives.ReadUInt32BigEndian(directory.AsSpan(4)));
        Assert.Equal(e820, BinaryPrimitives.ReadUInt16BigEndian(directory.AsSpan(8)));
        Assert.Equal("etc/e820", Encoding.ASCII.GetString(directory, 12, 8));
        Assert.Equal(0, directory[20]); // NUL-padded
        Assert.Equal("etc/zeta", Encoding.ASCII.GetString(directory, 12 + 64, 8));
        Assert.Equal([1, 2, 3], Read(FirmwareConfig.FirstFile, 3));
        Assert.Throws<ArgumentException>(() => config.AddFile("etc/e820", []));

        // The VM's own: etc/e820 with the firmware map, 20-byte little-endian entries.
        using var vm = Vm.Create(new Configuration.VmConfig { Kernel = Nestor.Hypervisor.BuiltIn.GuestAssembler.Flat("x", [0xF4]), MemoryBytes = 32UL << 20 });
        var fw = vm.PcPlatform.FirmwareConfig;
        byte[] vmDirectory = fw.Item(FirmwareConfig.FileDirectory)!;
        ushort key = BinaryPrimitives.ReadUInt16BigEndian(vmDirectory.AsSpan(8));
        Assert.Equal("etc/e820", Encoding.ASCII.GetString(vmDirectory, 12, 8));
        byte[] map = fw.Item(key)!;
        var expected = Nestor.Hypervisor.Boot.FirmwareMemoryMap.Build(32UL << 20);
        Assert.Equal(expected.Count * 20, map.Length);
        Assert.Equal(expected[^1].Start, BinaryPrimitives.ReadUInt64LittleEndian(map.AsSpan(20 * (expected.Count - 1))));
        Assert.Equal(expected[^1].Length, BinaryPrimitives.ReadUInt64LittleEndian(map.AsSpan(20 * (expected.Count - 1) + 8)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(map.AsSpan(20 * (expected.Count - 1) + 16)));
    }

    [Fact]
    public void The_selector_and_read_position_survive_a_snapshot()
    {
        var config = new FirmwareConfig(64UL << 20, 1, "abc");
        config.Write(FirmwareConfig.SelectorPort, 2, FirmwareConfig.Signature);
        Assert.Equal((uint)'Q', config.Read(FirmwareConfig.DataPort, 1));
        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(config);
        var restored = new FirmwareConfig(64UL << 20, 1, "abc");
        new Persistence.SnapshotReader(writer.ToArray()).ReadSection(restored);
        Assert.Equal((uint)'E', restored.Read(FirmwareConfig.DataPort, 1));
        Assert.Equal(FirmwareConfig.Signature, restored.Selector);
    }
}
