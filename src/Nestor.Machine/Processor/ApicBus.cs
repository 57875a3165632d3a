namespace Nestor.Machine.Processor;

/// <summary>The system bus between the local APICs of one machine (Intel SDM Vol. 3A §10.6, "Issuing Interprocessor
/// Interrupts"; on P6 and later the messages go over the system bus, §10.1): what an APIC's ICR sends, and what the
/// I/O APIC sends, reaches the APICs its destination names. APIC <c>n</c> belongs to processor <c>n</c>, whose APIC ID
/// (and x2APIC ID, §10.12.5.1) is <c>n</c>.
/// <para>Destinations (§10.6.2): physical (an APIC ID; 0xFF, or 0xFFFFFFFF in x2APIC mode, is every APIC); logical in
/// the flat or the cluster model of the receiver's DFR, by its LDR (§10.6.2.2), and in x2APIC mode by the logical ID
/// derived from the x2APIC ID (§10.12.10.2: cluster in bits 31:16, one bit of 16 in bits 15:0); and the shorthands
/// self, all including self, all excluding self. Delivery modes (§10.6.1): fixed; lowest priority, which the model
/// delivers as fixed to the lowest-numbered APIC among those named (the SDM leaves the choice among equal priorities to
/// the chipset, and the model keeps no arbitration priority); NMI; INIT, which puts an application processor in the
/// wait-for-SIPI state (§8.4.1); start-up, which starts a processor waiting for it at <c>vector &lt;&lt; 12</c> in real
/// mode (§8.4.3). SMI and the reserved modes are counted and dropped; so are INIT to the bootstrap processor (there is
/// no firmware at the reset vector to run) and INIT "level de-assert" (§10.6.1: it only synchronises arbitration IDs).
/// A message is accepted at once, so the ICR's delivery status always reads idle.</para>
/// <para>A machine with one processor need not make a bus: a lone APIC delivers its ICR's messages to itself as a bus of
/// one (<see cref="LocalApic"/>).</para></summary>
public sealed class ApicBus
{
    private readonly LocalApic[] apics;

    /// <summary>Joins the APICs of <paramref name="cpus"/> (in order: APIC ID = index) on one bus.</summary>
    public ApicBus(IReadOnlyList<Cpu> cpus)
    {
        ArgumentOutOfRangeException.ThrowIfZero(cpus.Count);
        apics = new LocalApic[cpus.Count];
        for (int i = 0; i < cpus.Count; i++)
        {
            apics[i] = cpus[i].Apic;
            apics[i].Join(this, (uint)i);
        }
    }

    internal ApicBus(LocalApic alone) => apics = [alone];

    /// <summary>The APICs on the bus, by APIC ID.</summary>
    public IReadOnlyList<LocalApic> Apics => apics;

    /// <summary>Messages sent over the bus that no APIC accepted (no APIC named, or each refused it).</summary>
    public long Undeliverable { get; private set; }

    /// <summary>ICR delivery modes (SDM Vol. 3A §10.6.1, bits 10:8).</summary>
    internal const int Fixed = 0, LowestPriority = 1, SystemManagement = 2, NonMaskable = 4, Init = 5, StartUp = 6;

    /// <summary>An ICR write of <paramref name="source"/>: the low half's delivery mode, vector, destination mode and
    /// shorthand, to <paramref name="destination"/> (8 bits in xAPIC mode, 32 in x2APIC mode).</summary>
    internal void Send(LocalApic source, uint command, uint destination, bool x2Apic)
    {
        int mode = (int)((command >> 8) & 7), vector = (int)(command & 0xFF);
        uint shorthand = (command >> 18) & 3;
        bool logical = (command & (1u << 11)) != 0;
        if (mode == Init && (command & (1u << 14)) == 0 && (command & (1u << 15)) != 0)
        {
            // INIT level de-assert: only synchronises the arbitration IDs (§10.6.1), which the model has not.
            return;
        }
        if (mode is SystemManagement or 3 or 7 || (mode is Fixed or LowestPriority && vector < 16))
        {
            // SMI (no SMM in the model), a reserved mode, or an illegal vector (§10.5.3: a send-accept error).
            source.CountUndelivered();
            return;
        }
        bool delivered = false;
        for (int i = 0; i < apics.Length; i++)
        {
            var target = apics[i];
            bool named = shorthand switch
            {
                1 => target == source,
                2 => true,
                3 => target != source,
                _ => target.IsNamedBy(destination, logical, x2Apic),
            };
            if (!named)
            {
                continue;
            }
            if (target != source)
            {
                source.CountSent();
            }
            bool accepted = target.Receive(mode, vector, fromSelf: target == source);
            if (accepted && target != source)
            {
                source.Owner?.YieldSlice(); // the target reacts now, not after the sender's slice
            }
            delivered |= accepted;
            if (mode == LowestPriority && delivered)
            {
                break; // to one APIC: the lowest-numbered one named that accepts it
            }
        }
        if (!delivered)
        {
            Undeliverable++;
            source.CountUndelivered();
        }
    }

    /// <summary>An I/O APIC message (SDM Vol. 3A §10.6.2, the redirection entry's destination field and mode, 82093AA
    /// datasheet §3.2.4): a fixed or lowest-priority interrupt to the APICs <paramref name="destination"/> names,
    /// physically or logically. True when an APIC accepted it.</summary>
    public bool DeliverExternal(uint destination, bool logical, bool lowestPriority, int vector, bool levelTriggered)
    {
        bool accepted = false;
        for (int i = 0; i < apics.Length; i++)
        {
            var target = apics[i];
            if (!target.IsNamedBy(destination, logical, target.X2ApicMode))
            {
                continue;
            }
            accepted |= target.Owner is { } cpu ? cpu.RequestInterrupt(vector, levelTriggered) : target.RequestInterrupt(vector, levelTriggered);
            if (lowestPriority && accepted)
            {
                break;
            }
        }
        if (!accepted)
        {
            Undeliverable++;
        }
        return accepted;
    }
}
