using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform.Timers;

/// <summary>The Intel 8254 programmable interval timer at ports 0x40–0x43 (8254 data sheet, order 231164), clocked
/// at 1.193182 MHz in the platform's virtual time (<see cref="PlatformClock"/>), with port 0x61's gate and output of
/// counter 2 (the PC's "NMI status and control" register: bit 0 gate 2, bit 1 speaker enable, bit 4 refresh toggle,
/// bit 5 OUT2). Counter 0's output is ISA IRQ 0, which the MADT overrides to GSI 2 (as on QEMU's PC): each rising
/// edge pulses that line. Counters 0 and 2 matter on a PC; all three are modelled. Modes 0–5 count in binary; BCD
/// is reported in the status but counted as binary.</summary>
public sealed class Pit8254 : IPortDevice, ISnapshottable, ITimedDevice
{
    public const ushort FirstPort = 0x40, ControlPort = 0x43, SystemControlPort = 0x61;

    /// <summary>The counters' input clock (the PC's 14.31818 MHz crystal divided by 12).</summary>
    public const long InputHertz = 1_193_182;

    /// <summary>The GSI counter 0 drives (ISA IRQ 0 through the interrupt source override).</summary>
    public const int Gsi = 2;

    private readonly PlatformClock clock;
    private readonly IInterruptLine? line;
    private readonly Counter[] counters = [new(), new(), new()];
    private byte systemControl; // port 0x61 bits 0-1 as written

    public Pit8254(PlatformClock clock, IInterruptLine? line)
    {
        this.clock = clock;
        this.line = line;
        counters[0].Gate = counters[1].Gate = true; // gates 0 and 1 are tied high on a PC
    }

    public string Name => "pit";

    /// <summary>Rising edges of counter 0's output delivered as interrupts so far.</summary>
    public long Interrupts { get; private set; }

    /// <summary>Ticks of the input clock at <paramref name="nanoseconds"/>.</summary>
    public static long Ticks(long nanoseconds) => (long)((Int128)nanoseconds * InputHertz / 1_000_000_000);

    /// <summary>The virtual time of input tick <paramref name="ticks"/> (the first nanosecond at which it has happened).</summary>
    public static long TimeOfTick(long ticks) => (long)(((Int128)ticks * 1_000_000_000 + InputHertz - 1) / InputHertz);

    public uint Read(ushort port, int size)
    {
        long now = Ticks(clock.Nanoseconds);
        if (port == SystemControlPort)
        {
            // Bit 4 toggles with every refresh request (every 15.085 µs, 18 input ticks); bit 5 is OUT2.
            bool refresh = (now / 18 & 1) != 0;
            return (uint)(systemControl & 3) | (refresh ? 0x10u : 0) | (counters[2].Output(now) ? 0x20u : 0);
        }
        if (port == ControlPort)
        {
            return 0xFF; // the control word register is write-only
        }
        return counters[port - FirstPort].ReadByte(now);
    }

    public void Write(ushort port, int size, uint value)
    {
        long now = Ticks(clock.Nanoseconds);
        byte b = (byte)value;
        if (port == SystemControlPort)
        {
            systemControl = (byte)(b & 3);
            counters[2].SetGate((b & 1) != 0, now);
            return;
        }
        if (port != ControlPort)
        {
            counters[port - FirstPort].WriteByte(b, now);
            return;
        }
        int select = b >> 6;
        if (select == 3)
        {
            // Read-back (8254 data sheet, "Read-Back Command"): bit 5 clear latches counts, bit 4 clear statuses.
            for (int i = 0; i < 3; i++)
            {
                if ((b & (2 << i)) != 0)
                {
                    if ((b & 0x20) == 0)
                    {
                        counters[i].LatchCount(now);
                    }
                    if ((b & 0x10) == 0)
                    {
                        counters[i].LatchStatus(now);
                    }
                }
            }
            return;
        }
        if ((b & 0x30) == 0)
        {
            counters[select].LatchCount(now);
            return;
        }
        counters[select].Program(b, now);
    }

    public long NextEvent
    {
        get
        {
            long next = counters[0].NextRisingEdge(Ticks(clock.Nanoseconds));
            return next == long.MaxValue ? long.MaxValue : TimeOfTick(next);
        }
    }

    public void Advance(long now)
    {
        long ticks = Ticks(now);
        var c = counters[0];
        // Edges that fell due since the last delivery arrive as one: an edge-triggered line that is still pending
        // in the interrupt controller would merge them anyway.
        if (c.NextRisingEdge(c.Delivered) <= ticks)
        {
            Interrupts++;
            line?.Raise();
            line?.Lower();
        }
        c.Delivered = Math.Max(c.Delivered, ticks);
    }

    public string SectionTag => "PIT0";

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer)
    {
        writer.WriteByte(systemControl);
        foreach (var c in counters)
        {
            c.Save(writer);
        }
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        systemControl = (byte)(reader.ReadByte() & 3);
        foreach (var c in counters)
        {
            c.Restore(reader);
        }
    }

    /// <summary>One counter: its control word, reload value, the tick it was loaded (or its gate rose) at, and the
    /// latches.</summary>
    private sealed class Counter
    {
        public byte Control = 0x36;     // RW = LSB then MSB, mode 3, as BIOSes leave counter 0
        public int Reload = 0x10000;    // 0 programs 65536
        public long Start = -1;         // the tick counting started at; -1 before a count is written
        public bool Gate;
        public long FrozenCount = -1;   // the count a low gate holds (modes 0, 4: counting pauses)
        public bool WriteLow = true, ReadLow = true;
        public byte PendingLow;
        public int? LatchedCount;
        public bool LatchedCountLow = true;
        public byte? LatchedStatus;
        public bool NullCount = true;
        public long Delivered;          // counter 0: the last tick whose rising edge was delivered

        private int Mode => (Control >> 1 & 7) is var m && m > 5 ? m - 4 : m; // modes 6 and 7 are 2 and 3
        private int Access => Control >> 4 & 3;

        public void Program(byte control, long now)
        {
            Control = control;
            WriteLow = ReadLow = true;
            LatchedCount = null;
            Start = -1;
            FrozenCount = -1;
            NullCount = true;
            Delivered = now;
        }

        public void WriteByte(byte b, long now)
        {
            switch (Access)
            {
                case 1: Load(b, now); break;
                case 2: Load(b << 8, now); break;
                default:
                    if (WriteLow)
                    {
                        PendingLow = b;
                        WriteLow = false;
                    }
                    else
                    {
                        WriteLow = true;
                        Load(PendingLow | b << 8, now);
                    }
                    break;
            }
        }

        private void Load(int value, long now)
        {
            Reload = value == 0 ? 0x10000 : value;
            NullCount = false;
            // The count is loaded on the next input clock; modes 1 and 5 wait for a gate trigger.
            Start = Mode is 1 or 5 ? -1 : now + 1;
            // Modes 0 and 4 count only while the gate is high: a count written under a low gate waits, loaded.
            FrozenCount = !Gate && Mode is 0 or 4 ? Reload & 0xFFFF : -1;
            Delivered = now;
        }

        public void SetGate(bool high, long now)
        {
            if (high == Gate)
            {
                return;
            }
            if (!high && Mode is 0 or 4 && Start >= 0)
            {
                FrozenCount = Count(now);
            }
            Gate = high;
            if (high)
            {
                if (Mode is 1 or 2 or 3 or 5 && !NullCount)
                {
                    Start = now + 1; // a rising gate (re)triggers these modes
                }
                else if (FrozenCount >= 0)
                {
                    Start = now + 1 - (Reload - (FrozenCount == 0 && Reload == 0x10000 ? 0x10000 : FrozenCount)); // resume where it paused
                    FrozenCount = -1;
                }
            }
        }

        /// <summary>The counting element at tick <paramref name="now"/>.</summary>
        public int Count(long now)
        {
            if (FrozenCount >= 0 && !Gate)
            {
                return (int)FrozenCount;
            }
            if (Start < 0 || now < Start || (!Gate && Mode is 2 or 3))
            {
                return Reload & 0xFFFF;
            }
            long elapsed = now - Start;
            return Mode switch
            {
                2 => (int)(Reload - elapsed % Reload),
                // Square wave: the count drops by two each clock and reloads every half period.
                3 => (int)((Reload - 2 * (elapsed % Math.Max(1, Reload / 2))) & 0xFFFF),
                // Modes 0, 1, 4, 5: count down once, then wrap through 0xFFFF and go on.
                _ => (int)((Reload - elapsed) & 0xFFFF),
            };
        }

        public bool Output(long now)
        {
            long elapsed = Start < 0 || now < Start ? -1 : now - Start;
            return Mode switch
            {
                0 => elapsed >= Reload,                              // goes high at terminal count
                1 => elapsed < 0 || elapsed >= Reload,                // a one-shot low pulse
                2 => elapsed < 0 || elapsed % Reload != Reload - 1,   // low for one clock per period
                3 => elapsed < 0 || elapsed % Reload < (Reload + 1) / 2, // high for the first half
                _ => elapsed != Reload,                               // modes 4, 5: a low strobe at terminal count
            };
        }

        /// <summary>The first tick after <paramref name="after"/> at which OUT rises, or long.MaxValue.</summary>
        public long NextRisingEdge(long after)
        {
            if (Start < 0 || !Gate)
            {
                return long.MaxValue;
            }
            long from = Math.Max(after + 1, Start);
            long elapsed = from - Start;
            switch (Mode)
            {
                case 0:
                case 1:
                    return Start + Reload >= from ? Start + Reload : long.MaxValue;
                case 2:
                    {
                        // OUT rises at elapsed = k * Reload (k >= 1), after its one-clock low.
                        long k = Math.Max(1, (elapsed + Reload - 1) / Reload);
                        return Start + k * Reload;
                    }
                case 3:
                    {
                        long k = Math.Max(1, (elapsed + Reload - 1) / Reload);
                        return Start + k * Reload;
                    }
                default:
                    return Start + Reload + 1 >= from ? Start + Reload + 1 : long.MaxValue;
            }
        }

        public void LatchCount(long now)
        {
            if (LatchedCount is null)
            {
                LatchedCount = Count(now);
                LatchedCountLow = true;
            }
        }

        public void LatchStatus(long now)
        {
            LatchedStatus ??= (byte)((Output(now) ? 0x80 : 0) | (NullCount ? 0x40 : 0) | (Control & 0x3F));
        }

        public uint ReadByte(long now)
        {
            if (LatchedStatus is { } status)
            {
                LatchedStatus = null;
                return status;
            }
            int value = LatchedCount ?? Count(now);
            int access = Access;
            if (access == 1)
            {
                LatchedCount = null;
                return (uint)(value & 0xFF);
            }
            if (access == 2)
            {
                LatchedCount = null;
                return (uint)(value >> 8 & 0xFF);
            }
            bool low = LatchedCount is not null ? LatchedCountLow : ReadLow;
            if (LatchedCount is not null)
            {
                if (low)
                {
                    LatchedCountLow = false;
                }
                else
                {
                    LatchedCount = null;
                }
            }
            else
            {
                ReadLow = !ReadLow;
            }
            return (uint)(low ? value & 0xFF : value >> 8 & 0xFF);
        }

        public void Save(SnapshotWriter w)
        {
            w.WriteByte(Control);
            w.WriteInt32(Reload);
            w.WriteInt64(Start);
            w.WriteBoolean(Gate);
            w.WriteInt64(FrozenCount);
            w.WriteBoolean(WriteLow);
            w.WriteBoolean(ReadLow);
            w.WriteByte(PendingLow);
            w.WriteInt32(LatchedCount ?? -1);
            w.WriteBoolean(LatchedCountLow);
            w.WriteInt32(LatchedStatus ?? -1);
            w.WriteBoolean(NullCount);
            w.WriteInt64(Delivered);
        }

        public void Restore(SnapshotReader r)
        {
            Control = r.ReadByte();
            int reload = r.ReadInt32();
            if (reload is < 1 or > 0x10000)
            {
                throw r.Invalid($"PIT reload value {reload} is out of range");
            }
            Reload = reload;
            Start = r.ReadInt64();
            Gate = r.ReadBoolean();
            FrozenCount = r.ReadInt64();
            WriteLow = r.ReadBoolean();
            ReadLow = r.ReadBoolean();
            PendingLow = r.ReadByte();
            int latched = r.ReadInt32();
            LatchedCount = latched is >= 0 and <= 0xFFFF ? latched : null;
            LatchedCountLow = r.ReadBoolean();
            int status = r.ReadInt32();
            LatchedStatus = status is >= 0 and <= 0xFF ? (byte)status : null;
            NullCount = r.ReadBoolean();
            Delivered = r.ReadInt64();
        }
    }
}
