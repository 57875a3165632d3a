using System.Text;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Persistence;
using Nestor.Machine.Processor;
using Xunit;

namespace Nestor.Hypervisor.Tests;

/// <summary>The snapshot's binary form: a CPU state survives the round trip field for field; corrupt, truncated or
/// newer data is refused with a message that says what is wrong.</summary>
public class SnapshotFormatTests
{
    /// <summary>A state whose every field holds a value of its own, so that a field lost or swapped shows.</summary>
    private static CpuState Distinct()
    {
        var s = new CpuState();
        for (int i = 0; i < 16; i++)
        {
            s.Registers[i] = 0x1111_0000_0000_0000UL * (ulong)(i + 1) + (ulong)i;
        }
        s.Rip = 0xFFFF_8000_0010_1234;
        s.Rflags = 0x246 | FlagBits.Carry;
        (s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Cr8, s.Efer) = (0x8005_0033, 0xDEAD_B000, 0x12_3000, 0x6A0, 0xF, 0xD01);
        (s.Cs, s.Ds, s.Es, s.Fs, s.Gs, s.Ss, s.Tr, s.Ldtr) = (Seg(1), Seg(2), Seg(3), Seg(4), Seg(5), Seg(6), Seg(7), Seg(8));
        (s.GdtBase, s.GdtLimit, s.IdtBase, s.IdtLimit) = (0x6000, 0x37, 0x7000, 0xFFF);
        (s.KernelGsBase, s.Star, s.LongStar, s.CompatibilityStar, s.SyscallFlagMask, s.TscAux, s.ApicBase) =
            (0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xFEE0_0900);
        (s.InstructionsRetired, s.IdleCycles, s.InterruptShadowUntil, s.Halted) = (123_456_789, 42, 123_456_790, true);
        (s.SysenterCs, s.SysenterEsp, s.SysenterEip, s.PageAttributeTable, s.MiscEnable, s.NmiBlocked) =
            (0xB1, 0xB2, 0xB3, 0x0606_0606_0606_0606, 0x1801 | 4, true);
        s.WaitingForStartup = true;
        s.Apic = new LocalApicState
        {
            Id = 5,
            InterprocessorInterruptsSent = 9,
            InterprocessorInterruptsReceived = 11,
            SpuriousVector = 0x1FF,
            TaskPriority = 3,
            LvtTimer = 0x2_0030,
            InitialCount = 1000,
            DivideConfiguration = 0xB,
            Period = 1000,
            Deadline = 123_457_000,
            TimerInterrupts = 77,
            ExternalRequests = 78,
            Refused = 79,
            EndOfInterrupts = 80,
            LvtLint0 = 0x700,
            LogicalDestination = 0x0100_0000,
            CommandHigh = 0xFF00_0000,
            TscDeadline = 0x1234_5678_9ABC,
            NmiPending = true,
            SelfInterrupts = 81,
        };
        // Bits in every word of the 256-bit registers, so that a word lost or swapped shows.
        s.Apic.Requests.Set(0x30, true);
        s.Apic.Requests.Set(0xF1, true);
        s.Apic.InService.Set(0x71, true);
        s.Apic.InService.Set(0xB2, true);
        s.Apic.TriggerMode.Set(0xB2, true);
        // The x87 FPU (CPU state format 4): every word and register different.
        (s.X87.Control, s.X87.Status, s.X87.Tag, s.X87.Opcode) = (0x027F, 0x3800, 0x0FF1, 0x5EE);
        (s.X87.InstructionPointer, s.X87.OperandPointer, s.X87.InstructionSelector, s.X87.OperandSelector) = (0xC1, 0xC2, 0xC3, 0xC4);
        for (int i = 0; i < 8; i++)
        {
            s.X87.Registers[i] = new X87Register { Significand = 0x8000_0000_0000_0000UL | (ulong)(i + 1) << 32, SignExponent = (ushort)(0x3FFF + i) };
        }
        s.MachineCheckStatus = 0b101; // IA32_MCG_STATUS (format 5): RIPV and MCIP
        // The debug architecture (format 6): breakpoint addresses, DR6 with B1 and BS, DR7 arming DR1 as a 4-byte write
        // watchpoint, a single-step trap and B2 held by a MOV SS.
        (s.Dr0, s.Dr1, s.Dr2, s.Dr3) = (0xD0, 0xD1D1, 0xD2D2D2, 0xFFFF_8000_0000_D3D3);
        (s.Dr6, s.Dr7, s.PendingDebugExceptions) = (CpuState.DebugStatusFixed | 0x4002, 0x00D0_040A, 0x4004);
        return s;

        static Segment Seg(ushort k) => new() { Selector = (ushort)(k * 8), Base = 0x1000UL * k, Limit = 0xF_FFFFu - k, Attributes = (ushort)(0xA09B + k) };
    }

    private static byte[] Bytes(Vcpu vcpu)
    {
        var w = new SnapshotWriter();
        w.WriteSection(vcpu);
        return w.ToArray();
    }

    [Fact]
    public void A_cpu_state_survives_the_round_trip_through_bytes_field_for_field()
    {
        var original = Distinct();
        byte[] data = Bytes(new Vcpu(0, original));
        var restored = new Vcpu(0, CpuState.Reset);
        new SnapshotReader(data).ReadSection(restored);
        var r = restored.State;
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(original.Registers[i], r.Registers[i]);
        }
        Assert.Equal((original.Rip, original.Rflags), (r.Rip, r.Rflags));
        Assert.Equal((original.Cr0, original.Cr2, original.Cr3, original.Cr4, original.Cr8, original.Efer), (r.Cr0, r.Cr2, r.Cr3, r.Cr4, r.Cr8, r.Efer));
        Assert.Equal([original.Cs, original.Ds, original.Es, original.Fs, original.Gs, original.Ss, original.Tr, original.Ldtr],
            new[] { r.Cs, r.Ds, r.Es, r.Fs, r.Gs, r.Ss, r.Tr, r.Ldtr });
        Assert.Equal((original.GdtBase, original.GdtLimit, original.IdtBase, original.IdtLimit), (r.GdtBase, r.GdtLimit, r.IdtBase, r.IdtLimit));
        Assert.Equal((original.KernelGsBase, original.Star, original.LongStar, original.CompatibilityStar, original.SyscallFlagMask, original.TscAux, original.ApicBase),
            (r.KernelGsBase, r.Star, r.LongStar, r.CompatibilityStar, r.SyscallFlagMask, r.TscAux, r.ApicBase));
        Assert.Equal((original.InstructionsRetired, original.IdleCycles, original.InterruptShadowUntil, original.Halted),
            (r.InstructionsRetired, r.IdleCycles, r.InterruptShadowUntil, r.Halted));
        Assert.Equal((original.SysenterCs, original.SysenterEsp, original.SysenterEip, original.PageAttributeTable, original.MiscEnable, original.NmiBlocked),
            (r.SysenterCs, r.SysenterEsp, r.SysenterEip, r.PageAttributeTable, r.MiscEnable, r.NmiBlocked));
        Assert.True(r.WaitingForStartup);
        // Byte for byte: the 256-bit registers are inline arrays, which have no built-in Equals.
        var (expectedApic, actualApic) = (original.Apic, r.Apic);
        Assert.Equal(
            System.Runtime.InteropServices.MemoryMarshal.AsBytes(System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpan(ref expectedApic, 1)).ToArray(),
            System.Runtime.InteropServices.MemoryMarshal.AsBytes(System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpan(ref actualApic, 1)).ToArray());
        Assert.True(actualApic.Requests.Get(0xF1) && actualApic.InService.Get(0x71) && actualApic.TriggerMode.Get(0xB2));
        var (ox, rx) = (original.X87, r.X87);
        Assert.Equal((ox.Control, ox.Status, ox.Tag, ox.Opcode), (rx.Control, rx.Status, rx.Tag, rx.Opcode));
        Assert.Equal((ox.InstructionPointer, ox.OperandPointer, ox.InstructionSelector, ox.OperandSelector),
            (rx.InstructionPointer, rx.OperandPointer, rx.InstructionSelector, rx.OperandSelector));
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal((ox.Registers[i].Significand, ox.Registers[i].SignExponent), (rx.Registers[i].Significand, rx.Registers[i].SignExponent));
        }
        Assert.Equal(original.MachineCheckStatus, r.MachineCheckStatus);
        Assert.Equal((original.Dr0, original.Dr1, original.Dr2, original.Dr3), (r.Dr0, r.Dr1, r.Dr2, r.Dr3));
        Assert.Equal((original.Dr6, original.Dr7, original.PendingDebugExceptions), (r.Dr6, r.Dr7, r.PendingDebugExceptions));
        Assert.Equal(data, Bytes(restored)); // and nothing else: written again, the same bytes
    }

    /// <summary>Rewrites the last section of <paramref name="data"/> as layout <paramref name="version"/> without its
    /// last <paramref name="bytes"/> bytes (the fields that layout does not have).</summary>
    private static byte[] AsOlderLayout(byte[] data, ushort version, int bytes)
    {
        byte[] older = data[..^bytes];
        Assert.Equal(CpuStateFormat.Version, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(older.AsSpan(10)));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(older.AsSpan(10), version);
        uint length = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(older.AsSpan(12));
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(older.AsSpan(12), length - (uint)bytes);
        return older;
    }

    /// <summary>The debug registers and the held debug traps format 6 appends.</summary>
    private const int DebugBytes = 7 * sizeof(ulong);

    /// <summary>A section of layout 5 (before the debug registers were state) still reads: DR0–DR3 are 0, DR6 and DR7
    /// hold only their fixed bits (no breakpoint armed) and no debug trap is held, as at reset.</summary>
    [Fact]
    public void A_version_5_cpu_state_reads_with_the_debug_registers_as_at_reset()
    {
        var original = Distinct();
        byte[] v5 = AsOlderLayout(Bytes(new Vcpu(0, original)), 5, DebugBytes);
        var restored = new Vcpu(0, CpuState.Reset);
        new SnapshotReader(v5).ReadSection(restored);
        var r = restored.State;
        Assert.Equal(original.MachineCheckStatus, r.MachineCheckStatus);
        Assert.Equal((0UL, 0UL, 0UL, 0UL), (r.Dr0, r.Dr1, r.Dr2, r.Dr3));
        Assert.Equal((CpuState.DebugStatusFixed, CpuState.DebugControlFixed, 0UL), (r.Dr6, r.Dr7, r.PendingDebugExceptions));
    }

    /// <summary>A section of layout 4 (before IA32_MCG_STATUS was state) still reads: MCG_STATUS is 0, as at reset.</summary>
    [Fact]
    public void A_version_4_cpu_state_reads_with_mcg_status_as_at_reset()
    {
        var original = Distinct();
        byte[] v4 = AsOlderLayout(Bytes(new Vcpu(0, original)), 4, sizeof(ulong) + DebugBytes);
        var restored = new Vcpu(0, CpuState.Reset);
        new SnapshotReader(v4).ReadSection(restored);
        Assert.Equal(original.Rip, restored.State.Rip);
        Assert.Equal(original.X87.Control, restored.State.X87.Control);
        Assert.Equal(0UL, restored.State.MachineCheckStatus);
    }

    /// <summary>A section of layout 3 (before the x87 FPU was state) still reads: its FPU is as after RESET.</summary>
    [Fact]
    public void A_version_3_cpu_state_reads_with_the_x87_FPU_as_after_reset()
    {
        var original = Distinct();
        const int X87Bytes = 6 * 2 + 2 * 8 + 8 * 10;   // the words, the two pointers, R0-R7
        byte[] v3 = AsOlderLayout(Bytes(new Vcpu(0, original)), 3, X87Bytes + sizeof(ulong) + DebugBytes); // and format 5's MCG_STATUS, 6's debug registers
        var restored = new Vcpu(0, CpuState.Reset);
        new SnapshotReader(v3).ReadSection(restored);
        Assert.Equal(original.Rip, restored.State.Rip);
        Assert.Equal(original.Apic.Id, restored.State.Apic.Id);
        Assert.Equal(((ushort)0x0040, (ushort)0, (ushort)0x5555), (restored.State.X87.Control, restored.State.X87.Status, restored.State.X87.Tag));
    }

    [Fact]
    public void Data_that_is_not_a_snapshot_is_refused()
    {
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(Encoding.ASCII.GetBytes("hello, world")));
        Assert.Contains("not a Nestor snapshot", e.Message);
    }

    [Fact]
    public void An_unknown_section_is_refused_by_name()
    {
        var w = new SnapshotWriter();
        w.WriteSection(new Uart16550(new MemoryStream()));
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(w.ToArray()).ReadSection(new Vcpu(0, CpuState.Reset)));
        Assert.Contains("expected section 'CPU0'", e.Message);
        Assert.Contains("'UART'", e.Message);
    }

    [Fact]
    public void A_newer_section_layout_is_refused()
    {
        byte[] data = Bytes(new Vcpu(0, Distinct()));
        data[6 + 4] = (byte)(CpuStateFormat.Version + 1); // the section's version, after the container header and the tag
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(data).ReadSection(new Vcpu(0, CpuState.Reset)));
        Assert.Contains($"layout version {CpuStateFormat.Version + 1}, newer than this Nestor reads ({CpuStateFormat.Version})", e.Message);
    }

    [Fact]
    public void A_newer_container_is_refused()
    {
        byte[] data = Bytes(new Vcpu(0, Distinct()));
        data[4] = 9;
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(data));
        Assert.Contains("container version is 9", e.Message);
    }

    [Fact]
    public void A_truncated_snapshot_is_refused()
    {
        byte[] data = Bytes(new Vcpu(0, Distinct()));
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(data[..^10]).ReadSection(new Vcpu(0, CpuState.Reset)));
        Assert.Contains("section 'CPU0' is truncated", e.Message);
    }

    [Fact]
    public void A_section_shorter_than_its_fields_is_refused()
    {
        byte[] data = Bytes(new Vcpu(0, Distinct()));
        // Declare 20 bytes fewer than the fields take (the bytes stay, so only the declared length is wrong).
        int declared = BitConverter.ToInt32(data, 12);
        BitConverter.TryWriteBytes(data.AsSpan(12), declared - 20);
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(data).ReadSection(new Vcpu(0, CpuState.Reset)));
        Assert.Contains("section 'CPU0' is too short", e.Message);
    }

    [Fact]
    public void A_corrupt_boolean_is_refused()
    {
        var original = Distinct();
        byte[] data = Bytes(new Vcpu(0, original));
        // Halted is the byte after the three 64-bit clock fields; find it by writing a state that differs only there.
        var other = original;
        other.Halted = false;
        byte[] otherData = Bytes(new Vcpu(0, other));
        int at = Enumerable.Range(0, data.Length).Single(i => data[i] != otherData[i]);
        data[at] = 7;
        var e = Assert.Throws<SnapshotFormatException>(() => new SnapshotReader(data).ReadSection(new Vcpu(0, CpuState.Reset)));
        Assert.Contains("7 is not a boolean", e.Message);
    }

    [Fact]
    public void The_uart_keeps_its_registers_fifo_and_count()
    {
        var output = new MemoryStream();
        var uart = new Uart16550(output);
        uart.Write(Uart16550.Com1 + 3, 1, 0x83);  // DLAB
        uart.Write(Uart16550.Com1, 1, 1);         // divisor 1
        uart.Write(Uart16550.Com1 + 3, 1, 0x03);
        uart.Write(Uart16550.Com1 + 7, 1, 0x5A);  // scratch
        uart.Write(Uart16550.Com1 + 4, 1, 0x10);  // loopback
        uart.Write(Uart16550.Com1, 1, (byte)'x'); // into the receive FIFO
        uart.Write(Uart16550.Com1 + 4, 1, 0x03);
        uart.Write(Uart16550.Com1, 1, (byte)'y'); // out
        var w = new SnapshotWriter();
        w.WriteSection(uart);
        Assert.Equal("y", Encoding.ASCII.GetString(output.ToArray())); // saving wrote the buffered output out
        var restored = new Uart16550(new MemoryStream());
        new SnapshotReader(w.ToArray()).ReadSection(restored);
        Assert.Equal(1, restored.Divisor);
        Assert.Equal(1, restored.BytesTransmitted);
        Assert.Equal(0x5Au, restored.Read(Uart16550.Com1 + 7, 1));
        Assert.Equal(0x01u, restored.Read(Uart16550.Com1 + 5, 1) & 0x01); // data ready
        Assert.Equal((uint)'x', restored.Read(Uart16550.Com1, 1));
    }
}
