using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform.Timers;

/// <summary>The ACPI fixed hardware the FADT points at (ACPI 6.5 §4.8, "ACPI Hardware Model"), at QEMU's PIIX4 PM
/// base 0x600: the PM1a event block (status at 0x600, enable at 0x602, §4.8.3.1), the PM1a control block (0x604,
/// §4.8.3.2; SCI_EN always set: the machine is always in ACPI mode, the FADT's SMI_CMD is 0) and the PM timer
/// (0x608, §4.8.3.3): a 24-bit counter at 3.579545 MHz in the platform's virtual time (<see cref="PlatformClock"/>),
/// whose bit 23 changing sets TMR_STS. No SCI is raised (every enable bit may be set; none delivers).</summary>
public sealed class AcpiPowerManagement : IPortDevice, ISnapshottable
{
    public const ushort Base = 0x600, EventBlock = Base, ControlBlock = Base + 4, TimerPort = Base + 8, PortCount = 12;

    /// <summary>The blocks' lengths in bytes (the FADT's PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN).</summary>
    public const byte EventBlockLength = 4, ControlBlockLength = 2, TimerLength = 4;

    /// <summary>The PM timer's frequency (ACPI 6.5 §4.8.3.3).</summary>
    public const long TimerHertz = 3_579_545;

    private const ushort TimerStatus = 1 << 0, SciEnable = 1 << 0, SleepEnable = 1 << 13;

    private readonly PlatformClock clock;
    private ushort status, enable, control = SciEnable;
    private long timerStatusEpoch; // the timer's bit-23 period when TMR_STS was last cleared

    public AcpiPowerManagement(PlatformClock clock) => this.clock = clock;

    public string Name => "acpi-pm";

    /// <summary>The PM timer's ticks since the VM was built, unwrapped.</summary>
    public long TimerTicks => (long)((Int128)clock.Nanoseconds * TimerHertz / 1_000_000_000);

    /// <summary>Sleep requests (SLP_EN written) so far; Nestor does not model sleeping states.</summary>
    public long SleepRequests { get; private set; }

    public uint Read(ushort port, int size)
    {
        uint value = port switch
        {
            >= TimerPort => (uint)(TimerTicks & 0xFF_FFFF) >> (8 * (port - TimerPort)),
            >= ControlBlock => (uint)control >> (8 * (port - ControlBlock)),
            >= Base + 2 => (uint)enable >> (8 * (port - Base - 2)),
            _ => (uint)Status() >> (8 * (port - Base)),
        };
        return size == 4 ? value : value & ((1u << (8 * size)) - 1);
    }

    public void Write(ushort port, int size, uint value)
    {
        if (port == Base && size >= 2)
        {
            // PM1 status bits are cleared by writing ones (§4.8.3.1.1).
            if ((value & TimerStatus) != 0)
            {
                timerStatusEpoch = TimerTicks >> 23;
            }
            status &= (ushort)~value;
        }
        else if (port == Base + 2 && size >= 2)
        {
            enable = (ushort)value;
        }
        else if (port == ControlBlock && size >= 2)
        {
            if ((value & SleepEnable) != 0)
            {
                SleepRequests++;
            }
            control = (ushort)((value & ~SleepEnable) | SciEnable);
        }
    }

    private ushort Status() => (ushort)(status | ((TimerTicks >> 23) != timerStatusEpoch ? TimerStatus : 0));

    public string SectionTag => "ACPM";

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer)
    {
        writer.WriteUInt16(status);
        writer.WriteUInt16(enable);
        writer.WriteUInt16(control);
        writer.WriteInt64(timerStatusEpoch);
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        status = reader.ReadUInt16();
        enable = reader.ReadUInt16();
        control = (ushort)(reader.ReadUInt16() | SciEnable);
        timerStatusEpoch = reader.ReadInt64();
    }
}
