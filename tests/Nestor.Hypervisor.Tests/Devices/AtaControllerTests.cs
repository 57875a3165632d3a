using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Devices.Legacy.Ata;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices;

/// <summary>The emulated ATA disk driven by ring-0 guests on the software machine (natively and under hardware assist
/// with nested and shadow paging) through the register protocol of ATA/ATAPI-6, and its registers driven directly for
/// the error and reset cases.</summary>
public class AtaControllerTests
{
    private const int Sector = IBlockBackend.SectorSize;
    private const ushort Data = AtaController.CommandBlock, ErrorPort = Data + 1, Count = Data + 2, LbaLow = Data + 3,
        LbaMid = Data + 4, LbaHigh = Data + 5, DevicePort = Data + 6, StatusPort = Data + 7, Control = AtaController.ControlBlock;
    private const ulong IdentifyBuffer = 0x20_0000, Pattern = 0x21_0000, Readback = 0x22_0000, Results = 0x23_0000,
        Idt = 0x24_0000, Scratch = 0x24_1000;
    private const int Vector = 0x2E;

    // Result slots (8 bytes each at Results).
    private const int StatusAfterIdentify = 0, StatusPolls = 1, FailedStatus = 2, FailedError = 3, FailedStage = 4,
        Interrupts = 5, HandlerStatus = 6, AfterIdentify = 7, AfterRead = 8, AfterWrite = 9, AfterFlush = 10, AfterAbort = 11,
        WhileDisabled = 12, AfterEnable = 13, AbortStatus = 14;
    private const int Slots = 15;

    public static TheoryData<string> Techniques => ["native", "hw-nested", "hw-shadow"];

    private static SimOptions Options(string technique) => technique switch
    {
        "native" => new SimOptions(),
        "hw-shadow" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
        _ => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
    };

    private static void Out(Assembler a, ushort port, int value)
    {
        a.mov(dx, port);
        a.mov(al, (byte)value);
        a.@out(dx, al);
    }

    /// <summary>Polls Status until BSY clears, counting each read in R12; then fails (to <paramref name="fail"/>) on ERR,
    /// or when DRQ is not as <paramref name="dataRequest"/> says it must be.</summary>
    private static void Poll(Assembler a, Label fail, bool dataRequest)
    {
        var wait = a.CreateLabel();
        a.Label(ref wait);
        a.inc(r12);
        a.mov(dx, StatusPort);
        a.@in(al, dx);
        a.test(al, AtaStatus.Busy);
        a.jnz(wait);
        a.test(al, AtaStatus.Error);
        a.jnz(fail);
        a.test(al, AtaStatus.DataRequest);
        if (dataRequest)
        {
            a.jz(fail);
        }
        else
        {
            a.jnz(fail);
        }
    }

    /// <summary>Writes the address and count of a READ or WRITE: LBA28 in Device's low nibble, or LBA48 by writing each
    /// register twice, the high-order byte first (ATA/ATAPI-6 §6.16.2).</summary>
    private static void Address(Assembler a, long lba, int sectors, bool extended)
    {
        if (extended)
        {
            Out(a, Count, sectors >> 8);
            Out(a, LbaLow, (int)(lba >> 24));
            Out(a, LbaMid, (int)(lba >> 32));
            Out(a, LbaHigh, (int)(lba >> 40));
        }
        Out(a, Count, sectors);
        Out(a, LbaLow, (int)lba);
        Out(a, LbaMid, (int)(lba >> 8));
        Out(a, LbaHigh, (int)(lba >> 16));
        Out(a, DevicePort, 0xE0 | (extended ? 0 : (int)(lba >> 24) & 0x0F));
    }

    /// <summary>Moves <paramref name="sectors"/> DRQ blocks of one sector: waits for DRQ, then 256 words through the
    /// Data register (RDI or RSI advancing through the buffer).</summary>
    private static void Blocks(Assembler a, Label fail, int sectors, bool write)
    {
        var next = a.CreateLabel();
        a.mov(ebx, sectors);
        a.Label(ref next);
        a.mov(dx, StatusPort); // (Iced takes one label per instruction, and the poll starts with its own)
        Poll(a, fail, dataRequest: true);
        Words(a, write);
        a.dec(ebx);
        a.jnz(next);
    }

    /// <summary>One sector's 256 words by REP INSW or REP OUTSW: one port access (and, under a VMM, one exit) per
    /// word.</summary>
    private static void Words(Assembler a, bool write)
    {
        a.mov(ecx, Sector / 2);
        a.mov(dx, Data);
        if (write)
        {
            a.rep.outsw();
        }
        else
        {
            a.rep.insw();
        }
    }

    private static void Stage(Assembler a, int stage) => a.mov(r13d, stage);

    private static void Exit(Assembler a, int status)
    {
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, status);
        a.@out(dx, eax);
        a.hlt();
    }

    /// <summary>Stores the failing status, error and stage and exits with status 1.</summary>
    private static void FailPath(Assembler a, Label fail)
    {
        a.Label(ref fail);
        a.movzx(eax, al);
        a.mov(__qword_ptr[r15 + FailedStatus * 8], rax);
        a.mov(dx, ErrorPort);
        a.@in(al, dx);
        a.movzx(eax, al);
        a.mov(__qword_ptr[r15 + FailedError * 8], rax);
        a.mov(__qword_ptr[r15 + FailedStage * 8], r13);
        Exit(a, 1);
    }

    /// <summary>The polling driver: IDENTIFY DEVICE; WRITE SECTORS (or EXT) of the 4 KiB pattern at
    /// <paramref name="lba"/>; FLUSH CACHE; READ SECTORS EXT (or not) of it into another buffer; compares the two; exits
    /// with 0 when they match. nIEN is set: it interrupts nobody.</summary>
    private static byte[] PollingGuest(long lba, bool writeExtended, bool readExtended) => GuestAssembler.Assemble(a =>
    {
        var fail = a.CreateLabel();
        a.mov(r15, Results);
        a.xor(r12d, r12d);
        Out(a, Control, AtaDeviceControl.InterruptDisable);
        Out(a, DevicePort, 0xE0);

        Stage(a, 1);
        Out(a, StatusPort, AtaCommand.IdentifyDevice);
        a.mov(rdi, IdentifyBuffer);
        Blocks(a, fail, 1, write: false);
        a.mov(dx, StatusPort);
        a.@in(al, dx);
        a.movzx(eax, al);
        a.mov(__qword_ptr[r15 + StatusAfterIdentify * 8], rax);

        Stage(a, 2);
        Address(a, lba, 8, writeExtended);
        Out(a, StatusPort, writeExtended ? AtaCommand.WriteSectorsExt : AtaCommand.WriteSectors);
        a.mov(rsi, Pattern);
        Blocks(a, fail, 8, write: true);
        Poll(a, fail, dataRequest: false);

        Stage(a, 3);
        Out(a, StatusPort, AtaCommand.FlushCache);
        Poll(a, fail, dataRequest: false);

        Stage(a, 4);
        Address(a, lba, 8, readExtended);
        Out(a, StatusPort, readExtended ? AtaCommand.ReadSectorsExt : AtaCommand.ReadSectors);
        a.mov(rdi, Readback);
        Blocks(a, fail, 8, write: false);
        Poll(a, fail, dataRequest: false);

        Stage(a, 5);
        a.mov(rsi, Pattern);
        a.mov(rdi, Readback);
        a.mov(ecx, 8 * Sector);
        a.repe.cmpsb();
        a.jne(fail);
        a.mov(__qword_ptr[r15 + StatusPolls * 8], r12);
        Exit(a, 0);
        FailPath(a, fail);
    });

    private static VmConfig Config(byte[] code, params DiskConfig[] disks) => new()
    {
        Kernel = GuestAssembler.Flat("ata", code),
        MemoryBytes = 16UL << 20,
        SerialOutput = Stream.Null,
        Timeout = TimeSpan.FromSeconds(120),
        Disks = disks,
    };

    private static DiskConfig Ata(IBlockBackend backend) => new(backend.Name, DiskInterface.Ata) { Backend = backend };

    private static byte[] PatternBytes(int seed)
    {
        var bytes = new byte[8 * Sector];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static ulong[] ReadSlots(Vm vm) =>
        [.. Enumerable.Range(0, Slots).Select(i => vm.Memory.ReadUInt64(new GuestPhysical(Results + (ulong)i * 8)))];

    private static AtaController Controller(Vm vm) => Assert.IsType<AtaController>(vm.Bus.PortDevice(AtaController.CommandBlock));

    [Theory]
    [MemberData(nameof(Techniques))]
    public void A_guest_identifies_the_disk_writes_flushes_and_reads_back_its_pattern(string technique)
    {
        var disk = new MemoryBlockBackend(64, serial: "ATA-TEST-0042");
        const long lba = 5;
        using var vm = Vm.Create(Config(PollingGuest(lba, writeExtended: false, readExtended: true), Ata(disk)));
        byte[] pattern = PatternBytes(14);
        vm.Memory.Write(new GuestPhysical(Pattern), pattern);
        using var engine = new SimEngine(Options(technique));

        var outcome = vm.Run(engine).Outcome;

        var s = ReadSlots(vm);
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0,
            $"{technique}: {outcome.Message}; stage {s[FailedStage]} status 0x{s[FailedStatus]:x} error 0x{s[FailedError]:x}");
        // The disk holds the pattern where LBA28 put it, READ SECTORS EXT found it there, and the flush reached it.
        Assert.Equal(pattern, disk.Contents.Slice((int)lba * Sector, pattern.Length).ToArray());
        Assert.Equal(1, disk.Flushes);
        Assert.Equal((ulong)AtaStatus.Ready, s[StatusAfterIdentify]); // DRQ cleared once the 256 words were read

        // What IDENTIFY said, as the guest received it.
        var words = new byte[Sector];
        vm.Memory.Span(new GuestPhysical(IdentifyBuffer), Sector).CopyTo(words);
        Assert.Equal(0, AtaIdentify.Word(words, 0) & 0x8000);                         // an ATA device
        Assert.Equal("ATA-TEST-0042", AtaIdentify.ReadText(words, 10, 20));
        Assert.Equal(AtaIdentify.Model, AtaIdentify.ReadText(words, 27, 40));
        Assert.NotEqual(0, AtaIdentify.Word(words, 49) & (1 << 9));                    // LBA
        Assert.Equal(64u, AtaIdentify.Word(words, 60) | (uint)AtaIdentify.Word(words, 61) << 16);
        Assert.Equal(64ul, Enumerable.Range(0, 4).Aggregate(0ul, (v, i) => v | (ulong)AtaIdentify.Word(words, 100 + i) << (16 * i)));
        Assert.Equal(0x7400, AtaIdentify.Word(words, 83) & 0xF400);                   // bits 14, 13, 12, 10: valid, FLUSH EXT, FLUSH, LBA48
        Assert.Equal(0x3400, AtaIdentify.Word(words, 86) & 0x3400);
        Assert.Equal(0xA5, words[510]);
        Assert.Equal(0, words.Aggregate(0, (sum, b) => (sum + b) & 0xFF));             // the integrity word's checksum

        var stats = vm.Disks.Single().Statistics;
        Assert.Equal((1L, 1L, 1L, 1L, 0L), (stats.Reads, stats.Writes, stats.Flushes, stats.Other, stats.Errors));
        Assert.Equal((8L * Sector, 8L * Sector), (stats.BytesRead, stats.BytesWritten));
        // Every data word was a port access of its own: IDENTIFY's 256 and 8 sectors' each way.
        var data = vm.Exits.ByPort.Single(p => p.Port == Data);
        Assert.Equal(((Sector / 2) * 9L, (Sector / 2) * 8L), (data.Reads, data.Writes));
        Assert.Equal("ata0", data.Device);
        Assert.Equal(0, Controller(vm).StrayDataAccesses);
    }

    [Fact]
    public void Lba48_reaches_sectors_past_the_32_bit_boundary_of_a_sparse_image_file()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nestor-ata-{Guid.NewGuid():N}.img");
        // 2^32 + 64 sectors (2 TiB and 32 KiB), sparse: only the written sectors take room.
        const long sectors = (1L << 32) + 64, lba = (1L << 32) + 17;
        using (var file = File.Create(path))
        {
            file.SetLength(sectors * Sector);
        }
        try
        {
            byte[] pattern = PatternBytes(48);
            using (var vm = Vm.Create(Config(PollingGuest(lba, writeExtended: true, readExtended: true), new DiskConfig(path, DiskInterface.Ata))))
            {
                vm.Memory.Write(new GuestPhysical(Pattern), pattern);
                using var engine = new SimEngine(new SimOptions());
                var outcome = vm.Run(engine).Outcome;
                var s = ReadSlots(vm);
                Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0,
                    $"{outcome.Message}; stage {s[FailedStage]} status 0x{s[FailedStatus]:x} error 0x{s[FailedError]:x}");
                var words = new byte[Sector];
                vm.Memory.Span(new GuestPhysical(IdentifyBuffer), Sector).CopyTo(words);
                Assert.Equal(0x0FFF_FFFFu, AtaIdentify.Word(words, 60) | (uint)AtaIdentify.Word(words, 61) << 16); // LBA28's most
                Assert.Equal((ulong)sectors, Enumerable.Range(0, 4).Aggregate(0ul, (v, i) => v | (ulong)AtaIdentify.Word(words, 100 + i) << (16 * i)));
            }
            using var image = File.OpenRead(path);
            var back = new byte[pattern.Length];
            image.Position = lba * Sector;
            image.ReadExactly(back);
            Assert.Equal(pattern, back);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>One 4 KiB read: the register writes of READ SECTORS, a status poll before each DRQ block, then 256 data
    /// words a block. On the software machine each access is one exit, so the counts come out of the protocol.</summary>
    [Theory]
    [MemberData(nameof(Techniques))]
    public void A_4_kib_read_costs_one_exit_per_data_word_and_register_access(string technique)
    {
        const int bytes = 4096;
        var disk = new MemoryBlockBackend(64);
        using var vm = Vm.Create(Config(GuestAssembler.Assemble(a =>
        {
            var fail = a.CreateLabel();
            a.mov(r15, Results);
            a.xor(r12d, r12d);
            Address(a, 0, bytes / Sector, extended: false);
            Out(a, StatusPort, AtaCommand.ReadSectors);
            a.mov(rdi, Readback);
            Blocks(a, fail, bytes / Sector, write: false);
            a.mov(__qword_ptr[r15 + StatusPolls * 8], r12);
            Exit(a, 0);
            FailPath(a, fail);
        }), Ata(disk)));
        using var engine = new SimEngine(Options(technique));
        var run = vm.Run(engine);

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        long polls = (long)ReadSlots(vm)[StatusPolls];
        int blocks = bytes / Sector;                 // READ SECTORS: one DRQ block per sector
        long dataWords = blocks * (Sector / 2);      // 16-bit Data register
        const int registerWrites = 6;                // Sector Count, LBA Low, Mid, High, Device, Command
        Assert.Equal(blocks, polls);                 // the model is never busy: one poll finds each block ready
        var ports = vm.Exits.ByPort.ToDictionary(p => p.Port);
        Assert.Equal((dataWords, 0L), (ports[Data].Reads, ports[Data].Writes));
        Assert.Equal((polls, 1L), (ports[StatusPort].Reads, ports[StatusPort].Writes));
        foreach (ushort port in new[] { Count, LbaLow, LbaMid, LbaHigh, DevicePort })
        {
            Assert.Equal((0L, 1L), (ports[port].Reads, ports[port].Writes));
        }
        Assert.Equal(dataWords + polls, vm.Exits.Count(VmExitReason.PortRead));
        Assert.Equal(registerWrites + 1, vm.Exits.Count(VmExitReason.PortWrite)); // and the debug exit
        if (run.Machine!.Vmcs is { } vmcs)
        {
            // Under hardware assist each of them is a VM exit for an I/O instruction, REP INSW's words included.
            Assert.Equal(dataWords + polls + registerWrites + 1, vmcs.Exits(ExitReason.IoInstruction));
        }
    }

    /// <summary>The interrupt-driven driver: IRQ 14 through the I/O APIC (edge, vector 0x2E) to a handler that reads
    /// Status (negating INTRQ), counts and sends EOI. The counts after each command come from the PIO protocols.</summary>
    private static byte[] InterruptGuest() => GuestAssembler.Assemble(a =>
    {
        var handler = a.CreateLabel();
        var start = a.CreateLabel();
        var fail = a.CreateLabel();
        a.jmp(start);

        a.Label(ref handler);
        a.push(rax);
        a.push(rdx);
        a.mov(dx, StatusPort);
        a.@in(al, dx);
        a.movzx(eax, al);
        a.mov(__qword_ptr[r15 + HandlerStatus * 8], rax);
        a.inc(__qword_ptr[r15 + Interrupts * 8]);
        a.mov(__dword_ptr[rbx + 0xB0], 0); // EOI
        a.pop(rdx);
        a.pop(rax);
        a.iretq();

        void WaitFor(int count)
        {
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.cmp(__qword_ptr[r15 + Interrupts * 8], count);
            a.jb(wait);
        }
        void Store(int slot)
        {
            a.mov(rax, __qword_ptr[r15 + Interrupts * 8]);
            a.mov(__qword_ptr[r15 + slot * 8], rax);
        }
        void Words(bool write) => AtaControllerTests.Words(a, write);

        a.Label(ref start);
        a.mov(r15, Results);
        a.mov(rbx, 0xFEE0_0000UL);
        a.mov(rsi, 0xFEC0_0000UL);
        GuestInterruptSetup.Emit(a, Idt, Vector, handler, Scratch, rbx, maskPic: false);
        GuestInterruptSetup.RouteIoApicPin(a, rsi, AtaController.Gsi, Vector); // edge, active high, fixed, unmasked
        a.sti();
        Out(a, Control, 0);
        Out(a, DevicePort, 0xE0);

        // IDENTIFY: one interrupt when its block is ready, none after it is read.
        Out(a, StatusPort, AtaCommand.IdentifyDevice);
        WaitFor(1);
        a.mov(rdi, IdentifyBuffer);
        Words(write: false);
        Store(AfterIdentify);

        // READ SECTORS of 2: one interrupt per block.
        Address(a, 3, 2, extended: false);
        Out(a, StatusPort, AtaCommand.ReadSectors);
        WaitFor(2);
        a.mov(rdi, Readback);
        Words(write: false);
        WaitFor(3);
        Words(write: false);
        Store(AfterRead);

        // WRITE SECTORS of 2: the first block without an interrupt (Alternate Status shows DRQ), then one after each.
        Address(a, 9, 2, extended: false);
        Out(a, StatusPort, AtaCommand.WriteSectors);
        var drq = a.CreateLabel();
        a.Label(ref drq);
        a.mov(dx, Control);
        a.@in(al, dx);
        a.test(al, AtaStatus.DataRequest);
        a.jz(drq);
        a.mov(rsi, Pattern);
        Words(write: true);
        WaitFor(4);
        Words(write: true);
        WaitFor(5);
        Store(AfterWrite);

        // FLUSH CACHE: one at completion.
        Out(a, StatusPort, AtaCommand.FlushCache);
        WaitFor(6);
        Store(AfterFlush);

        // SET FEATURES: not executed: ABRT, and the interrupt of completion.
        Out(a, StatusPort, AtaCommand.SetFeatures);
        WaitFor(7);
        Store(AfterAbort);
        a.mov(rax, __qword_ptr[r15 + HandlerStatus * 8]);
        a.mov(__qword_ptr[r15 + AbortStatus * 8], rax);

        // nIEN: the flush's INTRQ does not reach the line; Alternate Status leaves it pending, so clearing nIEN lets
        // it out then.
        Out(a, Control, AtaDeviceControl.InterruptDisable);
        Out(a, StatusPort, AtaCommand.FlushCache);
        a.mov(ecx, 1000);
        var spin = a.CreateLabel();
        a.Label(ref spin);
        a.mov(dx, Control);
        a.@in(al, dx);
        a.dec(ecx);
        a.jnz(spin);
        Store(WhileDisabled);
        Out(a, Control, 0);
        WaitFor(8);
        Store(AfterEnable);
        a.cli();
        Exit(a, 0);
        FailPath(a, fail);
    });

    [Theory]
    [MemberData(nameof(Techniques))]
    public void Irq_14_reaches_the_guest_per_drq_block_and_at_completion_and_nien_holds_it(string technique)
    {
        var disk = new MemoryBlockBackend(64);
        using var vm = Vm.Create(Config(InterruptGuest(), Ata(disk)));
        byte[] pattern = PatternBytes(7);
        vm.Memory.Write(new GuestPhysical(Pattern), pattern);
        using var engine = new SimEngine(Options(technique));

        var outcome = vm.Run(engine).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, $"{technique}: {outcome.Message}");
        var s = ReadSlots(vm);
        // Data-in: one per block; data-out: one per block written (the last at completion); non-data: at completion.
        ulong identify = 1, read = 2, write = 2, flush = 1, abort = 1;
        Assert.Equal(identify, s[AfterIdentify]);
        Assert.Equal(identify + read, s[AfterRead]);
        Assert.Equal(identify + read + write, s[AfterWrite]);
        Assert.Equal(identify + read + write + flush, s[AfterFlush]);
        Assert.Equal(identify + read + write + flush + abort, s[AfterAbort]);
        Assert.Equal((ulong)(AtaStatus.Ready | AtaStatus.Error), s[AbortStatus]);
        Assert.Equal(s[AfterAbort], s[WhileDisabled]);
        Assert.Equal(s[AfterAbort] + 1, s[AfterEnable]);
        Assert.Equal((long)s[AfterEnable], vm.IoApic.MessagesSent);
        Assert.Equal((long)s[AfterEnable], Controller(vm).InterruptEdges);
        Assert.Equal(pattern.AsSpan(0, 2 * Sector).ToArray(), disk.Contents.Slice(9 * Sector, 2 * Sector).ToArray());
        Assert.Equal(2, disk.Flushes);
        Assert.False(vm.Interrupts[AtaController.Gsi].Asserted); // an edge: raised and lowered
    }

    // Register-level cases, the controller driven as a guest's port accesses would.

    private static (AtaController Controller, TestLine Line) Channel(params IBlockBackend[] disks)
    {
        var line = new TestLine();
        var controller = new AtaController(line);
        for (int i = 0; i < disks.Length; i++)
        {
            controller.Attach(i, disks[i], new DiskStatistics());
        }
        return (controller, line);
    }

    private sealed class TestLine : Nestor.Hypervisor.Devices.Interrupts.IInterruptLine
    {
        public int Gsi => AtaController.Gsi;
        public bool Asserted { get; private set; }
        public int Edges { get; private set; }
        public void Raise()
        {
            if (!Asserted)
            {
                Edges++;
            }
            Asserted = true;
        }
        public void Lower() => Asserted = false;
    }

    private static byte In(AtaController c, ushort port) => (byte)c.Read(port, 1);

    private static void Out(AtaController c, ushort port, int value) => c.Write(port, 1, (uint)value);

    private static void Lba28(AtaController c, long lba, int count, int device = 0)
    {
        Out(c, Count, count);
        Out(c, LbaLow, (int)lba);
        Out(c, LbaMid, (int)(lba >> 8));
        Out(c, LbaHigh, (int)(lba >> 16));
        Out(c, DevicePort, 0xE0 | device << 4 | (int)(lba >> 24) & 0xF);
    }

    [Fact]
    public void Out_of_range_lbas_get_idnf_and_unexecuted_commands_and_chs_get_abrt_with_an_interrupt_each()
    {
        var (c, line) = Channel(new MemoryBlockBackend(16));
        Lba28(c, 15, 2);                                   // sectors 15 and 16 of 16
        Out(c, StatusPort, AtaCommand.ReadSectors);
        Assert.Equal(AtaStatus.Ready | AtaStatus.Error, In(c, StatusPort));
        Assert.Equal(AtaError.IdNotFound, In(c, ErrorPort));
        foreach (int command in new[] { AtaCommand.SetFeatures, 0x00 /* NOP */, 0xC8 /* READ DMA */, 0xA1 /* IDENTIFY PACKET */ })
        {
            Out(c, StatusPort, command);
            Assert.Equal(AtaStatus.Ready | AtaStatus.Error, In(c, StatusPort));
            Assert.Equal(AtaError.Aborted, In(c, ErrorPort));
        }
        Out(c, DevicePort, 0xA0);                          // LBA bit clear: CHS, not modelled
        Out(c, StatusPort, AtaCommand.ReadSectors);
        Assert.Equal(AtaError.Aborted, In(c, ErrorPort));
        Lba28(c, 0, 1);
        Out(c, StatusPort, AtaCommand.ReadMultiple);        // before SET MULTIPLE MODE
        Assert.Equal(AtaError.Aborted, In(c, ErrorPort));
        Assert.Equal(7, line.Edges);
        Assert.Equal(7, c.Statistics(0).Errors);
    }

    [Fact]
    public void A_write_to_a_read_only_disk_is_aborted_and_leaves_it_unchanged()
    {
        var disk = new MemoryBlockBackend(16, readOnly: true);
        var (c, _) = Channel(disk);
        Lba28(c, 0, 1);
        Out(c, StatusPort, AtaCommand.WriteSectors);
        Assert.Equal(AtaStatus.Ready | AtaStatus.Error, In(c, StatusPort)); // no DRQ: no data is taken
        Assert.Equal(AtaError.Aborted, In(c, ErrorPort));
        for (int i = 0; i < Sector / 2; i++)
        {
            c.Write(Data, 2, 0xFFFF);
        }
        Assert.Equal(Sector / 2, c.StrayDataAccesses);
        Assert.All(disk.Contents.ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public void Read_multiple_moves_blocks_of_the_set_size_and_32_bit_accesses_move_two_words()
    {
        var disk = new MemoryBlockBackend(64);
        new Random(5).NextBytes(disk.Contents);
        var (c, line) = Channel(disk);
        Out(c, Count, 4);
        Out(c, StatusPort, AtaCommand.SetMultipleMode);
        Assert.Equal(AtaStatus.Ready, In(c, StatusPort));
        Lba28(c, 10, 6);                                  // 6 sectors in blocks of 4: a block of 4, then of 2
        int before = line.Edges;
        Out(c, StatusPort, AtaCommand.ReadMultiple);
        var read = new List<byte>();
        while ((In(c, Control) & AtaStatus.DataRequest) != 0)
        {
            In(c, StatusPort);
            uint doubleword = c.Read(Data, 4);
            read.AddRange(BitConverter.GetBytes(doubleword));
        }
        Assert.Equal(disk.Contents.Slice(10 * Sector, 6 * Sector).ToArray(), read.ToArray());
        Assert.Equal(before + 2, line.Edges);             // one per DRQ block: ceil(6 / 4)
        Assert.Equal(1, c.Statistics(0).Reads);
        // IDENTIFY reports the setting (word 59: valid, 4).
        Out(c, StatusPort, AtaCommand.IdentifyDevice);
        var words = new byte[Sector];
        for (int i = 0; i < Sector / 2; i++)
        {
            BitConverter.TryWriteBytes(words.AsSpan(2 * i), (ushort)c.Read(Data, 2));
        }
        Assert.Equal(0x0104, AtaIdentify.Word(words, 59));
        Assert.Equal(0x8000 | AtaIdentify.MaximumMultiple, AtaIdentify.Word(words, 47));
        Out(c, Count, 3);                                 // not a power of two
        Out(c, StatusPort, AtaCommand.SetMultipleMode);
        Assert.Equal(AtaError.Aborted, In(c, ErrorPort));
    }

    [Fact]
    public void Hob_reads_return_the_high_order_bytes_and_a_register_write_clears_hob()
    {
        var (c, _) = Channel(new MemoryBlockBackend(16));
        Out(c, LbaMid, 0x12);
        Out(c, LbaMid, 0x34);
        Assert.Equal(0x34, In(c, LbaMid));
        Out(c, Control, AtaDeviceControl.HighOrderByte);
        Assert.Equal(0x12, In(c, LbaMid));
        Out(c, Count, 0x56);                              // clears HOB; the FIFO moves on
        Assert.Equal(0x56, In(c, Count));
        Assert.Equal(0x34, In(c, LbaMid));
    }

    [Fact]
    public void Software_reset_holds_busy_then_leaves_the_signature_device_0_selected_and_no_interrupt()
    {
        var (c, line) = Channel(new MemoryBlockBackend(16), new MemoryBlockBackend(16));
        Lba28(c, 0x0ABCDE, 2, device: 1);
        Out(c, StatusPort, AtaCommand.ReadSectors);       // device 1 mid-transfer
        int edges = line.Edges;
        Out(c, Control, AtaDeviceControl.SoftwareReset);
        Assert.Equal(AtaStatus.Busy, In(c, Control));
        Out(c, Control, 0);
        Assert.Equal(edges, line.Edges);
        Assert.Equal(0, In(c, DevicePort) & 0x10);        // device 0 selected
        foreach (int device in new[] { 0, 1 })
        {
            Out(c, DevicePort, device << 4);
            Assert.Equal((1, 1, 0, 0), (In(c, Count), In(c, LbaLow), In(c, LbaMid), In(c, LbaHigh))); // ATA signature
            Assert.Equal(AtaError.DiagnosticsPassed, In(c, ErrorPort));
            Assert.Equal(AtaStatus.Ready, In(c, StatusPort));
        }
        Assert.Equal(0u, c.Read(Data, 2));                 // the transfer was cancelled
        Assert.Equal(1, c.StrayDataAccesses);
    }

    [Fact]
    public void An_absent_slave_reads_status_zero_and_ignores_commands_while_the_master_answers()
    {
        var (c, line) = Channel(new MemoryBlockBackend(16));
        Out(c, DevicePort, 0xF0);                         // device 1
        Assert.Equal(0, In(c, StatusPort));
        Assert.Equal(0, In(c, Control));
        Out(c, LbaHigh, 0x77);
        Assert.Equal(0x77, In(c, LbaHigh));               // the last value written, as device 0 answers for it
        Out(c, StatusPort, AtaCommand.IdentifyDevice);
        Assert.Equal(0, In(c, StatusPort));
        Assert.Equal(1, c.IgnoredCommands);
        Assert.Equal(0, line.Edges);
        Out(c, DevicePort, 0xE0);
        Out(c, StatusPort, AtaCommand.IdentifyDevice);
        Assert.Equal(AtaStatus.Ready | AtaStatus.DataRequest, In(c, StatusPort));
    }

    [Fact]
    public void A_transfer_saved_in_the_middle_of_a_block_continues_after_a_restore()
    {
        var disk = new MemoryBlockBackend(32);
        new Random(9).NextBytes(disk.Contents);
        var (c, _) = Channel(disk);
        Lba28(c, 4, 3);
        Out(c, StatusPort, AtaCommand.ReadSectors);
        var words = new List<ushort>();
        for (int i = 0; i < 300; i++)                     // the first block and 44 words into the second
        {
            words.Add((ushort)c.Read(Data, 2));
        }
        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(c);
        var (restored, _) = Channel(disk);
        var reader = new Persistence.SnapshotReader(writer.ToArray());
        reader.ReadSection(restored);
        Assert.True(reader.AtEnd);
        while ((In(restored, Control) & AtaStatus.DataRequest) != 0)
        {
            words.Add((ushort)restored.Read(Data, 2));
        }
        var expected = disk.Contents.Slice(4 * Sector, 3 * Sector).ToArray();
        Assert.Equal(expected, words.SelectMany(BitConverter.GetBytes).ToArray());
        Assert.Equal(AtaStatus.Ready, In(restored, StatusPort));

        // A snapshot of a channel with another disk is refused.
        var (other, _) = Channel(new MemoryBlockBackend(33));
        var e = Assert.Throws<Persistence.SnapshotFormatException>(() => new Persistence.SnapshotReader(writer.ToArray()).ReadSection(other));
        Assert.Contains("ATA device 0 was a disk of 32 sectors when saved and is a disk of 33 sectors now", e.Message);
    }

    [Fact]
    public void A_third_ata_disk_is_refused_with_a_message()
    {
        var e = Assert.Throws<Errors.BadInputException>(() => Vm.Create(Config(GuestAssembler.Assemble(a => Exit(a, 0)),
            Ata(new MemoryBlockBackend(8, name: "a")), Ata(new MemoryBlockBackend(8, name: "b")), Ata(new MemoryBlockBackend(8, name: "c")))));
        Assert.Equal("disk 'c' is if=ata disk 3, and the ATA channel has two places (master and slave), both taken", e.Message);
    }

    [Fact]
    public void Attached_ata_disks_are_master_then_slave_and_the_controller_is_a_snapshot_part()
    {
        using var vm = Vm.Create(Config(GuestAssembler.Assemble(a => Exit(a, 0)),
            Ata(new MemoryBlockBackend(8, name: "a")), Ata(new MemoryBlockBackend(16, name: "b"))));
        var controller = Controller(vm);
        Assert.Equal(8, controller.Disk(0)!.SectorCount);
        Assert.Equal(16, controller.Disk(1)!.SectorCount);
        Assert.Same(controller, vm.Bus.PortDevice(AtaController.ControlBlock));
        Assert.Contains(controller, vm.SnapshotParts);
        Assert.Equal(["ata0 (master)", "ata1 (slave)"], vm.Disks.Select(d => d.Place));
    }
}
