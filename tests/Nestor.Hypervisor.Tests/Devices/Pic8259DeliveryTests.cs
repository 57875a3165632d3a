using Iced.Intel;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Testing;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Tests.Boot;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices;

/// <summary>The 8259A pair as a PC kernel meets it on the software machine: a 32-bit Multiboot guest reprograms the
/// 8259s (master base 0x20, slave 0x28), raises ISA lines through pc-testdev's ports 0x2000 + n and takes the vectors
/// through the bootstrap processor's LINT0 in ExtINT mode, as SeaBIOS leaves it (SDM Vol. 3A §10.5.1). Each handler
/// counts its entries, appends its IRQ to a log and, unless told not to, ends the interrupt with a non-specific EOI.</summary>
public class Pic8259DeliveryTests
{
    private const uint Results = InterruptTestGuest.Results;
    private const int MasterBase = 0x20, SlaveBase = 0x28;

    // Results: dword n (0-15) counts IRQ n's entries; dword 16 is the log length, the log from dword 17; slots from 40.
    private const int LogLength = 16, Log = 17, Slots = 40;

    // The IRQs whose handler sends no EOI (the test ends them itself).
    private static (uint? Status, Vm Vm, string Message) Boot(Action<Assembler> body, params int[] withoutEoi) =>
        InterruptTestGuest.Boot("pic.bin", [.. Enumerable.Range(0, 16).Select(line =>
        ((line < 8 ? MasterBase : SlaveBase - 8) + line, (Action<Assembler>)(a =>
        {
            a.push(eax);
            a.inc(__dword_ptr[ebp + 4 * line]);
            a.mov(eax, __dword_ptr[ebp + 4 * LogLength]);
            a.mov(__dword_ptr[ebp + eax * 4 + 4 * Log], line);
            a.inc(__dword_ptr[ebp + 4 * LogLength]);
            if (!withoutEoi.Contains(line))
            {
                a.mov(al, 0x20);
                if (line >= 8)
                {
                    a.@out(0xA0, al);
                }
                a.@out(0x20, al);
            }
            a.pop(eax);
            a.iretd();
        })))], a =>
        {
            // The classic remap (ICW1 edge + ICW4, ICW2 base, ICW3 cascade on IR2, ICW4 8086 mode), then every line
            // masked but the cascade.
            foreach (var (command, data, icw2, icw3) in new[] { (0x20, 0x21, MasterBase, 0x04), (0xA0, 0xA1, SlaveBase, 0x02) })
            {
                a.mov(al, 0x11);
                a.@out((byte)command, al);
                a.mov(al, (byte)icw2);
                a.@out((byte)data, al);
                a.mov(al, (byte)icw3);
                a.@out((byte)data, al);
                a.mov(al, 0x01);
                a.@out((byte)data, al);
            }
            Mask(a, 0xFFFB);
            // Every line edge-triggered (the firmware leaves IRQs 10 and 11 level-sensitive in the ELCR, for PCI).
            a.xor(eax, eax);
            a.mov(dx, Pic8259Pair.ElcrMaster);
            a.@out(dx, ax);
            body(a);
        }, handlerStride: 0x80);

    /// <summary>OCW1 on both chips: bit n of <paramref name="mask"/> masks IRQ n.</summary>
    private static void Mask(Assembler a, int mask)
    {
        a.mov(al, (byte)mask);
        a.@out(0x21, al);
        a.mov(al, (byte)(mask >> 8));
        a.@out(0xA1, al);
    }

    private static void Pulse(Assembler a, int line)
    {
        a.mov(dx, (ushort)(PcTestDevice.IrqLinePort + line));
        a.mov(al, 1);
        a.@out(dx, al);
        a.mov(al, 0);
        a.@out(dx, al);
        a.nop();
    }

    private static void Record(Assembler a, int counter, int slot)
    {
        a.mov(eax, __dword_ptr[ebp + 4 * counter]);
        a.mov(__dword_ptr[ebp + 4 * (Slots + slot)], eax);
    }

    // OCW3 (0x0A: read IRR, 0x0B: read ISR) then a read of the command port, into a slot.
    private static void RecordRegister(Assembler a, byte command, byte ocw3, int slot)
    {
        a.mov(al, ocw3);
        a.@out(command, al);
        a.@in(al, command);
        a.movzx(eax, al);
        a.mov(__dword_ptr[ebp + 4 * (Slots + slot)], eax);
    }

    private static uint Read(Vm vm, int dword) => vm.Memory.ReadUInt32(new Machine.Addresses.GuestPhysical(Results + (ulong)dword * 4));

    private static uint Slot(Vm vm, int slot) => Read(vm, Slots + slot);

    [Fact]
    public void A_pulsed_ISA_line_reaches_the_CPU_through_the_8259_and_LINT0_with_the_ICW2_vector()
    {
        var (status, vm, message) = Boot(a =>
        {
            Mask(a, ~((1 << 3) | (1 << 11) | (1 << 2)));
            a.sti();
            Pulse(a, 3);    // master IR3: vector 0x23
            Pulse(a, 11);   // slave IR3 through the master's IR2: vector 0x2B
            RecordRegister(a, 0x20, 0x0B, 0);   // ISR of the master after the EOIs
            RecordRegister(a, 0xA0, 0x0B, 1);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1u, Read(vm, 3));
            Assert.Equal(1u, Read(vm, 11));
            Assert.Equal(2u, Read(vm, LogLength));
            Assert.Equal((3u, 11u), (Read(vm, Log), Read(vm, Log + 1)));
            Assert.Equal((0u, 0u), (Slot(vm, 0), Slot(vm, 1)));
            Assert.Equal(2, vm.Pic.Acknowledges);
            Assert.Equal(0, vm.Pic.SpuriousAcknowledges);
        }
    }

    [Fact]
    public void Requests_are_taken_by_priority_and_an_interrupt_in_service_blocks_lower_ones_until_its_EOI()
    {
        var (status, vm, message) = Boot(a =>
        {
            Mask(a, ~((1 << 3) | (1 << 4) | (1 << 5)));
            // With IF clear both edges are latched in IRR; IR3 outranks IR5 (fixed priority, IR0 highest).
            Pulse(a, 5);
            Pulse(a, 3);
            RecordRegister(a, 0x20, 0x0A, 0);   // IRR: 0x28
            a.sti();
            a.nop();
            a.cli();
            // IRQ 4's handler sends no EOI: IRQ 5 is blocked while 4 is in service, IRQ 3 (higher) is not.
            Pulse(a, 4);
            a.sti();
            a.nop();
            Pulse(a, 5);
            Record(a, 5, 1);                    // still 1: blocked by IR4 in service
            RecordRegister(a, 0x20, 0x0B, 2);   // ISR: IR4
            Pulse(a, 3);
            Record(a, 3, 3);                    // 2: IR3 outranks IR4
            a.mov(al, 0x64);                    // OCW2: specific EOI for IR4
            a.@out(0x20, al);
            a.nop();
            Record(a, 5, 4);                    // 2: IR5 delivered after the EOI
        }, withoutEoi: 4);
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(0x28u, Slot(vm, 0));
            Assert.Equal(1u, Slot(vm, 1));
            Assert.Equal(0x10u, Slot(vm, 2));
            Assert.Equal(2u, Slot(vm, 3));
            Assert.Equal(2u, Slot(vm, 4));
            uint[] log = [.. Enumerable.Range(0, (int)Read(vm, LogLength)).Select(i => Read(vm, Log + i))];
            Assert.Equal([3u, 5u, 4u, 3u, 5u], log);
        }
    }

    [Fact]
    public void A_masked_line_or_a_masked_LINT0_delivers_nothing_and_unmasking_LINT0_delivers_the_request()
    {
        var (status, vm, message) = Boot(a =>
        {
            a.sti();
            Pulse(a, 6);                        // IMR bit 6 set: nothing, though the edge is in IRR
            Record(a, 6, 0);
            RecordRegister(a, 0x20, 0x0A, 1);   // IRR: 0x40
            Mask(a, 0xFFFB & ~(1 << 7));
            a.mov(__dword_ptr[ebx + 0x350], 0x1_0700);  // LVT LINT0: ExtINT, masked
            Pulse(a, 7);
            Record(a, 7, 2);                    // 0: INTR is up but LINT0 is masked
            a.mov(__dword_ptr[ebx + 0x350], 0x700);     // unmasked: the held request is taken
            a.nop();
            Record(a, 7, 3);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(0u, Slot(vm, 0));
            Assert.Equal(0x40u, Slot(vm, 1) & 0x40);
            Assert.Equal(0u, Slot(vm, 2));
            Assert.Equal(1u, Slot(vm, 3));
            Assert.Equal(0u, Read(vm, 6));
        }
    }

    [Fact]
    public void Automatic_EOI_leaves_nothing_in_service_and_the_poll_command_acknowledges_by_a_read()
    {
        var (status, vm, message) = Boot(a =>
        {
            // Re-initialize the master with ICW4 = 0x03 (8086 mode, automatic EOI).
            a.mov(al, 0x11);
            a.@out(0x20, al);
            a.mov(al, MasterBase);
            a.@out(0x21, al);
            a.mov(al, 0x04);
            a.@out(0x21, al);
            a.mov(al, 0x03);
            a.@out(0x21, al);
            Mask(a, ~((1 << 1) | (1 << 2)));
            a.sti();
            Pulse(a, 1);
            RecordRegister(a, 0x20, 0x0B, 0);   // ISR 0: ended at the acknowledge
            a.cli();
            Pulse(a, 1);
            a.mov(al, 0x0C);                    // OCW3 poll: the next read acknowledges
            a.@out(0x20, al);
            a.@in(al, 0x20);
            a.movzx(eax, al);
            a.mov(__dword_ptr[ebp + 4 * (Slots + 1)], eax);
            a.mov(al, 0x0C);                    // polling again finds nothing
            a.@out(0x20, al);
            a.@in(al, 0x20);
            a.movzx(eax, al);
            a.mov(__dword_ptr[ebp + 4 * (Slots + 2)], eax);
        }, withoutEoi: 1);
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1u, Read(vm, 1));
            Assert.Equal(0u, Slot(vm, 0));
            Assert.Equal(0x81u, Slot(vm, 1));   // bit 7: a request, bits 2:0 its line
            Assert.Equal(0u, Slot(vm, 2) & 0x80);
        }
    }

    private static Pic8259Pair Initialized()
    {
        var pic = new Pic8259Pair();
        foreach (var (command, data, icw2, icw3) in new[] { (0x20, 0x21, MasterBase, 0x04), (0xA0, 0xA1, SlaveBase, 0x02) })
        {
            pic.Write((ushort)command, 1, 0x11);
            pic.Write((ushort)data, 1, (uint)icw2);
            pic.Write((ushort)data, 1, (uint)icw3);
            pic.Write((ushort)data, 1, 0x01);
        }
        return pic;
    }

    /// <summary>The pair's whole state survives a snapshot: requests, in-service lines, the rotated priority, the
    /// ELCR's level lines, the OCW3 read select; the restored pair then acknowledges what the original would.</summary>
    [Fact]
    public void The_8259_pair_survives_a_snapshot_with_requests_in_service_and_a_rotated_priority()
    {
        var pic = Initialized();
        pic.ElcrPorts.Write(Pic8259Pair.ElcrSlave, 1, 0x0C);   // IRQs 10 and 11 level-sensitive
        pic.Write(Pic8259Pair.MasterCommand, 1, 0xC4);          // OCW2 set priority: IR4 lowest, IR5 highest
        pic.SetIrq(3, true);
        pic.SetIrq(6, true);
        pic.SetIrq(11, true);
        Assert.Equal(MasterBase + 6, pic.Acknowledge());      // IR6 outranks IR3 after the rotation
        pic.Write(Pic8259Pair.SlaveCommand, 1, 0x0B);           // OCW3: the command port reads ISR
        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(pic);
        var restored = new Pic8259Pair();
        var reader = new Persistence.SnapshotReader(writer.ToArray());
        reader.ReadSection(restored);
        Assert.True(reader.AtEnd);
        foreach (var (a, b) in new[] { (pic.Master, restored.Master), (pic.Slave, restored.Slave) })
        {
            Assert.Equal((a.Requests, a.InService, a.Mask, a.EdgeLevel, a.LowestPriority, a.VectorBase, a.Cascade, a.Mode, a.ReadsInService),
                (b.Requests, b.InService, b.Mask, b.EdgeLevel, b.LowestPriority, b.VectorBase, b.Cascade, b.Mode, b.ReadsInService));
        }
        Assert.Equal(pic.Acknowledges, restored.Acknowledges);
        Assert.Equal(0x0Cu, restored.ElcrPorts.Read(Pic8259Pair.ElcrSlave, 1));
        // IR6 in service blocks IR2 and IR3 (both lower after the rotation); after its EOI the cascade (IR2) outranks
        // IR3: the slave's IR3 is taken.
        Assert.False(restored.InterruptRequested);
        restored.Write(Pic8259Pair.MasterCommand, 1, 0x20);
        pic.Write(Pic8259Pair.MasterCommand, 1, 0x20);
        Assert.True(restored.InterruptRequested);
        Assert.Equal(SlaveBase + 3, restored.Acknowledge());
        Assert.Equal(SlaveBase + 3, pic.Acknowledge());
        // Level: IRQ 11 still high, requested again once its in-service bit is cleared.
        restored.Write(Pic8259Pair.SlaveCommand, 1, 0x20);
        restored.Write(Pic8259Pair.MasterCommand, 1, 0x62);     // specific EOI for IR2
        Assert.Equal(SlaveBase + 3, restored.Acknowledge());
    }
}
