using System.Runtime.CompilerServices;

namespace Nestor.Machine.Processor;

/// <summary>A 256-bit interrupt register of the local APIC (IRR, ISR or TMR: SDM Vol. 3A §10.8.4), bit n for vector
/// n, as four 64-bit words; a value, so that it copies with the state that holds it.</summary>
[InlineArray(4)]
public struct InterruptBitmap
{
    private ulong word;

    /// <summary>True when bit <paramref name="vector"/> is set.</summary>
    public readonly bool Get(int vector) => (this[vector >> 6] & (1UL << (vector & 63))) != 0;

    /// <summary>Sets or clears bit <paramref name="vector"/>.</summary>
    public void Set(int vector, bool value)
    {
        if (value)
        {
            this[vector >> 6] |= 1UL << (vector & 63);
        }
        else
        {
            this[vector >> 6] &= ~(1UL << (vector & 63));
        }
    }

    /// <summary>The highest vector whose bit is set, or -1.</summary>
    public readonly int Highest()
    {
        for (int w = 3; w >= 0; w--)
        {
            if (this[w] != 0)
            {
                return w * 64 + 63 - System.Numerics.BitOperations.LeadingZeroCount(this[w]);
            }
        }
        return -1;
    }

    /// <summary>The 32 bits the APIC's register page shows at register index <paramref name="index"/> (0–7).</summary>
    public readonly uint Register(int index) => (uint)(this[index >> 1] >> (32 * (index & 1)));
}

/// <summary>Everything a local APIC holds, as one value: the registers software programs, the interrupt request,
/// in-service and trigger-mode registers, the timer's deadline and period on the CPU's clock, and the counters. What
/// <see cref="LocalApic.Save"/> returns and <see cref="LocalApic.Restore"/> takes, so that the APIC can be part of a CPU
/// snapshot.</summary>
public struct LocalApicState
{
    /// <summary>Spurious-interrupt vector register (bit 8: APIC software enable; SDM Vol. 3A §10.9).</summary>
    public uint SpuriousVector;
    /// <summary>Task-priority register (§10.8.3.1); CR8 is its bits 7:4.</summary>
    public uint TaskPriority;
    /// <summary>LVT timer entry (§10.5.1): vector, mask (bit 16), mode (bits 18:17).</summary>
    public uint LvtTimer;
    public uint InitialCount;
    public uint DivideConfiguration;
    /// <summary>Clock ticks between two expiries of the timer.</summary>
    public long Period;
    /// <summary>The clock value at which the timer next fires, or <see cref="long.MaxValue"/>.</summary>
    public long Deadline;
    /// <summary>Interrupt request register: accepted, not yet delivered to the CPU.</summary>
    public InterruptBitmap Requests;
    /// <summary>In-service register: delivered, no EOI yet.</summary>
    public InterruptBitmap InService;
    /// <summary>Trigger-mode register: set for a level-triggered interrupt, whose EOI is broadcast to the I/O APIC.</summary>
    public InterruptBitmap TriggerMode;
    /// <summary>Timer interrupts raised.</summary>
    public long TimerInterrupts;
    /// <summary>Fixed interrupts accepted from outside the APIC (the I/O APIC).</summary>
    public long ExternalRequests;
    /// <summary>Interrupts refused: an illegal vector (0–15, SDM §10.5.3) or the APIC software-disabled.</summary>
    public long Refused;
    /// <summary>EOIs written.</summary>
    public long EndOfInterrupts;
    /// <summary>The other LVT entries (§10.5.1): thermal sensor, performance counter, LINT0, LINT1, error. Programmable
    /// and read back; nothing in the model raises them.</summary>
    public uint LvtThermal, LvtPerformance, LvtLint0, LvtLint1, LvtError;
    /// <summary>Logical destination register (§10.6.2.2, bits 31:24) and destination format register (bits 31:28).</summary>
    public uint LogicalDestination, DestinationFormat;
    /// <summary>The interrupt command register's high half (destination in bits 31:24) and low half as last written
    /// (§10.6.1).</summary>
    public uint CommandHigh, CommandLow;
    /// <summary>IA32_TSC_DEADLINE (§10.5.4.1): the TSC value at which the timer fires in TSC-deadline mode; 0 disarmed.</summary>
    public ulong TscDeadline;
    /// <summary>IA32_APIC_BASE.EN is clear (§10.4.3): the APIC is off, accepts nothing and raises nothing.</summary>
    public bool HardwareDisabled;
    /// <summary>An NMI (a self-IPI with delivery mode NMI, §10.6.1) waits for the CPU to take it.</summary>
    public bool NmiPending;
    /// <summary>Interrupts the APIC sent itself through the ICR (self-IPIs).</summary>
    public long SelfInterrupts;
    /// <summary>ICR writes the model does not carry out (SMI, a reserved delivery mode, an illegal vector, a destination
    /// no APIC matches, INIT or start-up to the bootstrap processor).</summary>
    public long UndeliveredCommands;
    /// <summary>The APIC ID (SDM Vol. 3A §10.4.6): the processor's index in the machine, set at power-up and kept by
    /// INIT and by a hardware disable; the x2APIC ID is the same value (§10.12.5.1).</summary>
    public uint Id;
    /// <summary>Interprocessor interrupts (fixed, lowest-priority, NMI, INIT, start-up) this APIC sent to another APIC.</summary>
    public long InterprocessorInterruptsSent;
    /// <summary>Interprocessor interrupts this APIC accepted from another APIC over the APIC bus.</summary>
    public long InterprocessorInterruptsReceived;

    /// <summary>The state at reset (SDM Vol. 3A §10.4.7.1): software-disabled, spurious vector 0xFF, every LVT entry
    /// masked, DFR all ones (the flat model).</summary>
    public static LocalApicState Reset => new()
    {
        SpuriousVector = 0xFF,
        LvtTimer = LocalApic.Masked,
        LvtThermal = LocalApic.Masked,
        LvtPerformance = LocalApic.Masked,
        LvtLint0 = LocalApic.Masked,
        LvtLint1 = LocalApic.Masked,
        LvtError = LocalApic.Masked,
        DestinationFormat = 0xFFFF_FFFF,
        Deadline = long.MaxValue,
    };
}
