using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Tests;

/// <summary>The I/O APIC, the 8259 pair and the local APIC's interrupt registers, driven directly.</summary>
public class InterruptControllerTests
{
    private const ulong Select = IoApic.DefaultBase, Window = IoApic.DefaultBase + 0x10;

    private static uint ReadRegister(IoApic ioApic, uint index)
    {
        ioApic.Write(Select, 4, index);
        return (uint)ioApic.Read(Window, 4);
    }

    private static void WriteRegister(IoApic ioApic, uint index, uint value)
    {
        ioApic.Write(Select, 4, index);
        ioApic.Write(Window, 4, value);
    }

    /// <summary>An I/O APIC wired to a software-enabled local APIC, as the sim engine wires them.</summary>
    private static (IoApic IoApic, LocalApic Apic, InterruptController Lines) Wired()
    {
        var apic = new LocalApic();
        apic.Write(0xF0, 0x1FF, 0);
        var ioApic = new IoApic { LocalApic = apic.RequestInterrupt };
        apic.LevelTriggeredEndOfInterrupt = ioApic.EndOfInterrupt;
        return (ioApic, apic, new InterruptController(ioApic));
    }

    [Fact]
    public void Ioapic_identifies_itself_as_the_82093aa_and_starts_masked()
    {
        var ioApic = new IoApic();
        Assert.Equal(0x0017_0011u, ReadRegister(ioApic, 1)); // version 0x11, maximum redirection entry 23
        WriteRegister(ioApic, 0, 0x0300_0000);
        Assert.Equal(0x0300_0000u, ReadRegister(ioApic, 0));
        Assert.Equal(0x0300_0000u, ReadRegister(ioApic, 2)); // arbitration ID follows the ID
        WriteRegister(ioApic, 1, 0);
        Assert.Equal(0x0017_0011u, ReadRegister(ioApic, 1)); // read-only
        for (int pin = 0; pin < IoApic.RedirectionEntries; pin++)
        {
            Assert.Equal(IoApic.Masked, ReadRegister(ioApic, 0x10 + 2u * (uint)pin));
        }
        WriteRegister(ioApic, 0x10 + 2 * 3 + 1, 0xFF00_0000);
        WriteRegister(ioApic, 0x10 + 2 * 3, 0x41 | (uint)(IoApic.RemoteIrr | IoApic.DeliveryStatus | IoApic.ActiveLow));
        Assert.Equal(0x41u | (uint)IoApic.ActiveLow, ReadRegister(ioApic, 0x10 + 2 * 3)); // status bits are read-only
        Assert.Equal(0xFF00_0000u, ReadRegister(ioApic, 0x10 + 2 * 3 + 1));
    }

    [Fact]
    public void An_edge_entry_sends_once_per_assertion_and_loses_edges_while_masked()
    {
        var (ioApic, apic, lines) = Wired();
        WriteRegister(ioApic, 0x10 + 2 * 4, 0x50);
        lines[4].Raise();
        lines[4].Raise(); // no new edge
        Assert.Equal(0x50, apic.PendingVector);
        Assert.Equal(1, ioApic.MessagesSent);
        lines[4].Lower();
        WriteRegister(ioApic, 0x10 + 2 * 4, 0x50 | (uint)IoApic.Masked);
        lines[4].Raise();
        Assert.Equal(1, ioApic.MaskedEdges);
        WriteRegister(ioApic, 0x10 + 2 * 4, 0x50);
        Assert.Equal(1, ioApic.MessagesSent); // the edge that came while masked is gone
    }

    [Fact]
    public void A_level_entry_holds_remote_irr_until_eoi_and_resends_while_asserted()
    {
        var (ioApic, apic, lines) = Wired();
        WriteRegister(ioApic, 0x10 + 2 * 9, 0x60 | (uint)IoApic.LevelTriggered);
        lines[9].Raise();
        Assert.Equal(0x60, apic.Accept());
        Assert.NotEqual(0u, ReadRegister(ioApic, 0x10 + 2 * 9) & (uint)IoApic.RemoteIrr);
        Assert.Equal(1u << 0, apic.Read(0x180 + 0x30, 0) & 1); // TMR bit 0x60 (register 3, bit 0)
        apic.Write(0xB0, 0, 0); // EOI with the line still asserted: sent again
        Assert.Equal(2, ioApic.MessagesSent);
        Assert.Equal(0x60, apic.Accept());
        lines[9].Lower();
        apic.Write(0xB0, 0, 0);
        Assert.Equal(0u, ReadRegister(ioApic, 0x10 + 2 * 9) & (uint)IoApic.RemoteIrr);
        Assert.Equal(2, ioApic.MessagesSent);
        Assert.Equal(-1, apic.PendingVector);
    }

    [Fact]
    public void Unsupported_delivery_modes_and_other_destinations_are_refused_and_counted()
    {
        var (ioApic, apic, lines) = Wired();
        WriteRegister(ioApic, 0x10 + 2 * 1, 0x70 | (4u << 8)); // NMI
        lines[1].Raise();
        WriteRegister(ioApic, 0x10 + 2 * 2 + 1, 0x0100_0000); // physical destination APIC 1: nobody
        WriteRegister(ioApic, 0x10 + 2 * 2, 0x71);
        lines[2].Raise();
        Assert.Equal(1, ioApic.UnsupportedDeliveries);
        Assert.Equal(1, ioApic.Undeliverable);
        Assert.Equal(-1, apic.PendingVector);
    }

    [Fact]
    public void Local_apic_delivers_by_priority_class_above_the_processor_priority()
    {
        var apic = new LocalApic();
        Assert.False(apic.RequestInterrupt(0x40, false)); // software-disabled
        apic.Write(0xF0, 0x1FF, 0);
        Assert.False(apic.RequestInterrupt(7, false));    // illegal vector
        Assert.Equal(2, apic.Refused);
        apic.RequestInterrupt(0x41, false);
        apic.RequestInterrupt(0x92, false);
        apic.Write(0x80, 0x90, 0);                         // TPR class 9 holds both
        Assert.False(apic.CanDeliver);
        Assert.Equal(0x90u, apic.Read(0xA0, 0));
        apic.TaskPriority = 0;
        Assert.True(apic.CanDeliver);
        Assert.Equal(0x92, apic.Accept());                 // highest first
        Assert.Equal(0x90u, apic.ProcessorPriority);       // PPR: the in-service class
        Assert.False(apic.CanDeliver);                     // 0x41 is below it
        Assert.Equal(1u << (0x92 & 31), apic.Read(0x100 + 0x40, 0)); // ISR register 4 (vectors 128-159)
        var saved = apic.Save();
        apic.Write(0xB0, 0, 0);
        Assert.Equal(0x41, apic.Accept());
        apic.Restore(saved);
        Assert.Equal(0x92, apic.InServiceVector);
        Assert.Equal(0x41, apic.PendingVector);
        Assert.Equal(saved.ExternalRequests, apic.Save().ExternalRequests);
    }

    [Fact]
    public void The_8259_pair_takes_the_initialization_sequence_and_stays_masked_until_told()
    {
        var pic = new Pic8259Pair();
        Assert.Equal(0xFFu, pic.Read(Pic8259Pair.MasterData, 1));
        Assert.Equal(0xFFu, pic.Read(Pic8259Pair.SlaveData, 1));
        // The classic remap: ICW1 (cascade, ICW4), ICW2 vector base, ICW3 wiring, ICW4 8086 mode; then OCW1.
        pic.Write(Pic8259Pair.MasterCommand, 1, 0x11);
        Assert.True(pic.Master.Initializing);
        pic.Write(Pic8259Pair.MasterData, 1, 0x20);
        pic.Write(Pic8259Pair.MasterData, 1, 0x04);
        pic.Write(Pic8259Pair.MasterData, 1, 0x01);
        Assert.False(pic.Master.Initializing);
        Assert.Equal((0x20, 0x04, 0x01, 1), (pic.Master.VectorBase, pic.Master.Cascade, pic.Master.Mode, pic.Master.Initializations));
        Assert.Equal(0u, pic.Read(Pic8259Pair.MasterData, 1)); // ICW1 cleared the mask
        pic.Write(Pic8259Pair.MasterData, 1, 0xFB);
        Assert.Equal(0xFBu, pic.Read(Pic8259Pair.MasterData, 1));
        pic.Write(Pic8259Pair.SlaveCommand, 1, 0x0B);             // OCW3: read ISR
        Assert.True(pic.Slave.ReadsInService);
        Assert.Equal(0u, pic.Read(Pic8259Pair.SlaveCommand, 1));
        pic.Write(Pic8259Pair.MasterCommand, 1, 0x20);            // OCW2: non-specific EOI
        Assert.Equal(1, pic.Master.EndOfInterrupts);
        Assert.Equal(0xFFu, pic.Read(Pic8259Pair.SlaveData, 1));
    }

    /// <summary>The I/O APIC, the lines and the 8259s survive a snapshot: a level-triggered interrupt in service with
    /// its remote IRR set, still asserted, is completed by the EOI after the restore and sent again, as it would have
    /// been without the snapshot.</summary>
    [Fact]
    public void Interrupt_controllers_survive_a_snapshot_with_a_level_interrupt_in_service()
    {
        var (ioApic, apic, lines) = Wired();
        WriteRegister(ioApic, 0x10 + 2 * 7, 0x0000_A051); // pin 7: vector 0x51, level-triggered, unmasked
        var pics = new Pic8259Pair();
        pics.Write(Pic8259Pair.MasterCommand, 1, 0x11);
        pics.Write(Pic8259Pair.MasterData, 1, 0x20);   // ICW2
        lines.SetLine(7, true);
        Assert.Equal(0x51, apic.Accept());
        Assert.NotEqual(0UL, ioApic.Entry(7) & IoApic.RemoteIrr);

        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(lines);
        writer.WriteSection(ioApic);
        writer.WriteSection(pics);
        var apicState = apic.Save();

        var (ioApic2, apic2, lines2) = Wired();
        var pics2 = new Pic8259Pair();
        var reader = new Persistence.SnapshotReader(writer.ToArray());
        reader.ReadSection(lines2);
        reader.ReadSection(ioApic2);
        reader.ReadSection(pics2);
        Assert.True(reader.AtEnd);
        apic2.Restore(in apicState);
        Assert.Equal(ioApic.Entry(7), ioApic2.Entry(7));
        Assert.True(lines2[7].Asserted);
        Assert.Equal(0x51, apic2.InServiceVector);
        Assert.True(pics2.Master.Initializing); // mid-sequence: the next data byte is ICW3
        Assert.Equal((byte)0x20, pics2.Master.VectorBase);
        Assert.Equal(ioApic.MessagesSent, ioApic2.MessagesSent);

        // The EOI clears remote IRR; the line is still asserted, so the interrupt is sent again (82093AA: level),
        // which sets remote IRR once more.
        apic2.Write(0xB0, 0, 0);
        Assert.Equal(-1, apic2.InServiceVector);
        Assert.Equal(0x51, apic2.PendingVector);
        Assert.NotEqual(0UL, ioApic2.Entry(7) & IoApic.RemoteIrr);
        Assert.Equal(ioApic.MessagesSent + 1, ioApic2.MessagesSent);
    }

    [Fact]
    public void A_corrupt_8259_section_is_refused()
    {
        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(new Pic8259Pair());
        byte[] data = writer.ToArray();
        // Each 8259 writes 25 bytes, the master first, then the pair its two 8-byte counters; the master's first byte
        // is the initialization step. Make it one that does not exist.
        Assert.Equal(0, data[^66]);
        data[^66] = 9;
        var error = Assert.Throws<Persistence.SnapshotFormatException>(() => new Persistence.SnapshotReader(data).ReadSection(new Pic8259Pair()));
        Assert.Contains("initialization step 9", error.Message);
    }
}
