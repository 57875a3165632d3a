namespace Nestor.Hypervisor.Devices;

/// <summary>A 16550A UART (National Semiconductor PC16550D datasheet, register summary Table II), enough of it that a
/// real driver's probe succeeds: divisor latch behind LCR.DLAB, scratch register, FIFO control and identification
/// (IIR bits 6–7), the loopback test through MCR bit 4, and line/modem status. Transmission is instantaneous, so
/// THR is always empty (LSR.THRE and LSR.TEMT set). There is no interrupt controller yet, so IIR reports pending
/// interrupts but no IRQ is raised.</summary>
public sealed partial class Uart16550 : IPortDevice
{
    public const ushort Com1 = 0x3F8;
    public const int PortCount = 8;

    /// <summary>Longest time a partial line waits in the buffer while the guest keeps transmitting.</summary>
    public const int PartialLineDelayMilliseconds = 10;

    private const byte LcrDivisorLatch = 0x80;
    private const byte McrLoopback = 0x10;
    private const byte LsrDataReady = 0x01;
    private const byte LsrTransmitterEmpty = 0x20 | 0x40; // THRE | TEMT
    private const byte IerReceivedData = 0x01;
    private const byte IerTransmitterEmpty = 0x02;

    private readonly ushort basePort;
    private readonly Stream output;
    private readonly byte[] pending = new byte[4096];
    private readonly Queue<byte> received = new();
    private int pendingCount;
    private long firstPendingTimestamp;
    private byte interruptEnable, lineControl, modemControl, scratch, fifoControl;
    private ushort divisor = 12; // 9600 baud after reset, as the BIOS leaves it
    private bool transmitterInterruptPending;

    public Uart16550(Stream output, ushort basePort = Com1)
    {
        this.output = output;
        this.basePort = basePort;
    }

    public string Name => basePort == Com1 ? "com1" : $"uart@0x{basePort:x}";

    /// <summary>Bytes the guest has transmitted (loopback excluded).</summary>
    public long BytesTransmitted { get; private set; }

    /// <summary>The baud divisor the guest programmed (115200 / divisor baud).</summary>
    public ushort Divisor => divisor;

    public uint Read(ushort port, int size)
    {
        bool dlab = (lineControl & LcrDivisorLatch) != 0;
        switch (port - basePort)
        {
            case 0:
                if (dlab)
                {
                    return (byte)divisor;
                }
                return received.Count > 0 ? received.Dequeue() : 0u;
            case 1:
                return dlab ? (uint)(divisor >> 8) : interruptEnable;
            case 2:
                return InterruptIdentification();
            case 3:
                return lineControl;
            case 4:
                return modemControl;
            case 5:
                return (uint)(LsrTransmitterEmpty | (received.Count > 0 ? LsrDataReady : 0));
            case 6:
                return ModemStatus();
            default:
                return scratch;
        }
    }

    public void Write(ushort port, int size, uint value)
    {
        byte v = (byte)value;
        bool dlab = (lineControl & LcrDivisorLatch) != 0;
        switch (port - basePort)
        {
            case 0:
                if (dlab)
                {
                    divisor = (ushort)((divisor & 0xFF00) | v);
                }
                else
                {
                    Transmit(v);
                }
                break;
            case 1:
                if (dlab)
                {
                    divisor = (ushort)((divisor & 0x00FF) | (v << 8));
                }
                else
                {
                    // Enabling the THRE interrupt while THR is empty raises it at once (datasheet, IIR notes).
                    if ((v & IerTransmitterEmpty) != 0 && (interruptEnable & IerTransmitterEmpty) == 0)
                    {
                        transmitterInterruptPending = true;
                    }
                    interruptEnable = (byte)(v & 0x0F);
                }
                break;
            case 2:
                fifoControl = v;
                if ((v & 0x02) != 0)
                {
                    received.Clear();
                }
                break;
            case 3:
                lineControl = v;
                break;
            case 4:
                modemControl = (byte)(v & 0x1F);
                break;
            case 7:
                scratch = v;
                break;
        }
    }

    /// <summary>Writes out buffered guest output.</summary>
    public void Flush()
    {
        if (pendingCount > 0)
        {
            output.Write(pending, 0, pendingCount);
            pendingCount = 0;
        }
        output.Flush();
    }

    private void Transmit(byte b)
    {
        transmitterInterruptPending = true;
        if ((modemControl & McrLoopback) != 0)
        {
            // Loopback: the transmitter feeds the receiver, nothing leaves the chip.
            if (received.Count < 16)
            {
                received.Enqueue(b);
            }
            return;
        }
        BytesTransmitted++;
        if (pendingCount == 0)
        {
            firstPendingTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
        }
        pending[pendingCount++] = b;
        // Line-buffered, so a byte costs no system call of its own; but a partial line (a prompt, a progress dot)
        // must not wait for its newline for long either.
        if (b == (byte)'\n' || pendingCount == pending.Length ||
            System.Diagnostics.Stopwatch.GetElapsedTime(firstPendingTimestamp).TotalMilliseconds >= PartialLineDelayMilliseconds)
        {
            Flush();
        }
    }

    private uint InterruptIdentification()
    {
        uint fifo = (fifoControl & 0x01) != 0 ? 0xC0u : 0u;
        if ((interruptEnable & IerReceivedData) != 0 && received.Count > 0)
        {
            return fifo | 0x04;
        }
        if ((interruptEnable & IerTransmitterEmpty) != 0 && transmitterInterruptPending)
        {
            transmitterInterruptPending = false; // reading IIR clears a THRE interrupt
            return fifo | 0x02;
        }
        return fifo | 0x01; // no interrupt pending
    }

    private uint ModemStatus()
    {
        if ((modemControl & McrLoopback) != 0)
        {
            // Loopback wires DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
            uint m = modemControl;
            return ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4);
        }
        return 0xB0; // CTS, DSR, DCD: a terminal is attached
    }
}

// Snapshots (issue 11): the registers, the receive FIFO and the transmitted-byte count. Output still buffered is written
// out first, by the VM that transmitted it, so that every byte reaches the output once whichever VM goes on.
public sealed partial class Uart16550 : Persistence.ISnapshottable
{
    public string SectionTag => "UART";

    public ushort SectionVersion => 1;

    public void Save(Persistence.SnapshotWriter writer)
    {
        Flush();
        writer.WriteUInt16(basePort);
        foreach (byte register in (ReadOnlySpan<byte>)[interruptEnable, lineControl, modemControl, scratch, fifoControl])
        {
            writer.WriteByte(register);
        }
        writer.WriteUInt16(divisor);
        writer.WriteBoolean(transmitterInterruptPending);
        writer.WriteInt64(BytesTransmitted);
        writer.WriteInt32(received.Count);
        foreach (byte b in received)
        {
            writer.WriteByte(b);
        }
    }

    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        ushort port = reader.ReadUInt16();
        if (port != basePort)
        {
            throw reader.Invalid($"a UART at port 0x{port:x} restored into the one at 0x{basePort:x}");
        }
        interruptEnable = reader.ReadByte();
        lineControl = reader.ReadByte();
        modemControl = reader.ReadByte();
        scratch = reader.ReadByte();
        fifoControl = reader.ReadByte();
        divisor = reader.ReadUInt16();
        transmitterInterruptPending = reader.ReadBoolean();
        BytesTransmitted = reader.ReadInt64();
        int count = reader.ReadInt32();
        if (count is < 0 or > 16)
        {
            throw reader.Invalid($"{count} bytes in a 16-byte receive FIFO");
        }
        received.Clear();
        for (int i = 0; i < count; i++)
        {
            received.Enqueue(reader.ReadByte());
        }
    }
}
