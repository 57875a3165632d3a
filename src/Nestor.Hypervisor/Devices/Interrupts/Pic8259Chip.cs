namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>One 8259A (Intel 8259A data sheet): the initialization sequence (ICW1–ICW4), the interrupt request, mask
/// and in-service registers (IRR, IMR, ISR), fixed priority with rotation (OCW2), non-specific and specific EOI,
/// automatic EOI (ICW4.AEOI), special mask mode and poll mode (OCW3), and the status reads of IRR/ISR.</summary>
public sealed class Pic8259
{
    private enum Expect : byte
    {
        Operation,
        Icw2,
        Icw3,
        Icw4,
    }

    private readonly bool master;
    private Expect expect;
    private bool single, needIcw4, readInService, levelTriggeredAll, specialMask, poll, rotateOnAutoEoi;
    private byte inputs; // the levels at the IR pins, for edge detection

    internal Pic8259(bool master) => this.master = master;

    /// <summary>Public for tests and state views: a master chip (true) or the slave.</summary>
    public bool IsMaster => master;

    /// <summary>Interrupt mask register (OCW1); 0xFF at power-on, cleared by ICW1.</summary>
    public byte Mask { get; private set; } = 0xFF;

    /// <summary>Interrupt request register: the lines that asked and were not yet acknowledged.</summary>
    public byte Requests { get; private set; }

    /// <summary>In-service register: the lines acknowledged and not yet ended by an EOI.</summary>
    public byte InService { get; private set; }

    /// <summary>The ELCR's bits for this chip (set: the line is level-sensitive).</summary>
    public byte EdgeLevel { get; internal set; }

    /// <summary>The lowest-priority line (7 after ICW1; OCW2 rotation moves it): line (Lowest + 1) mod 8 is the highest.</summary>
    public int LowestPriority { get; private set; } = 7;

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

    /// <summary>Which register the command port reads (OCW3): the ISR (true) or the IRR.</summary>
    public bool ReadsInService => readInService;

    /// <summary>The chip's INT output: an unmasked request of higher priority than everything in service.</summary>
    public bool Output => PendingLine() >= 0;

    private bool AutomaticEoi => (Mode & 0x02) != 0;

    /// <summary>IR pin <paramref name="line"/> is now at <paramref name="level"/>: an edge-triggered line latches its
    /// rising edge into IRR (and keeps it until acknowledged, as QEMU's i8259 does); a level-sensitive one (ELCR, or
    /// ICW1.LTIM for the whole chip) requests while high.</summary>
    public void SetInput(int line, bool level)
    {
        byte bit = (byte)(1 << line);
        bool wasHigh = (inputs & bit) != 0;
        inputs = level ? (byte)(inputs | bit) : (byte)(inputs & ~bit);
        if (levelTriggeredAll || (EdgeLevel & bit) != 0)
        {
            Requests = level ? (byte)(Requests | bit) : (byte)(Requests & ~bit);
        }
        else if (level && !wasHigh)
        {
            Requests |= bit;
        }
    }

    /// <summary>The line the chip would present now, or -1: the highest-priority unmasked request above the
    /// highest-priority line in service (in special mask mode, masked lines in service do not block).</summary>
    public int PendingLine()
    {
        if (expect != Expect.Operation)
        {
            return -1;
        }
        int requested = Requests & ~Mask;
        if (requested == 0)
        {
            return -1;
        }
        int blocking = specialMask ? InService & ~Mask : InService;
        // Special fully nested mode (ICW4.SFNM, master only): a slave request is taken although IR2 is in service.
        if (master && (Mode & 0x10) != 0)
        {
            blocking &= ~Cascade;
        }
        int line = HighestOf(requested);
        return Rank(line) < (blocking == 0 ? 8 : Rank(HighestOf(blocking))) ? line : -1;
    }

    /// <summary>The acknowledge cycle on this chip: the pending line goes in service (or, with automatic EOI, is ended
    /// at once, rotating if asked); an edge request leaves IRR. -1 when nothing is pending (spurious).</summary>
    internal int AcknowledgeLine()
    {
        int line = PendingLine();
        if (line < 0)
        {
            return -1;
        }
        byte bit = (byte)(1 << line);
        if (!levelTriggeredAll && (EdgeLevel & bit) == 0)
        {
            Requests &= (byte)~bit;
        }
        if (AutomaticEoi)
        {
            if (rotateOnAutoEoi)
            {
                LowestPriority = line;
            }
        }
        else
        {
            InService |= bit;
        }
        return line;
    }

    /// <summary>A read of the command port (OCW3: IRR or ISR, or the poll word) or of the data port (IMR, or the poll
    /// word: a poll command makes the next read of either port an acknowledge, data sheet "The Poll Command").</summary>
    public uint Read(bool command)
    {
        if (poll)
        {
            poll = false;
            int line = AcknowledgeLine();
            return line < 0 ? 0u : 0x80u | (uint)line;
        }
        return command ? (readInService ? InService : Requests) : Mask;
    }

    /// <summary>A write to the command port: ICW1 (bit 4), OCW3 (bit 3) or OCW2.</summary>
    public void WriteCommand(byte value)
    {
        if ((value & 0x10) != 0)
        {
            // ICW1 (bit 0 IC4, bit 1 SNGL, bit 3 LTIM): the mask and in-service registers are cleared, IR7 gets the
            // lowest priority, special mask mode ends, status reads select IRR, and the edge sense is reset so that an
            // edge-triggered line must rise again to request.
            single = (value & 0x02) != 0;
            needIcw4 = (value & 0x01) != 0;
            levelTriggeredAll = (value & 0x08) != 0;
            Mask = 0;
            InService = 0;
            Requests = levelTriggeredAll ? inputs : (byte)(Requests & EdgeLevel & inputs);
            Mode = 0;
            LowestPriority = 7;
            readInService = specialMask = poll = rotateOnAutoEoi = false;
            expect = Expect.Icw2;
        }
        else if ((value & 0x08) != 0)
        {
            // OCW3: bit 2 poll, bits 1:0 RR/RIS (read register), bits 6:5 ESMM/SMM (special mask mode).
            poll = (value & 0x04) != 0;
            if ((value & 0x02) != 0)
            {
                readInService = (value & 0x01) != 0;
            }
            if ((value & 0x40) != 0)
            {
                specialMask = (value & 0x20) != 0;
            }
        }
        else
        {
            // OCW2: bits 7:5 R, SL, EOI; bits 2:0 the line for the specific forms.
            int line = value & 7;
            switch (value >> 5)
            {
                case 0b001: EndHighest(rotate: false); break;                  // non-specific EOI
                case 0b011: EndLine(line, rotate: false); break;               // specific EOI
                case 0b101: EndHighest(rotate: true); break;                   // rotate on non-specific EOI
                case 0b111: EndLine(line, rotate: true); break;                // rotate on specific EOI
                case 0b100: rotateOnAutoEoi = true; break;                     // rotate in automatic EOI mode (set)
                case 0b000: rotateOnAutoEoi = false; break;                    // (clear)
                case 0b110: LowestPriority = line; break;                      // set priority
                default: break;                                                // 010: no operation
            }
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

    private void EndHighest(bool rotate)
    {
        EndOfInterrupts++;
        if (InService == 0)
        {
            return;
        }
        int line = HighestOf(InService);
        InService &= (byte)~(1 << line);
        if (rotate)
        {
            LowestPriority = line;
        }
    }

    private void EndLine(int line, bool rotate)
    {
        EndOfInterrupts++;
        InService &= (byte)~(1 << line);
        if (rotate)
        {
            LowestPriority = line;
        }
    }

    // 0 for the highest-priority line, 7 for the lowest.
    private int Rank(int line) => (line - LowestPriority - 1) & 7;

    private int HighestOf(int lines)
    {
        for (int rank = 0; rank < 8; rank++)
        {
            int line = (LowestPriority + 1 + rank) & 7;
            if ((lines & (1 << line)) != 0)
            {
                return line;
            }
        }
        return -1;
    }

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
        // version 2
        writer.WriteByte(Requests);
        writer.WriteByte(InService);
        writer.WriteByte(EdgeLevel);
        writer.WriteByte(inputs);
        writer.WriteByte((byte)LowestPriority);
        writer.WriteBoolean(levelTriggeredAll);
        writer.WriteBoolean(specialMask);
        writer.WriteBoolean(poll);
        writer.WriteBoolean(rotateOnAutoEoi);
    }

    internal void Restore(Persistence.SnapshotReader reader, ushort version)
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
        if (version < 2)
        {
            Requests = InService = EdgeLevel = inputs = 0;
            LowestPriority = 7;
            levelTriggeredAll = specialMask = poll = rotateOnAutoEoi = false;
            return;
        }
        Requests = reader.ReadByte();
        InService = reader.ReadByte();
        EdgeLevel = reader.ReadByte();
        inputs = reader.ReadByte();
        byte lowest = reader.ReadByte();
        if (lowest > 7)
        {
            throw reader.Invalid($"an 8259 lowest-priority line {lowest}, which is not 0-7");
        }
        LowestPriority = lowest;
        levelTriggeredAll = reader.ReadBoolean();
        specialMask = reader.ReadBoolean();
        poll = reader.ReadBoolean();
        rotateOnAutoEoi = reader.ReadBoolean();
    }
}
