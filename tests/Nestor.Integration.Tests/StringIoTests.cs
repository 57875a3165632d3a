using System.Text;
using Iced.Intel;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Legacy.Ata;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>String port I/O end to end: a ring-0 guest reads two sectors from the ATA disk with REP INSW, writes one
/// with REP OUTSW, and prints a line to COM1 with REP OUTSB, on the software machine natively and under every
/// technique (hw with nested and shadow paging: one I/O exit per item; trap-and-emulate, binary translation and
/// paravirtualization: the ring-1 kernel's INS/OUTS trap or call out and are emulated). Same data everywhere, and the
/// per-port counts are the items moved.</summary>
public class StringIoTests
{
    private const ulong ReadBuffer = 0x30_0000, WriteBuffer = 0x31_0000;
    private const ushort Data = 0x1F0, Com1 = 0x3F8;
    private const int ReadSectors = 2, FirstSector = 5, WrittenSector = 9, WordsPerSector = 256;
    private const string Line = "string I/O through REP OUTSB\n";

    /// <summary>Polls the Status register until BSY is clear and DRQ is as wanted; ends the run with status 2 on ERR.</summary>
    private static void WaitFor(Assembler a, bool dataRequest, Label failed)
    {
        var poll = a.CreateLabel();
        a.Label(ref poll);
        a.mov(dx, 0x1F7);
        a.@in(al, dx);
        a.test(al, AtaStatus.Error);
        a.jnz(failed);
        a.and(al, AtaStatus.Busy | AtaStatus.DataRequest);
        if (dataRequest)
        {
            a.cmp(al, AtaStatus.DataRequest);
        }
        else
        {
            a.test(al, al);
        }
        a.jne(poll);
    }

    /// <summary>Programs sector count, LBA and device (LBA mode, device 0) and issues <paramref name="command"/>.</summary>
    private static void Command(Assembler a, int sector, int count, byte command)
    {
        void Out(ushort port, int value)
        {
            a.mov(dx, port);
            a.mov(al, (byte)value);
            a.@out(dx, al);
        }
        Out(0x1F6, 0xE0);
        Out(0x1F2, count);
        Out(0x1F3, sector & 0xFF);
        Out(0x1F4, (sector >> 8) & 0xFF);
        Out(0x1F5, (sector >> 16) & 0xFF);
        Out(0x1F7, command);
    }

    private static byte[] Guest() => GuestAssembler.Assemble(a =>
    {
        var failed = a.CreateLabel();
        var text = a.CreateLabel();
        a.cld();
        // READ SECTORS: each sector is one DRQ block, taken with one REP INSW of 256 words.
        Command(a, FirstSector, ReadSectors, AtaCommand.ReadSectors);
        a.mov(rdi, ReadBuffer);
        for (int s = 0; s < ReadSectors; s++)
        {
            WaitFor(a, dataRequest: true, failed);
            a.mov(dx, Data);
            a.mov(ecx, WordsPerSector);
            a.rep.insw();
        }
        // WRITE SECTORS: one block with REP OUTSW, then the device completes it.
        Command(a, WrittenSector, 1, AtaCommand.WriteSectors);
        WaitFor(a, dataRequest: true, failed);
        a.mov(rsi, WriteBuffer);
        a.mov(dx, Data);
        a.mov(ecx, WordsPerSector);
        a.rep.outsw();
        WaitFor(a, dataRequest: false, failed);
        // A line to COM1, from the code's own bytes.
        a.lea(rsi, __[text]);
        a.mov(dx, Com1);
        a.mov(ecx, Line.Length);
        a.rep.outsb();
        a.mov(dx, 0xF4);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();
        a.Label(ref failed);
        a.mov(dx, 0xF4);
        a.mov(eax, 2);
        a.@out(dx, eax);
        a.hlt();
        a.Label(ref text);
        a.db(Encoding.ASCII.GetBytes(Line));
    });

    public static TheoryData<string> Techniques => ["native", "hw-nested", "hw-shadow", "trap", "translate", "paravirtual"];

    private static SimOptions Options(string technique) => technique switch
    {
        "native" => new SimOptions(),
        "trap" => new SimOptions { Technique = Technique.TrapAndEmulate },
        "translate" => new SimOptions { Technique = Technique.BinaryTranslation },
        "paravirtual" => new SimOptions { Technique = Technique.Paravirtual },
        "hw-shadow" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
        _ => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
    };

    private static byte[] Noise(int bytes, int seed)
    {
        var data = new byte[bytes];
        new Random(seed).NextBytes(data);
        return data;
    }

    [Theory]
    [MemberData(nameof(Techniques))]
    public void Rep_insw_outsw_and_outsb_move_the_same_data_under_every_technique_one_port_access_per_item(string technique)
    {
        using var engine = new SimEngine(Options(technique));
        Check(engine, technique);
    }

    /// <summary>The same guest on KVM (ring-0 port I/O works on the nested KVM here), the reference for sim: the same
    /// bytes in memory, on the disk and on COM1, and the same items per port (KVM brings a REP's items in few exits).</summary>
    [Fact]
    public void On_kvm_the_same_guest_moves_the_same_data_and_items()
    {
        NestorProcess.RequireKvm();
        Check(new KvmEngine(), "kvm");
    }

    private static void Check(IEngine engine, string technique)
    {
        var disk = new MemoryBlockBackend(64, name: "ata");
        var contents = Noise(64 * IBlockBackend.SectorSize, 31);
        contents.CopyTo(disk.Contents);
        var written = Noise(IBlockBackend.SectorSize, 32);
        var serial = new MemoryStream();
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("string-io", Guest()),
            MemoryBytes = 16UL << 20,
            SerialOutput = serial,
            Timeout = TimeSpan.FromSeconds(60),
            Disks = [new DiskConfig("ata", DiskInterface.Ata) { Backend = disk }],
        });
        vm.Memory.Write(new GuestPhysical(WriteBuffer), written);

        var run = vm.Run(engine);
        vm.Serial.Flush();

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        var read = vm.Memory.Span(new GuestPhysical(ReadBuffer), ReadSectors * IBlockBackend.SectorSize).ToArray();
        Assert.Equal(contents.AsSpan(FirstSector * IBlockBackend.SectorSize, read.Length).ToArray(), read);
        Assert.Equal(written, disk.Contents.Slice(WrittenSector * IBlockBackend.SectorSize, IBlockBackend.SectorSize).ToArray());
        Assert.Equal(Line, Encoding.ASCII.GetString(serial.ToArray()));

        var data = Assert.Single(vm.Exits.ByPort, p => p.Port == Data);
        Assert.Equal(((long)ReadSectors * WordsPerSector, (long)WordsPerSector), (data.Reads, data.Writes));
        var com1 = Assert.Single(vm.Exits.ByPort, p => p.Port == Com1);
        Assert.Equal(Line.Length, com1.Writes);
        if (technique.StartsWith("hw", StringComparison.Ordinal))
        {
            // Every port access is an I/O exit under hw (unconditional I/O exiting): one per item for INS/OUTS.
            long items = vm.Exits.ByPort.Sum(p => p.Reads + p.Writes);
            Assert.Equal(items, run.Machine!.Vmcs!.Exits(ExitReason.IoInstruction));
        }
        else if (technique is "trap" or "paravirtual")
        {
            // The ring-1 kernel's INS and OUTS trap (#GP: CPL 1 > IOPL 0), once per instruction, and are emulated.
            Assert.True(run.Machine!.Monitor!.PrivilegedInstructionTraps > ReadSectors + 2);
        }
    }

    /// <summary>NestorOS's ATA driver, now REP INSW: a 4 KiB read is still one data-port access per word (2,048), and
    /// under hw+nested one I/O exit per word. Two runs of 10 and 20 reads: the difference is 10 reads' worth.</summary>
    [Theory]
    [InlineData("native")]
    [InlineData("hw-nested")]
    public void NestorOS_reads_a_4_KiB_block_with_one_data_port_access_per_word(string technique)
    {
        (long DataReads, long PortExits) Run(int count)
        {
            string path = NestorProcess.TempPath(".img");
            File.WriteAllBytes(path, new byte[4 << 20]);
            try
            {
                var (outcome, serial, exits) = NestorOSDiskOnSimTests.Boot($"diskbench ata0 read 4096 {count}", NestorOSDiskOnSimTests.Engine(technique),
                    new DiskConfig(path, DiskInterface.Ata));
                Assert.True(outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
                return (exits.ByPort.Single(p => p.Port == Data).Reads, exits.Count(VmExitReason.PortRead));
            }
            finally
            {
                File.Delete(path);
            }
        }
        var (reads10, portExits10) = Run(10);
        var (reads20, portExits20) = Run(20);
        const int wordsPer4KiB = 4096 / 2;
        Assert.Equal(10L * wordsPer4KiB, reads20 - reads10);
        // Port reads other than data (Status polls) are a few per read; the data words dominate, one exit each.
        Assert.InRange(portExits20 - portExits10, 10L * wordsPer4KiB, 10L * (wordsPer4KiB + 16));
    }
}
