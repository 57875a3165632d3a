namespace Nestor.Machine.Processor;

/// <summary>The local APIC (Intel SDM Vol. 3A chapter 10): the spurious-vector register (software enable), task and
/// processor priority, EOI, the 256-bit IRR, ISR and TMR (§10.8.4), the LVT (the timer: vector, mask, one-shot,
/// periodic or TSC-deadline; the other entries programmable and masked at reset), initial and current count, divide
/// configuration, LDR/DFR, and the ICR, whose interprocessor interrupts go over the <see cref="ApicBus"/>; the x2APIC
/// MSR interface (§10.12); hardware disable by IA32_APIC_BASE.EN (§10.4.3). Fixed interrupts come from its timer and from outside
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

    /// <summary>The mask bit of an LVT entry (bit 16, SDM Vol. 3A §10.5.1).</summary>
    public const uint Masked = 1u << 16;

    private bool SoftwareEnabled => (state.SpuriousVector & 0x100) != 0;

    /// <summary>False once IA32_APIC_BASE.EN is cleared (SDM Vol. 3A §10.4.3), until it is set again.</summary>
    public bool HardwareEnabled => !state.HardwareDisabled;

    /// <summary>IA32_APIC_BASE.EN changed (§10.4.3). Cleared, the APIC stops: its registers are gone (the CPU stops
    /// decoding its page), it accepts and raises no interrupt. Set again, it starts from its reset state (§10.4.7.1).
    /// Either way what it held is lost; its counters are kept.</summary>
    public void SetHardwareEnabled(bool enabled)
    {
        var counters = state;
        state = LocalApicState.Reset;
        state.HardwareDisabled = !enabled;
        state.TimerInterrupts = counters.TimerInterrupts;
        state.ExternalRequests = counters.ExternalRequests;
        state.Refused = counters.Refused;
        state.EndOfInterrupts = counters.EndOfInterrupts;
        state.SelfInterrupts = counters.SelfInterrupts;
        state.UndeliveredCommands = counters.UndeliveredCommands;
        state.Id = counters.Id;
        state.InterprocessorInterruptsSent = counters.InterprocessorInterruptsSent;
        state.InterprocessorInterruptsReceived = counters.InterprocessorInterruptsReceived;
    }

    /// <summary>Interrupts the APIC sent itself through the ICR.</summary>
    public long SelfInterrupts => state.SelfInterrupts;

    /// <summary>ICR commands not carried out (SMI, reserved modes, illegal vectors, destinations no APIC accepts).</summary>
    public long UndeliveredCommands => state.UndeliveredCommands;

    private int Divide
    {
        get
        {
            uint value = ((state.DivideConfiguration & 8) >> 1) | (state.DivideConfiguration & 3);
            return value == 7 ? 1 : 2 << (int)value;
        }
    }

    // The LVT timer's mode field, bits 18:17 (§10.5.4): one-shot, periodic, or TSC-deadline (bit 18 is reserved
    // without CPUID.01H:ECX.TSC_Deadline).
    private const uint TimerModeField = 3u << 17, PeriodicMode = 1u << 17, TscDeadlineMode = 2u << 17;

    private static readonly uint TimerWritable = 0xFF | Masked | (ProcessorModel.Has(CpuFeature.TscDeadline) ? TimerModeField : PeriodicMode);

    private bool InTscDeadlineMode => (state.LvtTimer & TimerModeField) == TscDeadlineMode;

    /// <summary>A register of the APIC's page (offset from its base; SDM Vol. 3A Table 10-1).</summary>
    public uint Read(uint offset, long clock) => offset switch
    {
        0x20 => state.Id << 24,            // the APIC ID in bits 31:24 (§10.4.6)
        0x30 => 0x0005_0014,               // version 0x14, 6 LVT entries (max LVT entry 5)
        0x80 => state.TaskPriority,
        0xA0 => ProcessorPriority,
        0xD0 => state.LogicalDestination,
        0xE0 => state.DestinationFormat,
        0xF0 => state.SpuriousVector,
        >= 0x100 and < 0x180 => state.InService.Register((int)(offset - 0x100) >> 4),
        >= 0x180 and < 0x200 => state.TriggerMode.Register((int)(offset - 0x180) >> 4),
        >= 0x200 and < 0x280 => state.Requests.Register((int)(offset - 0x200) >> 4),
        0x300 => state.CommandLow & ~(1u << 12), // delivery status: idle (a self-IPI is accepted at once)
        0x310 => state.CommandHigh,
        0x320 => state.LvtTimer,
        0x330 => state.LvtThermal,
        0x340 => state.LvtPerformance,
        0x350 => state.LvtLint0,
        0x360 => state.LvtLint1,
        0x370 => state.LvtError,
        0x380 => state.InitialCount,
        // The current count: 0 when the timer is stopped, and in TSC-deadline mode (§10.5.4.1).
        0x390 => state.Deadline == long.MaxValue || InTscDeadlineMode ? 0 : (uint)Math.Max(0, (state.Deadline - clock) / Divide),
        0x3E0 => state.DivideConfiguration,
        _ => 0,
    };

    /// <summary>Writes a register of the APIC's page. While the APIC is software-disabled (SVR bit 8 clear) every LVT
    /// entry stays masked (§10.4.7.2).</summary>
    public void Write(uint offset, uint value, long clock)
    {
        uint mask = SoftwareEnabled ? 0 : Masked;
        switch (offset)
        {
            case 0x80: state.TaskPriority = value & 0xFF; break;
            case 0xB0: EndOfInterrupt(); break;
            case 0xD0: state.LogicalDestination = value & 0xFF00_0000; break;
            case 0xE0: state.DestinationFormat = value | 0x0FFF_FFFF; break;
            case 0xF0:
                state.SpuriousVector = value & 0x1FF;
                if (!SoftwareEnabled)
                {
                    // Software disable masks every LVT entry (§10.4.7.2); IRR and ISR are kept.
                    state.LvtTimer |= Masked;
                    state.LvtThermal |= Masked;
                    state.LvtPerformance |= Masked;
                    state.LvtLint0 |= Masked;
                    state.LvtLint1 |= Masked;
                    state.LvtError |= Masked;
                }
                break;
            case 0x300: SendCommand(value, x2Apic: false); break;
            case 0x310: state.CommandHigh = value & 0xFF00_0000; break;
            case 0x320:
                {
                    uint timer = (value & TimerWritable) | mask;
                    if (((timer ^ state.LvtTimer) & TscDeadlineMode) != 0)
                    {
                        // Changing to or from TSC-deadline mode disarms the timer (§10.5.4.1).
                        state.Deadline = long.MaxValue;
                        state.InitialCount = 0;
                        state.TscDeadline = 0;
                    }
                    state.LvtTimer = timer;
                    break;
                }
            case 0x330: state.LvtThermal = (value & 0x107FF) | mask; break;
            case 0x340: state.LvtPerformance = (value & 0x107FF) | mask; break;
            case 0x350: state.LvtLint0 = (value & 0x1A7FF) | mask; break;
            case 0x360: state.LvtLint1 = (value & 0x1A7FF) | mask; break;
            case 0x370: state.LvtError = (value & 0x100FF) | mask; break;
            case 0x3E0: state.DivideConfiguration = value & 0xB; break;
            case 0x380:
                if (InTscDeadlineMode)
                {
                    break; // ignored in TSC-deadline mode (§10.5.4.1)
                }
                // Writing the initial count starts (or, with 0, stops) the timer (§10.5.4).
                state.InitialCount = value;
                state.Period = (long)value * Divide;
                state.Deadline = value == 0 ? long.MaxValue : clock + state.Period;
                break;
        }
    }

    /// <summary>An NMI waits for the CPU (<see cref="TakeNonMaskableInterrupt"/>).</summary>
    public bool NonMaskableInterruptPending => state.NmiPending;

    /// <summary>The CPU takes the waiting NMI.</summary>
    public void TakeNonMaskableInterrupt() => state.NmiPending = false;

    /// <summary>IA32_TSC_DEADLINE (SDM Vol. 3A §10.5.4.1): the TSC value at which the timer fires, 0 when disarmed.</summary>
    public ulong TscDeadline => state.TscDeadline;

    /// <summary>WRMSR to IA32_TSC_DEADLINE: in TSC-deadline mode arms the timer at that TSC value (the TSC is the
    /// CPU's clock; a value already past fires at once), 0 disarms it; in other modes it is only stored.</summary>
    public void WriteTscDeadline(ulong value, long clock)
    {
        state.TscDeadline = value;
        if (InTscDeadlineMode)
        {
            state.Deadline = value == 0 ? long.MaxValue : (long)Math.Min(value, (ulong)long.MaxValue - 1);
        }
    }

    /// <summary>A write of the ICR (SDM Vol. 3A §10.6.1; in x2APIC mode the one 64-bit MSR, §10.12.9): an
    /// interprocessor interrupt, which the <see cref="ApicBus"/> carries to the APICs it names (a lone APIC is a bus
    /// of one).</summary>
    private void SendCommand(uint value, bool x2Apic)
    {
        state.CommandLow = value & 0x000C_CFFF;
        uint destination = x2Apic ? state.CommandHigh : state.CommandHigh >> 24;
        (Bus ??= new ApicBus(this)).Send(this, value, destination, x2Apic);
    }

    /// <summary>The APIC ID (SDM Vol. 3A §10.4.6), also the x2APIC ID (§10.12.5.1): the processor's index.</summary>
    public uint Id => state.Id;

    /// <summary>The bus the APIC sends and receives interprocessor interrupts on; null until the machine joins its
    /// APICs (a lone APIC makes itself a bus of one at its first ICR write).</summary>
    public ApicBus? Bus { get; private set; }

    /// <summary>The processor the APIC belongs to (null for an APIC on its own, as the unit tests make).</summary>
    public Cpu? Owner { get; internal set; }

    internal void Join(ApicBus bus, uint id)
    {
        Bus = bus;
        state.Id = id;
    }

    /// <summary>IA32_APIC_BASE.EXTD of the owning processor (SDM Vol. 3A §10.12.1): the registers are MSRs, the page
    /// is not decoded.</summary>
    public bool X2ApicMode => Owner is { } cpu && (cpu.ApicBase & Cpu.ApicBaseExtended) != 0;

    /// <summary>The x2APIC logical ID (SDM Vol. 3A §10.12.10.2): the cluster (x2APIC ID bits 19:4) in bits 31:16 and
    /// one bit of 16 (x2APIC ID bits 3:0) in bits 15:0; read-only, derived from the ID.</summary>
    public uint X2ApicLogicalId => ((state.Id >> 4) << 16) | (1u << (int)(state.Id & 0xF));

    /// <summary>Interprocessor interrupts sent to other APICs.</summary>
    public long InterprocessorInterruptsSent => state.InterprocessorInterruptsSent;

    /// <summary>Interprocessor interrupts accepted from other APICs.</summary>
    public long InterprocessorInterruptsReceived => state.InterprocessorInterruptsReceived;

    internal void CountSent() => state.InterprocessorInterruptsSent++;

    internal void CountUndelivered() => state.UndeliveredCommands++;

    /// <summary>Whether a message for <paramref name="destination"/> reaches this APIC (SDM Vol. 3A §10.6.2): a
    /// physical destination by APIC ID, a logical one through the LDR in the DFR's model (flat: any common bit;
    /// cluster: the cluster in bits 7:4 and any common bit of 3:0) or, in x2APIC mode, through the derived logical ID;
    /// the all-ones destination reaches every APIC. A hardware-disabled APIC is off the bus.</summary>
    internal bool IsNamedBy(uint destination, bool logical, bool x2Apic)
    {
        if (state.HardwareDisabled)
        {
            return false;
        }
        if (x2Apic)
        {
            if (destination == 0xFFFF_FFFF)
            {
                return true;
            }
            if (!logical)
            {
                return destination == state.Id;
            }
            uint id = X2ApicLogicalId;
            return (destination >> 16) == (id >> 16) && (destination & id & 0xFFFF) != 0;
        }
        destination &= 0xFF;
        if (destination == 0xFF)
        {
            return true;
        }
        if (!logical)
        {
            return destination == (state.Id & 0xFF);
        }
        uint ldr = state.LogicalDestination >> 24;
        return (state.DestinationFormat >> 28) == 0xF
            ? (destination & ldr) != 0
            : (destination >> 4) == (ldr >> 4) && (destination & ldr & 0xF) != 0;
    }

    /// <summary>A message from the bus (or from this APIC's own ICR, <paramref name="fromSelf"/>): a fixed interrupt
    /// is requested in the IRR (refused while software-disabled, §10.4.7.2), an NMI waits for the CPU, INIT and
    /// start-up go to the processor (§8.4). False when it was not accepted.</summary>
    internal bool Receive(int mode, int vector, bool fromSelf)
    {
        if (state.HardwareDisabled)
        {
            return false; // off the bus (§10.4.3)
        }
        bool accepted;
        switch (mode)
        {
            case ApicBus.Fixed or ApicBus.LowestPriority:
                if (!SoftwareEnabled)
                {
                    state.Refused++;
                    return false;
                }
                state.Requests.Set(vector, true);
                state.TriggerMode.Set(vector, false);
                accepted = true;
                break;
            case ApicBus.NonMaskable:
                // The vector field is ignored; the CPU takes it through IDT entry 2 (§10.6.1, §6.7).
                state.NmiPending = true;
                accepted = true;
                break;
            case ApicBus.Init:
                // A processor cannot INIT itself in the middle of its own instruction; nor is the BSP's INIT modelled.
                accepted = !fromSelf && Owner is { } initialised && initialised.EnterWaitForStartup();
                break;
            case ApicBus.StartUp:
                accepted = !fromSelf && Owner is { } started && started.StartUp(vector);
                break;
            default:
                return false;
        }
        if (!accepted)
        {
            return false;
        }
        if (fromSelf)
        {
            state.SelfInterrupts++;
        }
        else
        {
            state.InterprocessorInterruptsReceived++;
        }
        Owner?.InterruptStateChanged();
        return true;
    }

    /// <summary>RDMSR of an x2APIC register (SDM Vol. 3A §10.12.1.2, Table 10-6): #GP outside x2APIC mode, for an
    /// MSR of the range that is no register, and for the write-only EOI and SELF IPI.</summary>
    internal ulong ReadMsr(uint index, long clock)
    {
        if (!X2ApicMode)
        {
            throw GuestFault.GeneralProtection();
        }
        return index switch
        {
            0x802 => state.Id,
            0x80D => X2ApicLogicalId,
            0x830 => ((ulong)state.CommandHigh << 32) | state.CommandLow,
            0x803 or 0x808 or 0x80A or 0x80F or (>= 0x810 and <= 0x828) or (>= 0x832 and <= 0x839) or 0x83E =>
                Read((index - 0x800) << 4, clock),
            _ => throw GuestFault.GeneralProtection(),
        };
    }

    /// <summary>WRMSR of an x2APIC register (SDM Vol. 3A §10.12.1.2): #GP outside x2APIC mode, for read-only and
    /// absent registers (the ID, version, PPR, LDR, ISR/TMR/IRR, current count; DFR and the ICR's high half are gone in
    /// x2APIC mode), for bits 63:32 set in any register but the ICR, for reserved ICR bits, for a non-zero EOI or ESR
    /// write and for SELF IPI bits 31:8 (§10.12.11). The ICR is one 64-bit register: destination in bits 63:32.</summary>
    internal void WriteMsr(uint index, ulong value, long clock)
    {
        // ICR bits 13, 17:16 and 31:20 are reserved in x2APIC mode (§10.12.9, Figure 10-28).
        const ulong icrReserved = (1UL << 13) | (3UL << 16) | (0xFFFUL << 20);
        if (!X2ApicMode || (index != 0x830 && (value >> 32) != 0))
        {
            throw GuestFault.GeneralProtection();
        }
        switch (index)
        {
            case 0x808 or 0x80F or (>= 0x832 and <= 0x838) or 0x83E:
                Write((index - 0x800) << 4, (uint)value, clock);
                break;
            case 0x80B when value == 0:
                EndOfInterrupt();
                break;
            case 0x828 when value == 0:
                break; // ESR: a write of 0 clears it; the model records no errors
            case 0x830 when (value & icrReserved) == 0:
                state.CommandHigh = (uint)(value >> 32);
                SendCommand((uint)value, x2Apic: true);
                break;
            case 0x83F when (value & ~0xFFUL) == 0:
                // SELF IPI: a fixed, edge-triggered interrupt to this APIC (§10.12.11).
                SendCommand((uint)value | (1u << 18), x2Apic: true);
                break;
            default:
                throw GuestFault.GeneralProtection();
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
        bool periodic = (state.LvtTimer & TimerModeField) == PeriodicMode;
        state.Deadline = periodic && state.Period > 0 ? Math.Max(state.Deadline + state.Period, clock + 1) : long.MaxValue;
        if (InTscDeadlineMode)
        {
            state.TscDeadline = 0; // fired: the MSR reads 0 (§10.5.4.1)
        }
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
        if (vector is < 16 or > 255 || !SoftwareEnabled || state.HardwareDisabled)
        {
            state.Refused++;
            return false;
        }
        state.ExternalRequests++;
        state.Requests.Set(vector, true);
        state.TriggerMode.Set(vector, levelTriggered);
        return true;
    }

    /// <summary>The processor takes its INTR pin (the 8259's output): LVT LINT0 unmasked in ExtINT delivery mode
    /// (111b, SDM Vol. 3A §10.5.1), or the APIC hardware-disabled, when INTR reaches the core directly (§10.4.3). A
    /// software-disabled APIC has every LVT entry masked (§10.4.7.2), so it passes nothing.</summary>
    public bool AcceptsExternalInterrupt =>
        state.HardwareDisabled || (state.LvtLint0 & (Masked | 0x700)) == 0x700;

    /// <summary>True when the APIC has an interrupt for the CPU: the highest requested vector's priority class is above
    /// the processor priority's (SDM Vol. 3A §10.8.3.1).</summary>
    public bool CanDeliver
    {
        get
        {
            int vector = state.Requests.Highest();
            return vector >= 0 && !state.HardwareDisabled && ((uint)vector & 0xF0) > (ProcessorPriority & 0xF0);
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
