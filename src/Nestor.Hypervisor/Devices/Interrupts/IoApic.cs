namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>An Intel 82093AA I/O APIC (datasheet, May 1996), memory-mapped at 0xFEC00000: software selects a register
/// with IOREGSEL (+0x00) and reads or writes it through IOWIN (+0x10). Registers: ID (0x00, bits 27:24), version
/// (0x01: version 0x11, 24 redirection entries), arbitration ID (0x02), and the 24 64-bit redirection entries
/// (0x10 + 2n low, 0x11 + 2n high): vector, delivery mode, destination mode, delivery status, pin polarity, remote IRR,
/// trigger mode, mask, destination. Each input pin is a platform interrupt line (<see cref="InterruptController"/>).
/// An unmasked edge-triggered pin sends its vector to the local APIC on each assertion; a level-triggered pin sends it
/// while asserted and sets remote IRR, which the local APIC's EOI for the vector clears (<see cref="EndOfInterrupt"/>),
/// and the pin, if still asserted, sends again. Fixed and lowest-priority delivery go to the one local APIC; SMI, NMI,
/// INIT and ExtINT are refused and counted. The lines carry the asserted state, so the pin polarity is kept as
/// programmed but changes nothing.</summary>
public sealed class IoApic : IMmioDevice, IInterruptSink, Persistence.ISnapshottable
{
    public const ulong DefaultBase = 0xFEC0_0000;
    public const ulong Length = 0x1000;
    public const int RedirectionEntries = 24;
    public const uint Version = 0x11;

    /// <summary>Redirection-entry bits (82093AA §3.2.4).</summary>
    public const ulong Masked = 1UL << 16, LevelTriggered = 1UL << 15, RemoteIrr = 1UL << 14, ActiveLow = 1UL << 13,
        DeliveryStatus = 1UL << 12, LogicalDestination = 1UL << 11;

    /// <summary>Bit 48 of a redirection entry: the interrupt-remapping (remappable) format (VT-d §5.1.5.1).</summary>
    public const ulong RemappableFormat = 1UL << 48;

    private readonly ulong[] entries = new ulong[RedirectionEntries];
    private readonly bool[] asserted = new bool[RedirectionEntries];
    private uint select, id;

    public IoApic()
    {
        // Reset: every entry masked (82093AA §3.2.4: "the mask bit is set after reset").
        Array.Fill(entries, Masked);
    }

    public string Name => "ioapic";

    /// <summary>Where a fixed interrupt goes: the local APIC's acceptance (vector, level-triggered), true when it took
    /// it. Connected by the engine; without it messages are counted as undeliverable.</summary>
    public Func<int, bool, bool>? LocalApic { get; set; }

    /// <summary>Where messages go on a machine with several local APICs (the APIC bus): destination, logical,
    /// lowest priority, vector, level-triggered; true when an APIC accepted it. When set it replaces
    /// <see cref="LocalApic"/> and the one-processor destination check.</summary>
    public Func<uint, bool, bool, int, bool, bool>? Bus { get; set; }

    /// <summary>Where an entry in the remappable format goes (VT-d specification rev. 4, §5.1.5.1: bit 48 set, the
    /// interrupt index in bits 63:49 and bit 11): the message address and data the I/O APIC sends, given to the
    /// interrupt-remapping unit, true when it was delivered. Null (no remapping unit) sends every entry in the
    /// compatibility format.</summary>
    public Func<ulong, uint, bool>? Remapping { get; set; }

    /// <summary>Interrupt messages sent to the local APIC and accepted.</summary>
    public long MessagesSent { get; private set; }

    /// <summary>Messages not taken: no local APIC connected, a physical destination that is not APIC 0 (nor the
    /// broadcast 0xFF), or the local APIC refused it (illegal vector, software-disabled).</summary>
    public long Undeliverable { get; private set; }

    /// <summary>Assertions of pins whose entry asks for SMI, NMI, INIT or ExtINT delivery, which the model does not
    /// implement (refused, not delivered).</summary>
    public long UnsupportedDeliveries { get; private set; }

    /// <summary>Edges on masked edge-triggered pins (lost, as on the 82093AA).</summary>
    public long MaskedEdges { get; private set; }

    /// <summary>Redirection entry <paramref name="pin"/> (for inspection and tests).</summary>
    public ulong Entry(int pin) => entries[pin];

    public ulong Read(ulong address, int size)
    {
        ulong value = (address & 0xFF) switch
        {
            0x00 => select,
            0x10 => ReadRegister(select),
            _ => 0,
        };
        return size >= 4 ? value : value & ((1UL << (size * 8)) - 1);
    }

    public void Write(ulong address, int size, ulong value)
    {
        switch (address & 0xFF)
        {
            case 0x00:
                select = (uint)value & 0xFF;
                break;
            case 0x10:
                WriteRegister(select, (uint)value);
                break;
        }
    }

    private uint ReadRegister(uint index)
    {
        if (index == 0x00)
        {
            return id;
        }
        if (index == 0x01)
        {
            return ((RedirectionEntries - 1u) << 16) | Version;
        }
        if (index == 0x02)
        {
            return id; // the arbitration ID is loaded from the ID (82093AA §3.2.3)
        }
        if (index >= 0x10 && index < 0x10 + 2 * RedirectionEntries)
        {
            ulong entry = entries[(index - 0x10) / 2];
            return (index & 1) == 0 ? (uint)entry : (uint)(entry >> 32);
        }
        return 0;
    }

    private void WriteRegister(uint index, uint value)
    {
        if (index == 0x00)
        {
            id = value & 0x0F00_0000;
            return;
        }
        if (index < 0x10 || index >= 0x10 + 2 * RedirectionEntries)
        {
            return; // version and arbitration are read-only
        }
        int pin = (int)(index - 0x10) / 2;
        ulong entry = entries[pin];
        if ((index & 1) == 0)
        {
            // Delivery status and remote IRR are read-only.
            const ulong readOnly = DeliveryStatus | RemoteIrr;
            entry = (entry & ~0xFFFF_FFFFUL) | (value & ~readOnly) | (entry & readOnly);
            if ((entry & LevelTriggered) == 0)
            {
                entry &= ~RemoteIrr; // remote IRR is undefined for edge-triggered entries; kept clear
            }
        }
        else
        {
            entry = (entry & 0xFFFF_FFFFUL) | ((ulong)value << 32);
        }
        entries[pin] = entry;
        if ((entry & (Masked | LevelTriggered | RemoteIrr)) == LevelTriggered && asserted[pin])
        {
            Send(pin); // unmasked (or made level-triggered) while the pin is asserted
        }
    }

    /// <summary>A platform line changed: pin <paramref name="gsi"/> is now asserted or not.</summary>
    public void SetLine(int gsi, bool level)
    {
        if ((uint)gsi >= RedirectionEntries)
        {
            return;
        }
        bool wasAsserted = asserted[gsi];
        asserted[gsi] = level;
        ulong entry = entries[gsi];
        if (!level)
        {
            return;
        }
        if ((entry & LevelTriggered) == 0)
        {
            if (wasAsserted)
            {
                return; // no new edge
            }
            if ((entry & Masked) != 0)
            {
                MaskedEdges++;
                return;
            }
            Send(gsi);
        }
        else if ((entry & (Masked | RemoteIrr)) == 0)
        {
            Send(gsi);
        }
    }

    /// <summary>The local APIC's EOI broadcast for <paramref name="vector"/> (SDM Vol. 3A §10.8.5): level-triggered
    /// entries with that vector clear remote IRR, and one whose pin is still asserted sends again.</summary>
    public void EndOfInterrupt(int vector)
    {
        for (int pin = 0; pin < RedirectionEntries; pin++)
        {
            ulong entry = entries[pin];
            if ((entry & (LevelTriggered | RemoteIrr)) == (LevelTriggered | RemoteIrr) && (int)(entry & 0xFF) == vector)
            {
                entries[pin] = entry & ~RemoteIrr;
                if (asserted[pin] && (entry & Masked) == 0)
                {
                    Send(pin);
                }
            }
        }
    }

    private void Send(int pin)
    {
        ulong entry = entries[pin];
        int mode = (int)((entry >> 8) & 7);
        if (mode is not (0 or 1))
        {
            UnsupportedDeliveries++;
            return;
        }
        bool level = (entry & LevelTriggered) != 0;
        bool reaches;
        if ((entry & RemappableFormat) != 0 && Remapping is { } remap)
        {
            // VT-d §5.1.5.1: the message carries the index (address bits 19:5 = index 14:0, bit 2 = index 15, bit 4
            // the remappable format); the data carries the vector (for the EOI match) and the trigger mode.
            uint index = (uint)((entry >> 49) & 0x7FFF) | (uint)(((entry >> 11) & 1) << 15);
            ulong address = 0xFEE0_0000UL | ((ulong)(index & 0x7FFF) << 5) | (1UL << 4) | ((ulong)(index >> 15) << 2);
            uint data = (uint)(entry & 0xFF) | (level ? 1u << 15 : 0);
            reaches = remap(address, data);
        }
        else
        {
            reaches = DeliverMessage((uint)(entry >> 56), (entry & LogicalDestination) != 0, mode == 1, (int)(entry & 0xFF), level);
        }
        if (!reaches)
        {
            Undeliverable++;
            return;
        }
        MessagesSent++;
        if (level)
        {
            entries[pin] = entry | RemoteIrr;
        }
    }

    /// <summary>An interrupt message to the local APIC(s) <paramref name="destination"/> names (SDM Vol. 3A §10.6.2),
    /// through <see cref="Bus"/> when there are several, else to the one local APIC (ID 0): the path the I/O APIC's
    /// own messages take, and the one a PCI device's MSI takes (SDM Vol. 3A §10.11). True when an APIC accepted it.</summary>
    public bool DeliverMessage(uint destination, bool logical, bool lowestPriority, int vector, bool level)
    {
        if (Bus is { } bus)
        {
            return bus(destination, logical, lowestPriority, vector, level);
        }
        // One CPU, APIC ID 0: a physical destination reaches it as 0 or the broadcast 0xFF; a logical destination
        // reaches it unless it names no processor at all.
        bool reaches = logical ? destination != 0 : destination is 0 or 0xFF;
        return reaches && LocalApic is { } apic && apic(vector, level);
    }

    /// <inheritdoc/>
    public string SectionTag => "IOAP";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <summary>IOREGSEL, the ID, the 24 redirection entries (remote IRR and delivery status included) and the level
    /// each input pin last saw, then the counters.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteUInt32(select);
        writer.WriteUInt32(id);
        for (int pin = 0; pin < RedirectionEntries; pin++)
        {
            writer.WriteUInt64(entries[pin]);
            writer.WriteBoolean(asserted[pin]);
        }
        writer.WriteInt64(MessagesSent);
        writer.WriteInt64(Undeliverable);
        writer.WriteInt64(UnsupportedDeliveries);
        writer.WriteInt64(MaskedEdges);
    }

    /// <summary>Takes the saved registers and pin levels as they were; nothing is sent to the local APIC (what was
    /// pending there is in the vCPU's own state).</summary>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        select = reader.ReadUInt32();
        id = reader.ReadUInt32();
        for (int pin = 0; pin < RedirectionEntries; pin++)
        {
            entries[pin] = reader.ReadUInt64();
            asserted[pin] = reader.ReadBoolean();
        }
        MessagesSent = reader.ReadInt64();
        Undeliverable = reader.ReadInt64();
        UnsupportedDeliveries = reader.ReadInt64();
        MaskedEdges = reader.ReadInt64();
    }
}
