using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Assigned;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>The dedicated disk end to end: a ring-0 driver that takes the controller's level interrupt through the
/// I/O APIC and its IDT (on the software machine natively and under every technique: the registers reached without an
/// exit under a VMM, the interrupt still an exit and an injection), and a polling driver on KVM (whose nested KVM here
/// delivers no guest interrupts), where every register access is a <c>KVM_EXIT_MMIO</c>.</summary>
public class AssignedDiskTests
{
    private const int Vector = 0x41;
    private const ulong Idt = 0x19_0000, Scratch = 0x19_1000, Results = 0x19_2000, Ring = 0x20_0000, Buffer = 0x30_0000, ReadBack = 0x31_0000;
    private const ulong Bar = AssignedDiskController.BaseAddress;
    private const int Bytes = 4096;
    private const long Sector = 3;
    private const ulong Pattern = 0xA5A5_0000_1111_0001, Step = 0x0101_0101_0101_0101;

    /// <summary>What the guest's code does to the devices, counted as it is emitted.</summary>
    private sealed class Accesses
    {
        public int RegisterReads, RegisterWrites, HandlerReads, HandlerWrites, IoApicWrites;
    }

    private static byte[] Guest(bool interrupts, Accesses counted) => GuestAssembler.Assemble(a =>
    {
        var handler = a.CreateLabel();
        var start = a.CreateLabel();
        a.jmp(start);

        // The handler: acknowledge the controller (INTERRUPT_STATUS is write-1-to-clear, which lowers the level line
        // before the EOI, so it is not delivered again), count, EOI.
        a.Label(ref handler);
        a.push(rax);
        a.mov(eax, __dword_ptr[rbx + AssignedDiskController.InterruptStatusRegister]);
        a.mov(__dword_ptr[rbx + AssignedDiskController.InterruptStatusRegister], eax);
        counted.HandlerReads++;
        counted.HandlerWrites++;
        a.inc(__qword_ptr[r15]);
        a.mov(__dword_ptr[r14 + 0xB0], 0);
        a.pop(rax);
        a.iretq();

        a.Label(ref start);
        a.mov(r15, Results);
        a.mov(r14, 0xFEE0_0000UL);
        a.mov(rsi, 0xFEC0_0000UL);
        a.mov(rbx, Bar);
        if (interrupts)
        {
            GuestInterruptSetup.Emit(a, Idt, Vector, handler, Scratch, r14);
            int gsi = AssignedDiskController.FirstGsi;
            a.mov(__dword_ptr[rsi], 0x10 + 2 * gsi + 1);
            a.mov(__dword_ptr[rsi + 0x10], 0);
            a.mov(__dword_ptr[rsi], 0x10 + 2 * gsi);
            a.mov(__dword_ptr[rsi + 0x10], Vector | (1 << 15)); // level-triggered, unmasked
            counted.IoApicWrites += 4;
        }
        // The pattern, a write of it, a flush, a read back into another buffer.
        var fill = a.CreateLabel();
        a.mov(rdi, Buffer);
        a.mov(rcx, (ulong)(Bytes / 8));
        a.mov(rax, Pattern);
        a.mov(rdx, Step);
        a.Label(ref fill);
        a.mov(__qword_ptr[rdi], rax);
        a.add(rax, rdx);
        a.add(rdi, 8);
        a.dec(rcx);
        a.jnz(fill);
        void Request(int index, byte operation, ulong sector, ulong buffer)
        {
            a.mov(rdi, Ring + (ulong)index * AssignedDiskController.RequestSize);
            a.mov(rax, operation | (0xEEUL << 8) | ((ulong)(operation == AssignedDiskController.OperationFlush ? 0 : Bytes) << 32));
            a.mov(__qword_ptr[rdi], rax);
            a.mov(rax, sector);
            a.mov(__qword_ptr[rdi + 8], rax);
            a.mov(rax, buffer);
            a.mov(__qword_ptr[rdi + 16], rax);
        }
        Request(0, AssignedDiskController.OperationWrite, (ulong)Sector, Buffer);
        Request(1, AssignedDiskController.OperationFlush, 0, 0);
        Request(2, AssignedDiskController.OperationRead, (ulong)Sector, ReadBack);
        a.mov(rax, Ring);
        a.mov(__qword_ptr[rbx + AssignedDiskController.RingBaseRegister], rax);
        a.mov(__dword_ptr[rbx + AssignedDiskController.RingSizeRegister], 4);
        uint control = AssignedDiskController.ControlEnable | (interrupts ? AssignedDiskController.ControlInterruptOnCompletion : 0);
        a.mov(__dword_ptr[rbx + AssignedDiskController.ControlRegister], control);
        a.mov(__dword_ptr[rbx + AssignedDiskController.SubmitRegister], 3);
        counted.RegisterWrites += 4;
        if (interrupts)
        {
            // The completion interrupt is pending from the doorbell on; STI's shadow covers the HLT, which it wakes.
            var wait = a.CreateLabel();
            var done = a.CreateLabel();
            a.Label(ref wait);
            a.sti();
            a.hlt();
            a.cmp(__qword_ptr[r15], 0);
            a.je(wait);
            a.cli();
        }
        a.mov(r9d, __dword_ptr[rbx + AssignedDiskController.CompletedRegister]);
        counted.RegisterReads++;
        var compare = a.CreateLabel();
        var same = a.CreateLabel();
        a.xor(r12d, r12d);
        a.mov(rsi, Buffer);
        a.mov(rdi, ReadBack);
        a.mov(rcx, (ulong)(Bytes / 8));
        a.Label(ref compare);
        a.mov(rax, __qword_ptr[rsi]);
        a.cmp(rax, __qword_ptr[rdi]);
        a.je(same);
        a.inc(r12);
        a.Label(ref same);
        a.add(rsi, 8);
        a.add(rdi, 8);
        a.dec(rcx);
        a.jnz(compare);
        a.mov(dx, 0xF4);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();
    });

    private static (Vm Vm, MemoryBlockBackend Disk) Create(byte[] code)
    {
        var disk = new MemoryBlockBackend(64, name: "assigned");
        var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("assigned", code),
            MemoryBytes = 16UL << 20,
            SerialOutput = Stream.Null,
            Timeout = TimeSpan.FromSeconds(60),
            Disks = [new DiskConfig("assigned", DiskInterface.Assigned) { Backend = disk }],
        });
        return (vm, disk);
    }

    private static byte[] PatternBytes()
    {
        var bytes = new byte[Bytes];
        ulong value = Pattern;
        for (int i = 0; i < Bytes / 8; i++, value += Step)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(i * 8), value);
        }
        return bytes;
    }

    public static TheoryData<string> Techniques => ["native", "trap", "translate", "paravirtual", "hw-shadow", "hw-nested"];

    private static SimOptions Options(string technique) => technique switch
    {
        "native" => new SimOptions(),
        "trap" => new SimOptions { Technique = Technique.TrapAndEmulate },
        "translate" => new SimOptions { Technique = Technique.BinaryTranslation },
        "paravirtual" => new SimOptions { Technique = Technique.Paravirtual },
        "hw-shadow" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
        _ => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
    };

    [Theory]
    [MemberData(nameof(Techniques))]
    public void An_interrupt_driven_driver_writes_flushes_and_reads_back_with_its_registers_direct_under_a_vmm(string technique)
    {
        var counted = new Accesses();
        var (vm, disk) = Create(Guest(interrupts: true, counted));
        using var _ = vm;
        using var engine = new SimEngine(Options(technique));

        var outcome = vm.Run(engine).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message);
        var state = outcome.FinalState!;
        Assert.Equal(3UL, state.R9);
        Assert.Equal(0UL, state.R12);
        Assert.Equal(PatternBytes(), disk.Contents.Slice((int)Sector * 512, Bytes).ToArray());
        Assert.Equal(1, disk.Flushes);
        long handled = (long)vm.Memory.ReadUInt64(new GuestPhysical(Results));
        Assert.Equal(1, handled); // one completion, acknowledged before the EOI: not delivered again
        Assert.False(vm.Interrupts[AssignedDiskController.FirstGsi].Asserted);

        long reads = counted.RegisterReads + handled * counted.HandlerReads;
        long writes = counted.RegisterWrites + handled * counted.HandlerWrites;
        var registers = Assert.Single(vm.Exits.ByDeviceMemory, d => d.Device == "ndma0");
        var ioApic = Assert.Single(vm.Exits.ByDeviceMemory, d => d.Device != "ndma0");
        if (technique == "native")
        {
            Assert.Equal((reads, writes, 0L, 0L), (registers.TrappedReads, registers.TrappedWrites, registers.DirectReads, registers.DirectWrites));
        }
        else
        {
            Assert.Equal((0L, 0L, reads, writes), (registers.TrappedReads, registers.TrappedWrites, registers.DirectReads, registers.DirectWrites));
            // The only MMIO exits are the I/O APIC's (the local APIC is the CPU's own); the interrupt is an exit and
            // an injection: no posted interrupts.
            Assert.Equal(counted.IoApicWrites, vm.Exits.Count(VmExitReason.MmioRead) + vm.Exits.Count(VmExitReason.MmioWrite));
            Assert.Equal(counted.IoApicWrites, ioApic.TrappedWrites);
            Assert.Equal(handled, vm.Exits.Count(VmExitReason.ExternalInterrupt));
        }
    }

    [Fact]
    public void On_kvm_a_polling_driver_writes_flushes_and_reads_back_with_every_register_access_an_mmio_exit()
    {
        NestorProcess.RequireKvm();
        var counted = new Accesses();
        var (vm, disk) = Create(Guest(interrupts: false, counted));
        using var _ = vm;

        var outcome = vm.Run(new KvmEngine()).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message);
        Assert.Equal(0UL, outcome.FinalState!.R12);
        Assert.Equal(PatternBytes(), disk.Contents.Slice((int)Sector * 512, Bytes).ToArray());
        Assert.Equal(1, disk.Flushes);
        var registers = Assert.Single(vm.Exits.ByDeviceMemory);
        Assert.Equal(("ndma0", (long)counted.RegisterReads, (long)counted.RegisterWrites, 0L),
            (registers.Device, registers.TrappedReads, registers.TrappedWrites, registers.DirectReads + registers.DirectWrites));
        Assert.Equal(counted.RegisterReads + counted.RegisterWrites, vm.Exits.Count(VmExitReason.MmioRead) + vm.Exits.Count(VmExitReason.MmioWrite));
        var controller = (AssignedDiskController)vm.Bus.MemoryDevice(Bar)!;
        Assert.Equal(1, controller.Dma.Programmings); // the identity mapping, programmed once
    }

    [Theory]
    [InlineData("hw")]
    [InlineData("native")]
    public void Nestor_run_with_an_assigned_disk_image_lists_direct_register_accesses_next_to_the_exits_and_keeps_the_data(string technique)
    {
        var counted = new Accesses();
        string directory = Directory.CreateTempSubdirectory("nestor-assigned-").FullName;
        try
        {
            string guest = Path.Combine(directory, "driver.bin"), image = Path.Combine(directory, "disk.img");
            File.WriteAllBytes(guest, Guest(interrupts: false, counted));
            File.WriteAllBytes(image, new byte[64 * 512]);

            var r = NestorProcess.Run("run", "--flat", guest, "--disk", image + ",if=assigned", "--technique", technique, "--stats");

            Assert.True(r.ExitCode == 0, r.ToString());
            bool direct = technique != "native";
            long exitReads = direct ? 0 : counted.RegisterReads, exitWrites = direct ? 0 : counted.RegisterWrites;
            long directReads = direct ? counted.RegisterReads : 0, directWrites = direct ? counted.RegisterWrites : 0;
            Assert.Matches($@"\n  ndma0\s+{exitReads}\s+{exitWrites}\s+{directReads}\s+{directWrites}\s*\n", r.Stdout);
            Assert.Matches(@"disk\.img\s+assigned 0\s+1\s+1\s+1\s+0\s+4096\s+4096", r.Stdout);
            Assert.Equal(PatternBytes(), File.ReadAllBytes(image).AsSpan((int)Sector * 512, Bytes).ToArray());
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
