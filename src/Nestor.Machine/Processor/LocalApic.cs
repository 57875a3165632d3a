namespace Nestor.Machine.Processor;

/// <summary>The local APIC (Intel SDM Vol. 3A chapter 10): the spurious-vector register (software enable), task and
/// processor priority, EOI, the 256-bit IRR, ISR and TMR (§10.8.4), the LVT timer entry (vector, mask, one-shot or
/// periodic), initial and current count, divide configuration. Fixed interrupts come from its timer and from outside
/// (<see cref="RequestInterrupt"/>, the I/O APIC's messages); the CPU takes the highest-priority requested vector whose
/// priority class is above the processor priority (§10.8.3). The timer counts the CPU's clock (one tick per retired
/// instruction, plus idle time skipped in HLT), so runs are reproducible. Its whole state is a
/// <see cref="LocalApicState"/> value (<see cref="Save"/>, <see cref="Restore"/>).</summary>
public sealed class LocalApic
{
    public const ulong DefaultBase = 0xFEE0_0000;

    private LocalApicState state = LocalApicState.Reset;

    /// <summary>Called with the vector when software writes EOI for a level-triggered interrupt (its TMR bit set): the
    /// EOI message the local APIC broadcasts to the I/O APICs (SDM Vol. 3A §10.8.5), which clears the entry's remote
    /// IRR.</summary>
    public Action<int>? LevelTriggeredEndOfInterrupt { get; set; }

    /// <summary>The APIC's state as a value.</summary>
    public LocalApicState Save() => state;

    /// <summary>Replaces the APIC's state with <paramref name="saved"/> (the CPU must look at its events again:
    /// <see cref="Cpu.InterruptStateChanged"/>).</summary>
    public void Restore(in LocalApicState saved) => state = saved;

    /// <summary>The clock value at which the timer next fires, or <see cref="long.MaxValue"/>.</summary>
    public long Deadline => state.Deadline;

    /// <summary>The highest vector requested and not yet delivered (IRR), or -1.</summary>
    public int PendingVector => state.Requests.Highest();

    /// <summary>The highest vector being serviced (delivered, no EOI yet: ISR), or -1.</summary>
    public int InServiceVector => state.InService.Highest();

    /// <summary>Timer interrupts raised so far.</summary>
    public long TimerInterrupts => state.TimerInterrupts;

    /// <summary>Fixed interrupts accepted from outside (the I/O APIC).</summary>
    public long ExternalRequests => state.ExternalRequests;

    /// <summary>Interrupts refused (illegal vector, or the APIC software-disabled).</summary>
    public long Refused => state.Refused;

    /// <summary>The task-priority register (SDM §10.8.3.1). MOV to CR8 writes its bits 7:4 (§10.8.6.1).</summary>
    public uint TaskPriority
    {
        get => state.TaskPriority;
        set => state.TaskPriority = value & 0xFF;
    }

    /// <summary>The processor-priority register (SDM §10.8.3.1): the TPR if its class is at least the highest
    /// in-service vector's class, else that class.</summary>
    public uint ProcessorPriority
    {
        get
        {
            int inService = state.InService.Highest();
            uint serviceClass = inService < 0 ? 0 : (uint)inService & 0xF0;
            return (state.TaskPriority & 0xF0) >= serviceClass ? state.TaskPriority : serviceClass;
        }
    }

    private bool SoftwareEnabled => (state.SpuriousVector & 0x100) != 0;

    private int Divide
    {
        get
        {
            uint value = ((state.DivideConfiguration & 8) >> 1) | (state.DivideConfiguration & 3);
            return value == 7 ? 1 : 2 << (int)value;
        }
    }

    public uint Read(uint offset, long clock) => offset switch
    {
        0x20 => 0,                         // APIC ID
        0x30 => 0x0005_0014,               // version 0x14, 6 LVT entries
        0x80 => state.TaskPriority,
        0xA0 => ProcessorPriority,
        0xF0 => state.SpuriousVector,
        >= 0x100 and < 0x180 => state.InService.Register((int)(offset - 0x100) >> 4),
        >= 0x180 and < 0x200 => state.TriggerMode.Register((int)(offset - 0x180) >> 4),
        >= 0x200 and < 0x280 => state.Requests.Register((int)(offset - 0x200) >> 4),
        0x320 => state.LvtTimer,
        0x380 => state.InitialCount,
        0x390 => state.Deadline == long.MaxValue ? 0 : (uint)Math.Max(0, (state.Deadline - clock) / Divide),
        0x3E0 => state.DivideConfiguration,
        _ => 0,
    };

    public void Write(uint offset, uint value, long clock)
    {
        switch (offset)
        {
            case 0x80: state.TaskPriority = value & 0xFF; break;
            case 0xB0: EndOfInterrupt(); break;
            case 0xF0: state.SpuriousVector = value; break;
            case 0x320: state.LvtTimer = value; break;
            case 0x3E0: state.DivideConfiguration = value; break;
            case 0x380:
                // Writing the initial count starts (or, with 0, stops) the timer (§10.5.4).
                state.InitialCount = value;
                state.Period = (long)value * Divide;
                state.Deadline = value == 0 ? long.MaxValue : clock + state.Period;
                break;
        }
    }

    /// <summary>EOI (SDM Vol. 3A §10.8.5): the highest in-service vector is done; for a level-triggered one the EOI is
    /// broadcast to the I/O APIC.</summary>
    private void EndOfInterrupt()
    {
        state.EndOfInterrupts++;
        int vector = state.InService.Highest();
        if (vector < 0)
        {
            return;
        }
        state.InService.Set(vector, false);
        if (state.TriggerMode.Get(vector))
        {
            LevelTriggeredEndOfInterrupt?.Invoke(vector);
        }
    }

    /// <summary>Advances the timer to <paramref name="clock"/>: requests its vector when it expires (unless masked or the
    /// APIC is software-disabled, or the vector is already requested) and re-arms a periodic timer.</summary>
    public void Tick(long clock)
    {
        if (clock < state.Deadline)
        {
            return;
        }
        bool periodic = ((state.LvtTimer >> 17) & 3) == 1;
        state.Deadline = periodic && state.Period > 0 ? Math.Max(state.Deadline + state.Period, clock + 1) : long.MaxValue;
        int vector = (int)(state.LvtTimer & 0xFF);
        if ((state.LvtTimer & (1u << 16)) == 0 && SoftwareEnabled && !state.Requests.Get(vector))
        {
            // A request for a vector already in the IRR is lost (one bit per vector, SDM §10.8.4).
            state.Requests.Set(vector, true);
            state.TriggerMode.Set(vector, false);
            state.TimerInterrupts++;
        }
    }

    /// <summary>A fixed interrupt from outside the APIC (an I/O APIC message, SDM §10.8.1): sets the vector's IRR bit,
    /// and its TMR bit for a level-triggered interrupt. Refused (false) for vectors 0–15, which are illegal (§10.5.3),
    /// and while the APIC is software-disabled (§10.4.7.2).</summary>
    public bool RequestInterrupt(int vector, bool levelTriggered)
    {
        if (vector is < 16 or > 255 || !SoftwareEnabled)
        {
            state.Refused++;
            return false;
        }
        state.ExternalRequests++;
        state.Requests.Set(vector, true);
        state.TriggerMode.Set(vector, levelTriggered);
        return true;
    }

    /// <summary>True when the APIC has an interrupt for the CPU: the highest requested vector's priority class is above
    /// the processor priority's (SDM Vol. 3A §10.8.3.1).</summary>
    public bool CanDeliver
    {
        get
        {
            int vector = state.Requests.Highest();
            return vector >= 0 && ((uint)vector & 0xF0) > (ProcessorPriority & 0xF0);
        }
    }

    /// <summary>The CPU accepts the highest requested interrupt (the INTA cycle): its IRR bit moves to the ISR.</summary>
    public int Accept()
    {
        int vector = state.Requests.Highest();
        if (vector < 0)
        {
            return -1;
        }
        state.Requests.Set(vector, false);
        state.InService.Set(vector, true);
        return vector;
    }
}
