namespace Nestor.Machine.Processor;

// Several processors on one memory (issue 18): the multiprocessor start-up of Intel SDM Vol. 3A §8.4 (INIT puts an
// application processor in the wait-for-SIPI state, a start-up IPI starts it in real mode at vector << 12), and the
// coherence of the decoded-instruction caches of processors that share memory: a write by one processor to a page
// another has decoded drops the other's decoded copies, as a write drops the writer's own (cross-modifying code,
// §8.1.3: the SDM asks software to serialize the executing processor, which the next fetch's fresh decode is here).
public sealed partial class Cpu
{
    /// <summary>IA32_APIC_BASE bits (SDM Vol. 3A §10.4.4, §10.12.1): BSP (8), EXTD (10, x2APIC mode), EN (11).</summary>
    public const ulong ApicBaseBootstrap = 1UL << 8, ApicBaseExtended = 1UL << 10, ApicBaseEnable = 1UL << 11;

    // The other processors on this memory (null for one processor): their decoded instructions are dropped with this
    // processor's when a page is written, and they share codePages, so that any processor's write to a page any of
    // them decoded takes the slow path that drops them.
    private Cpu[]? siblings;

    /// <summary>Makes <paramref name="cpus"/> the processors of one machine on one physical memory: they share the
    /// record of which pages hold decoded instructions, and a write by any of them (or a device's, through
    /// <see cref="PhysicalMemoryWritten"/> on any of them) drops every processor's decoded copies of the page. Call
    /// before the first <see cref="Run"/>.</summary>
    public static void ShareMemory(IReadOnlyList<Cpu> cpus)
    {
        if (cpus.Count < 2)
        {
            return;
        }
        var shared = cpus[0].codePages;
        foreach (var cpu in cpus)
        {
            if (cpu.memory != cpus[0].memory || cpu.codePages.Length != shared.Length)
            {
                throw new ArgumentException("the processors of one machine must share one physical memory", nameof(cpus));
            }
            cpu.DropDecodedInstructions();
            cpu.codePages = shared;
            cpu.siblings = [.. cpus.Where(c => c != cpu)];
        }
        Array.Clear(shared);
    }

    /// <summary>A page was decoded: the others may hold it in their write fast path, which must now see writes to it.</summary>
    private void SiblingsDecoded(ulong page)
    {
        foreach (var other in siblings!)
        {
            other.ForgetCodePageWrites(page);
        }
    }

    /// <summary>A page with decoded instructions was written: every other processor drops what it decoded from it.</summary>
    private void SiblingsCodeWritten(ulong page)
    {
        foreach (var other in siblings!)
        {
            if (other.decodedPages.Remove(page, out var chain))
            {
                for (var alias = chain; alias is not null; alias = alias.Alias)
                {
                    other.Release(alias); // and from its fetch fast path
                }
                other.Counters.DecodeCacheInvalidations++;
            }
        }
    }

    // Set when this processor sent another an interprocessor interrupt: Run returns Budget before the next instruction,
    // so that an engine interleaving processors lets the target react now rather than after the sender's whole slice
    // (a sender typically spins until the target answers: kvm-unit-tests' on_cpu). Folded into the event check, so
    // that the hot loop pays nothing for it.
    private bool yieldRequested;

    /// <summary>Ends the current <see cref="Run"/> before the next instruction (it returns
    /// <see cref="StopReason.Budget"/>): the processor sent another an IPI.</summary>
    internal void YieldSlice()
    {
        if (siblings is not null)
        {
            yieldRequested = true;
            eventCheckAt = 0;
        }
    }

    /// <summary>Whether running the processor now makes progress (for an engine that interleaves several): not while
    /// it waits for a start-up IPI, nor while halted unless an NMI or an interrupt it accepts now (RFLAGS.IF set, a
    /// class above the processor priority) is pending, which ends the halt (SDM Vol. 3A §8.10.2; run again, it takes
    /// the interrupt with the instruction after HLT as its return address).</summary>
    public bool Runnable => !state.WaitingForStartup &&
        (!halted || (Apic.NonMaskableInterruptPending && !state.NmiBlocked) || (Apic.CanDeliver && (Rflags & FlagBits.Interrupt) != 0));

    /// <summary>The processor is in the wait-for-SIPI state (SDM Vol. 3A §8.4.1): it executes nothing until a
    /// start-up IPI (<see cref="StartUp"/>).</summary>
    public bool WaitingForStartup => state.WaitingForStartup;

    /// <summary>INIT (SDM Vol. 3A §8.4.1, §9.1.1 Table 9-1): an application processor takes the INIT state (real
    /// mode, CR0 0x60000010, the reset vector's CS, the APIC in its reset state with its ID kept) and waits for a
    /// start-up IPI. The BSP would run the firmware at the reset vector, which the machine has not: false, nothing
    /// changes. Its clock and counters go on.</summary>
    public bool EnterWaitForStartup()
    {
        if ((ApicBase & ApicBaseBootstrap) != 0)
        {
            return false;
        }
        var apic = Apic.Save();
        var reset = InitState(apic, Model);
        reset.InstructionsRetired = Counters.InstructionsRetired;
        reset.IdleCycles = idleCycles;
        LoadState(in reset);
        return true;
    }

    /// <summary>The state of an application processor after power-up or INIT (SDM Vol. 3A Table 9-1): real mode at
    /// the reset vector (CS 0xF000, base 0xFFFF0000, IP 0xFFF0), every other segment at 0 with a 64 KiB limit,
    /// CR0 0x60000010 (CD, NW, ET), EDX the processor signature (<paramref name="model"/>'s, Intel's by default), IA32_APIC_BASE at 0xFEE00000 enabled without BSP,
    /// the APIC at reset but for its ID and counters, waiting for a start-up IPI.</summary>
    public static CpuState InitState(in LocalApicState apic, ProcessorModel? model = null)
    {
        var s = CpuState.Reset;
        s.Cr0 = 0x6000_0010;
        s.Rip = 0xFFF0;
        s.Cs = new Segment { Selector = 0xF000, Base = 0xFFFF_0000, Limit = 0xFFFF, Attributes = 0x9B };
        var data = new Segment { Limit = 0xFFFF, Attributes = 0x93 };
        (s.Ds, s.Es, s.Fs, s.Gs, s.Ss) = (data, data, data, data, data);
        s.Ldtr = new Segment { Limit = 0xFFFF, Attributes = 0x82 };
        s.Tr = new Segment { Limit = 0xFFFF, Attributes = 0x8B };
        (s.GdtLimit, s.IdtLimit) = (0xFFFF, 0xFFFF);
        s.Registers[Rdx] = (model ?? ProcessorModel.Intel).Signature;
        s.ApicBase = LocalApic.DefaultBase | ApicBaseEnable;
        var reset = LocalApicState.Reset;
        reset.Id = apic.Id;
        reset.TimerInterrupts = apic.TimerInterrupts;
        reset.ExternalRequests = apic.ExternalRequests;
        reset.Refused = apic.Refused;
        reset.EndOfInterrupts = apic.EndOfInterrupts;
        reset.SelfInterrupts = apic.SelfInterrupts;
        reset.UndeliveredCommands = apic.UndeliveredCommands;
        reset.InterprocessorInterruptsSent = apic.InterprocessorInterruptsSent;
        reset.InterprocessorInterruptsReceived = apic.InterprocessorInterruptsReceived;
        s.Apic = reset;
        s.WaitingForStartup = true;
        return s;
    }

    /// <summary>A start-up IPI (SDM Vol. 3A §8.4.3, §10.6.1): a processor waiting for one starts in real mode at
    /// CS = vector &lt;&lt; 8 (base vector &lt;&lt; 12), IP = 0. A processor not waiting ignores it (the second SIPI of
    /// the INIT-SIPI-SIPI sequence, once the first has started it): false.</summary>
    public bool StartUp(int vector)
    {
        if (!state.WaitingForStartup)
        {
            return false;
        }
        state.WaitingForStartup = false;
        halted = false;
        Cs = new Segment { Selector = (ushort)(vector << 8), Base = (ulong)vector << 12, Limit = 0xFFFF, Attributes = 0x9B };
        Rip = 0;
        eventCheckAt = 0;
        RevalidateTranslations();
        return true;
    }
}
