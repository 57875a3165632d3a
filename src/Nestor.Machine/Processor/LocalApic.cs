namespace Nestor.Machine.Processor;

/// <summary>The part of a local APIC a kernel needs for a timer (Intel SDM Vol. 3A §10.4 registers, §10.5.4 timer):
/// spurious-vector register (software enable), task priority, EOI, the LVT timer entry (vector, mask, one-shot or
/// periodic), initial and current count, divide configuration. The timer counts the CPU's clock (one tick per
/// retired instruction, plus idle time skipped in HLT), so runs are reproducible. Accepts one interrupt at a time.</summary>
public sealed partial class LocalApic
{
    public const ulong DefaultBase = 0xFEE0_0000;

    private uint spurious = 0xFF, taskPriority, lvtTimer = 1u << 16, initialCount, divideConfiguration;
    private long period;

    /// <summary>The clock value at which the timer next fires, or <see cref="long.MaxValue"/>.</summary>
    public long Deadline { get; private set; } = long.MaxValue;

    /// <summary>The vector waiting for the CPU to accept it, or -1.</summary>
    public int PendingVector { get; private set; } = -1;

    /// <summary>The vector being serviced (accepted, no EOI yet), or -1.</summary>
    public int InServiceVector { get; private set; } = -1;

    /// <summary>Timer interrupts raised so far.</summary>
    public long TimerInterrupts { get; private set; }

    private bool SoftwareEnabled => (spurious & 0x100) != 0;

    private int Divide
    {
        get
        {
            uint value = ((divideConfiguration & 8) >> 1) | (divideConfiguration & 3);
            return value == 7 ? 1 : 2 << (int)value;
        }
    }

    public uint Read(uint offset, long clock) => offset switch
    {
        0x20 => 0,                         // APIC ID
        0x30 => 0x0005_0014,               // version 0x14, 6 LVT entries
        0x80 => taskPriority,
        0xF0 => spurious,
        0x320 => lvtTimer,
        0x380 => initialCount,
        0x390 => Deadline == long.MaxValue ? 0 : (uint)Math.Max(0, (Deadline - clock) / Divide),
        0x3E0 => divideConfiguration,
        _ => 0,
    };

    public void Write(uint offset, uint value, long clock)
    {
        switch (offset)
        {
            case 0x80: taskPriority = value & 0xFF; break;
            case 0xB0: InServiceVector = -1; break; // EOI
            case 0xF0: spurious = value; break;
            case 0x320: lvtTimer = value; break;
            case 0x3E0: divideConfiguration = value; break;
            case 0x380:
                // Writing the initial count starts (or, with 0, stops) the timer (§10.5.4).
                initialCount = value;
                period = (long)value * Divide;
                Deadline = value == 0 ? long.MaxValue : clock + period;
                break;
        }
    }

    /// <summary>Advances the timer to <paramref name="clock"/>: raises its vector when it expires (unless masked or the
    /// APIC is software-disabled) and re-arms a periodic timer.</summary>
    public void Tick(long clock)
    {
        if (clock < Deadline)
        {
            return;
        }
        bool periodic = ((lvtTimer >> 17) & 3) == 1;
        Deadline = periodic && period > 0 ? Math.Max(Deadline + period, clock + 1) : long.MaxValue;
        if ((lvtTimer & (1u << 16)) == 0 && SoftwareEnabled && PendingVector < 0)
        {
            PendingVector = (int)(lvtTimer & 0xFF);
            TimerInterrupts++;
        }
    }

    /// <summary>True when an interrupt can be delivered now (one pending, none in service).</summary>
    public bool CanDeliver => PendingVector >= 0 && InServiceVector < 0;

    /// <summary>The CPU accepts the pending interrupt.</summary>
    public int Accept()
    {
        int vector = PendingVector;
        PendingVector = -1;
        InServiceVector = vector;
        return vector;
    }
}

// Save and restore of the registers above as a LocalApicState (issue 11). Kept at the end of the file, apart, so that
// a rewrite of the APIC can keep its own fields and just fill the same value.
public sealed partial class LocalApic
{
    /// <summary>The state of an APIC after reset: software-disabled (spurious vector 0xFF), the timer masked and idle.</summary>
    public static LocalApicState ResetState => new()
    {
        SpuriousVector = 0xFF,
        LvtTimer = 1u << 16,
        Deadline = long.MaxValue,
        PendingVector = -1,
        InServiceVector = -1,
    };

    /// <summary>The APIC's registers, timer and pending/in-service vectors as a value.</summary>
    public LocalApicState Save() => new()
    {
        SpuriousVector = spurious,
        TaskPriority = taskPriority,
        LvtTimer = lvtTimer,
        InitialCount = initialCount,
        DivideConfiguration = divideConfiguration,
        Period = period,
        Deadline = Deadline,
        PendingVector = PendingVector,
        InServiceVector = InServiceVector,
        TimerInterrupts = TimerInterrupts,
    };

    /// <summary>Makes <paramref name="saved"/> the APIC's state.</summary>
    public void Restore(in LocalApicState saved)
    {
        spurious = saved.SpuriousVector;
        taskPriority = saved.TaskPriority;
        lvtTimer = saved.LvtTimer;
        initialCount = saved.InitialCount;
        divideConfiguration = saved.DivideConfiguration;
        period = saved.Period;
        Deadline = saved.Deadline;
        PendingVector = saved.PendingVector;
        InServiceVector = saved.InServiceVector;
        TimerInterrupts = saved.TimerInterrupts;
    }
}
