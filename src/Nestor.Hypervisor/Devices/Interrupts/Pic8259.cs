namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>The PC's pair of Intel 8259A programmable interrupt controllers (8259A datasheet): the master at ports
/// 0x20/0x21, the slave at 0xA0/0xA1, cascaded on the master's IR2. Each accepts the initialization sequence (ICW1 on
/// the command port with bit 4 set, then ICW2 — the vector base —, ICW3 when cascaded and ICW4 when ICW1 asks for it,
/// on the data port) and the operation commands (OCW1, the interrupt mask, on the data port; OCW2, EOI, and OCW3,
/// register select, on the command port). Both start masked (IMR 0xFF). They exist so that a guest that masks them
/// (as every APIC kernel does first) runs as on a PC; the platform's lines are delivered through the I/O APIC, never
/// through the 8259s, so their IRR and ISR stay empty.</summary>
public sealed class Pic8259Pair : IPortDevice, Persistence.ISnapshottable
{
    public const ushort MasterCommand = 0x20, MasterData = 0x21, SlaveCommand = 0xA0, SlaveData = 0xA1;

    public string Name => "pic";

    /// <summary>The master controller.</summary>
    public Pic8259 Master { get; } = new();

    /// <summary>The slave controller.</summary>
    public Pic8259 Slave { get; } = new();

    public uint Read(ushort port, int size)
    {
        var chip = port >= SlaveCommand ? Slave : Master;
        return (port & 1) == 0 ? chip.ReadCommand() : chip.Mask;
    }

    public void Write(ushort port, int size, uint value)
    {
        var chip = port >= SlaveCommand ? Slave : Master;
        if ((port & 1) == 0)
        {
            chip.WriteCommand((byte)value);
        }
        else
        {
            chip.WriteData((byte)value);
        }
    }

    /// <inheritdoc/>
    public string SectionTag => "PIC ";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <summary>Both 8259s, master first.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        Master.Save(writer);
        Slave.Save(writer);
    }

    /// <inheritdoc/>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        Master.Restore(reader);
        Slave.Restore(reader);
    }
}

/// <summary>One 8259A: its initialization state machine and the registers software can see.</summary>
public sealed class Pic8259
{
    private enum Expect : byte
    {
        Operation,
        Icw2,
        Icw3,
        Icw4,
    }

    private Expect expect;
    private bool single, needIcw4, readInService;

    /// <summary>Interrupt mask register (OCW1); 0xFF at start.</summary>
    public byte Mask { get; private set; } = 0xFF;

    /// <summary>Vector base from ICW2 (bits 7:3).</summary>
    public byte VectorBase { get; private set; }

    /// <summary>ICW3: the slave lines (master) or the cascade identity (slave).</summary>
    public byte Cascade { get; private set; }

    /// <summary>ICW4 (bit 0: 8086 mode, bit 1: automatic EOI).</summary>
    public byte Mode { get; private set; }

    /// <summary>Completed initialization sequences.</summary>
    public int Initializations { get; private set; }

    /// <summary>Non-specific and specific EOIs written (OCW2).</summary>
    public int EndOfInterrupts { get; private set; }

    /// <summary>True while an initialization sequence is under way.</summary>
    public bool Initializing => expect != Expect.Operation;

    /// <summary>A write to the command port: ICW1 (bit 4), OCW3 (bit 3) or OCW2.</summary>
    public void WriteCommand(byte value)
    {
        if ((value & 0x10) != 0)
        {
            // ICW1 (8259A: bit 0 IC4, bit 1 SNGL): initialization clears the mask and starts the sequence.
            single = (value & 0x02) != 0;
            needIcw4 = (value & 0x01) != 0;
            Mask = 0;
            Mode = 0;
            readInService = false;
            expect = Expect.Icw2;
        }
        else if ((value & 0x08) != 0)
        {
            if ((value & 0x02) != 0)
            {
                readInService = (value & 0x01) != 0; // OCW3 RR/RIS: which register the command port reads
            }
        }
        else if ((value & 0x20) != 0)
        {
            EndOfInterrupts++; // OCW2 with EOI: nothing is in service
        }
    }

    /// <summary>A write to the data port: the next ICW while initializing, else OCW1 (the mask).</summary>
    public void WriteData(byte value)
    {
        var before = expect;
        switch (expect)
        {
            case Expect.Icw2:
                VectorBase = (byte)(value & 0xF8);
                expect = !single ? Expect.Icw3 : needIcw4 ? Expect.Icw4 : Expect.Operation;
                break;
            case Expect.Icw3:
                Cascade = value;
                expect = needIcw4 ? Expect.Icw4 : Expect.Operation;
                break;
            case Expect.Icw4:
                Mode = value;
                expect = Expect.Operation;
                break;
            default:
                Mask = value;
                break;
        }
        if (before != Expect.Operation && expect == Expect.Operation)
        {
            Initializations++;
        }
    }

    /// <summary>Which register the command port reads (OCW3): the ISR (true) or the IRR.</summary>
    public bool ReadsInService => readInService;

    /// <summary>The command port reads IRR or ISR (OCW3); both are empty, as no line is routed through the 8259s.</summary>
    public uint ReadCommand() => 0;

    /// <summary>The initialization state and the registers, for the pair's snapshot section.</summary>
    internal void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteByte((byte)expect);
        writer.WriteBoolean(single);
        writer.WriteBoolean(needIcw4);
        writer.WriteBoolean(readInService);
        writer.WriteByte(Mask);
        writer.WriteByte(VectorBase);
        writer.WriteByte(Cascade);
        writer.WriteByte(Mode);
        writer.WriteInt32(Initializations);
        writer.WriteInt32(EndOfInterrupts);
    }

    internal void Restore(Persistence.SnapshotReader reader)
    {
        byte state = reader.ReadByte();
        if (state > (byte)Expect.Icw4)
        {
            throw reader.Invalid($"an 8259 initialization step {state} that does not exist");
        }
        expect = (Expect)state;
        single = reader.ReadBoolean();
        needIcw4 = reader.ReadBoolean();
        readInService = reader.ReadBoolean();
        Mask = reader.ReadByte();
        VectorBase = reader.ReadByte();
        Cascade = reader.ReadByte();
        Mode = reader.ReadByte();
        Initializations = reader.ReadInt32();
        EndOfInterrupts = reader.ReadInt32();
    }
}
