using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform.Timers;

/// <summary>A high precision event timer at 0xFED00000 (IA-PC HPET Specification 1.0a): a 64-bit main counter with
/// a 10 ns period (100 MHz, as QEMU's) in the platform's virtual time (<see cref="PlatformClock"/>), and three
/// comparators, each one-shot or periodic, 32- or 64-bit, edge or level, routed to an I/O APIC input (GSIs 20–23),
/// or in legacy replacement mode timer 0 to IRQ 0 (GSI 2) and timer 1 to IRQ 8 (GSI 8) (§2.3.9.2.2). No FSB
/// (MSI) delivery. Registers are read and written as 32- or 64-bit values (§2.3.2).</summary>
public sealed class Hpet : IMmioDevice, ISnapshottable, ITimedDevice
{
    public const ulong BaseAddress = 0xFED0_0000, Length = 0x400;

    public const int TimerCount = 3;

    /// <summary>The main counter's period in femtoseconds (COUNTER_CLK_PERIOD, §2.3.4): 10 ns.</summary>
    public const uint PeriodFemtoseconds = 10_000_000;

    private const long NanosecondsPerTick = PeriodFemtoseconds / 1_000_000;

    /// <summary>The I/O APIC inputs a comparator may be routed to (Tn_INT_ROUTE_CAP, §2.3.8).</summary>
    public const uint RouteCapability = 0x00F0_0000;

    // General configuration (§2.3.5) and timer configuration (§2.3.8) bits.
    private const ulong Enable = 1, LegacyReplacement = 2;
    private const ulong LevelTriggered = 1 << 1, InterruptEnable = 1 << 2, Periodic = 1 << 3, PeriodicCapable = 1 << 4,
        SixtyFourBitCapable = 1 << 5, ValueSet = 1 << 6, ThirtyTwoBitMode = 1 << 8, RouteMask = 0x1F << 9;
    private const ulong WritableConfiguration = LevelTriggered | InterruptEnable | Periodic | ValueSet | ThirtyTwoBitMode | RouteMask;

    private readonly PlatformClock clock;
    private readonly InterruptController? interrupts;
    private ulong configuration, interruptStatus;
    private ulong counterAtStart; // the main counter when it was last enabled (or its value while halted)
    private long startedAt;        // virtual time (ns) the counter was enabled at
    private readonly TimerState[] timers = [new(), new(), new()];

    public Hpet(PlatformClock clock, InterruptController? interrupts)
    {
        this.clock = clock;
        this.interrupts = interrupts;
    }

    public string Name => "hpet";

    /// <summary>Comparator matches delivered as interrupts so far.</summary>
    public long Interrupts { get; private set; }

    /// <summary>General Capabilities and ID (§2.3.4): revision 1, three timers (NUM_TIM_CAP = 2), 64-bit counter,
    /// legacy replacement capable, vendor 0x8086, the period in the high half.</summary>
    public static ulong Capabilities => 0x01 | ((ulong)(TimerCount - 1) << 8) | (1UL << 13) | (1UL << 15) | (0x8086UL << 16) | ((ulong)PeriodFemtoseconds << 32);

    /// <summary>The main counter now.</summary>
    public ulong MainCounter => MainCounterAt(clock.Nanoseconds);

    private ulong MainCounterAt(long now) =>
        (configuration & Enable) == 0 ? counterAtStart : counterAtStart + (ulong)((now - startedAt) / NanosecondsPerTick);

    public ulong Read(ulong address, int size)
    {
        int offset = (int)(address - BaseAddress);
        ulong register = Register(offset & ~7);
        ulong value = (offset & 4) != 0 ? register >> 32 : register;
        return size == 8 ? value : value & ((1UL << (8 * size)) - 1);
    }

    private ulong Register(int offset)
    {
        if (offset >= 0x100 && offset < 0x100 + 0x20 * TimerCount)
        {
            var t = timers[(offset - 0x100) / 0x20];
            return ((offset - 0x100) % 0x20) switch
            {
                0 => t.Configuration | PeriodicCapable | SixtyFourBitCapable | ((ulong)RouteCapability << 32),
                8 => (t.Configuration & ThirtyTwoBitMode) != 0 ? t.Comparator & 0xFFFF_FFFF : t.Comparator,
                _ => 0, // the FSB route: no FSB delivery
            };
        }
        return offset switch
        {
            0x000 => Capabilities,
            0x010 => configuration,
            0x020 => interruptStatus,
            0x0F0 => MainCounter,
            _ => 0,
        };
    }

    public void Write(ulong address, int size, ulong value)
    {
        int offset = (int)(address - BaseAddress);
        int aligned = offset & ~7;
        // A 32-bit write replaces one half of the 64-bit register (§2.3.2).
        ulong old = Register(aligned);
        if (size < 8)
        {
            value &= (1UL << (8 * size)) - 1;
            value = (offset & 4) != 0 ? (old & 0xFFFF_FFFF) | (value << 32) : (old & 0xFFFF_FFFF_0000_0000) | value;
        }
        long now = clock.Nanoseconds;
        Advance(now);
        switch (aligned)
        {
            case 0x010:
                {
                    ulong counter = MainCounterAt(now);
                    configuration = value & (Enable | LegacyReplacement);
                    counterAtStart = counter;
                    startedAt = now;
                    return;
                }
            case 0x020:
                // Level-triggered status bits clear when written with one (§2.3.6), and lower their lines.
                interruptStatus &= ~value;
                for (int i = 0; i < TimerCount; i++)
                {
                    if ((value & (1UL << i)) != 0)
                    {
                        LineOf(i)?.Lower();
                    }
                }
                return;
            case 0x0F0:
                counterAtStart = value; // software halts the counter first (§2.3.7); written anyway
                startedAt = now;
                foreach (var t in timers)
                {
                    t.Fired = MainCounterAt(now) >= t.Comparator;
                }
                return;
        }
        if (aligned >= 0x100 && aligned < 0x100 + 0x20 * TimerCount)
        {
            int index = (aligned - 0x100) / 0x20;
            var t = timers[index];
            switch ((aligned - 0x100) % 0x20)
            {
                case 0:
                    ulong route = (value & RouteMask) >> 9;
                    if ((RouteCapability & (1u << (int)route)) == 0)
                    {
                        value = (value & ~RouteMask) | (t.Configuration & RouteMask); // an impossible route is not taken
                    }
                    t.Configuration = value & WritableConfiguration;
                    return;
                case 8:
                    if ((t.Configuration & ThirtyTwoBitMode) != 0)
                    {
                        value &= 0xFFFF_FFFF;
                    }
                    // §2.3.9.2.1: a one-shot comparator, or a periodic one with Tn_VAL_SET_CNF, takes the value;
                    // a periodic one's write also (and without Tn_VAL_SET_CNF only) sets its period.
                    bool periodic = (t.Configuration & Periodic) != 0;
                    if (!periodic || (t.Configuration & ValueSet) != 0)
                    {
                        t.Comparator = value;
                    }
                    if (periodic)
                    {
                        t.Period = value;
                    }
                    t.Configuration &= ~ValueSet;
                    t.Fired = false;
                    return;
            }
        }
    }

    private IInterruptLine? LineOf(int index)
    {
        if (interrupts is null)
        {
            return null;
        }
        if ((configuration & LegacyReplacement) != 0 && index < 2)
        {
            return interrupts[index == 0 ? 2 : 8];
        }
        return interrupts[(int)((timers[index].Configuration & RouteMask) >> 9)];
    }

    public long NextEvent
    {
        get
        {
            if ((configuration & Enable) == 0)
            {
                return long.MaxValue;
            }
            long next = long.MaxValue;
            ulong counter = MainCounter;
            foreach (var t in timers)
            {
                if ((t.Configuration & InterruptEnable) != 0 && !t.Fired)
                {
                    ulong ahead = t.Comparator > counter ? t.Comparator - counter : 0;
                    long at = clock.Nanoseconds + (long)Math.Min(ahead, (ulong)(long.MaxValue / 2 / NanosecondsPerTick)) * NanosecondsPerTick;
                    next = Math.Min(next, at);
                }
            }
            return next;
        }
    }

    public void Advance(long now)
    {
        if ((configuration & Enable) == 0)
        {
            return;
        }
        ulong counter = MainCounterAt(now);
        for (int i = 0; i < TimerCount; i++)
        {
            var t = timers[i];
            if (t.Fired || counter < t.Comparator)
            {
                continue;
            }
            if ((t.Configuration & Periodic) != 0 && t.Period > 0)
            {
                // The comparator moves on by the period past the present; missed periods merge into one interrupt.
                ulong behind = (counter - t.Comparator) / t.Period + 1;
                t.Comparator += behind * t.Period;
            }
            else
            {
                t.Fired = true;
            }
            if ((t.Configuration & InterruptEnable) == 0)
            {
                continue;
            }
            Interrupts++;
            var line = LineOf(i);
            if ((t.Configuration & LevelTriggered) != 0)
            {
                interruptStatus |= 1UL << i;
                line?.Raise();
            }
            else
            {
                line?.Raise();
                line?.Lower();
            }
        }
    }

    public string SectionTag => "HPET";

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer)
    {
        writer.WriteUInt64(configuration);
        writer.WriteUInt64(interruptStatus);
        writer.WriteUInt64(MainCounter);
        foreach (var t in timers)
        {
            writer.WriteUInt64(t.Configuration);
            writer.WriteUInt64(t.Comparator);
            writer.WriteUInt64(t.Period);
            writer.WriteBoolean(t.Fired);
        }
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        configuration = reader.ReadUInt64() & (Enable | LegacyReplacement);
        interruptStatus = reader.ReadUInt64() & 7;
        counterAtStart = reader.ReadUInt64();
        startedAt = clock.Nanoseconds;
        foreach (var t in timers)
        {
            t.Configuration = reader.ReadUInt64() & WritableConfiguration;
            t.Comparator = reader.ReadUInt64();
            t.Period = reader.ReadUInt64();
            t.Fired = reader.ReadBoolean();
        }
    }

    private sealed class TimerState
    {
        public ulong Configuration;
        public ulong Comparator = ulong.MaxValue; // reset value: all ones (§2.3.9)
        public ulong Period;
        public bool Fired;
    }
}
