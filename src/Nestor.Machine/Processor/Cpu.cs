using System.Runtime.CompilerServices;
using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

/// <summary>Nestor's x86-64 CPU model: an interpreter over Iced's decoder with a decoded-instruction cache per
/// physical page, executing through the <see cref="Mmu"/>. Guest exceptions are delivered through the guest's IDT
/// as the SDM describes (Vol. 3A §6.14); an exception during delivery becomes a double fault, and one during that a
/// triple fault (shutdown).</summary>
public sealed unsafe partial class Cpu
{
    // The architectural registers live in one value, so that saving and restoring them is a copy (SaveState,
    // LoadState). It is a field, not a property: `ref state.Rip` is an address in this object, and the ref-returning
    // accessors below inline to exactly the field accesses the interpreter made when these were fields of their own.
    // RFLAGS (with the lazy flags), the clock and the interrupt shadow stay in fields of their own (Cpu.Flags.cs and
    // below) and are copied in and out of the value by SaveState and LoadState.
    private CpuState state = CpuState.Reset;

    /// <summary>General-purpose registers in encoding order: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15.</summary>
    public ref GeneralRegisters Registers => ref state.Registers;
    public ref ulong Rip => ref state.Rip;
    public ref ulong Cr0 => ref state.Cr0;
    public ref ulong Cr2 => ref state.Cr2;
    public ref ulong Cr3 => ref state.Cr3;
    public ref ulong Cr4 => ref state.Cr4;
    public ref ulong Cr8 => ref state.Cr8;
    public ref ulong Efer => ref state.Efer;
    public ref Segment Cs => ref state.Cs;
    public ref Segment Ds => ref state.Ds;
    public ref Segment Es => ref state.Es;
    public ref Segment Fs => ref state.Fs;
    public ref Segment Gs => ref state.Gs;
    public ref Segment Ss => ref state.Ss;
    public ref Segment Tr => ref state.Tr;
    public ref Segment Ldtr => ref state.Ldtr;
    public ref ulong GdtBase => ref state.GdtBase;
    public ref ulong IdtBase => ref state.IdtBase;
    public ref ushort GdtLimit => ref state.GdtLimit;
    public ref ushort IdtLimit => ref state.IdtLimit;
    public ref ulong KernelGsBase => ref state.KernelGsBase;
    public ref ulong Star => ref state.Star;
    public ref ulong LongStar => ref state.LongStar;
    public ref ulong CompatibilityStar => ref state.CompatibilityStar;
    public ref ulong SyscallFlagMask => ref state.SyscallFlagMask;
    public ref ulong TscAux => ref state.TscAux;
    public ref ulong ApicBase => ref state.ApicBase;
    public ref ulong SysenterCs => ref state.SysenterCs;
    public ref ulong SysenterEsp => ref state.SysenterEsp;
    public ref ulong SysenterEip => ref state.SysenterEip;
    public ref ulong PageAttributeTable => ref state.PageAttributeTable;
    public ref ulong MiscEnable => ref state.MiscEnable;

    private const ulong Rflags_Reserved = 0x2;
    private const int Rax = 0, Rcx = 1, Rdx = 2, Rbx = 3, Rsp = 4, Rbp = 5, Rsi = 6, Rdi = 7;

    private readonly PhysicalMemory memory;
    private readonly IPlatform platform;
    private readonly Dictionary<ulong, DecodedPage> decodedPages = [];
    private byte[] codePages; // shared by the processors of one machine (Cpu.StartUp.cs)
    private readonly FetchReader fetchReader = new();
    private readonly Decoder decoder64;
    private readonly Decoder decoder32;
    private readonly Decoder decoder16;
    private ulong instructionStart;
    private int deliveryDepth;

    public Cpu(PhysicalMemory memory, IPlatform platform, MmuConfiguration mmuConfiguration, ulong highestPhysicalAddress)
    {
        this.memory = memory;
        this.platform = platform;
        Mmu = new Mmu(memory, mmuConfiguration);
        codePages = new byte[(highestPhysicalAddress >> 12) + 1];
        decoder64 = Decoder.Create(64, fetchReader);
        decoder32 = Decoder.Create(32, fetchReader);
        decoder16 = Decoder.Create(16, fetchReader);
        Apic.Owner = this;
    }

    public Mmu Mmu { get; }

    /// <summary>Which processor this is (<see cref="ProcessorModel.Intel"/> unless the VM says otherwise): the CPUID
    /// identity and the vendor's behaviours (SYSCALL/SYSRET outside 64-bit mode, SYSENTER in long mode). A field the
    /// few instructions that differ read, never a lookup.</summary>
    public ProcessorModel Model { get; set; } = ProcessorModel.Intel;

    public CpuCounters Counters { get; } = new();

    /// <summary>The code size: 64 in 64-bit mode (CS.L), 32 in 32-bit protected mode (CS.D), else 16.</summary>
    public int Bitness => Cs.LongMode && (Efer & Architecture.Efer.LongModeActive) != 0 ? 64 : (Cs.Attributes & 0x4000) != 0 ? 32 : 16;

    /// <summary>Bytes a CALL, RET or default PUSH moves: 8 in 64-bit mode, 4 in 32-bit mode.</summary>
    private int StackWidth => Bitness == 64 ? 8 : 4;

    /// <summary>The address of the instruction executing now: during <see cref="Run"/>, for a device or a VMM that
    /// wants to say which instruction reached it (<see cref="Rip"/> is already past it while it executes); after Run,
    /// the last one started.</summary>
    public ulong InstructionAddress => instructionStart;

    /// <summary>Current privilege level: CS.RPL in protected mode, 0 in real mode (SDM Vol. 3A §20.1: real-mode code
    /// runs with full privilege whatever the low bits of CS). IA-32e mode counts as protected whatever CR0.PE says,
    /// as machines set up from outside (tests, a VMM's boot state) may leave it clear.</summary>
    public int PrivilegeLevel => ((Cr0 & Architecture.Cr0.ProtectionEnable) | (Efer & Architecture.Efer.LongModeActive)) != 0 ? Cs.Selector & 3 : 0;

    /// <summary>Call after setting control registers or segments from outside (boot, state load).</summary>
    public void ControlStateChanged()
    {
        UpdatePagingControls();
        RevalidateTranslations();
    }

    /// <summary>The local APIC: its timer, and the fixed interrupts the platform's I/O APIC sends it
    /// (<see cref="RequestInterrupt"/>).</summary>
    public LocalApic Apic { get; } = new();

    /// <summary>What drives this processor's INTR pin (the 8259 pair, on the bootstrap processor), or null. Taken
    /// when <see cref="LocalApic.AcceptsExternalInterrupt"/> and the CPU accepts interrupts, its vector from the
    /// acknowledge cycle; after a change of its output call <see cref="InterruptStateChanged"/>.</summary>
    public IExternalInterruptController? ExternalInterrupts { get; set; }

    // INTR asserted and passed on by LINT0 (or a disabled APIC).
    private bool ExternalInterruptRequested =>
        ExternalInterrupts is { InterruptRequested: true } && Apic.AcceptsExternalInterrupt;

    /// <summary>The CPU's clock: retired instructions plus the time skipped while halted. The TSC and the APIC timer
    /// count it.</summary>
    public long Clock => Counters.InstructionsRetired + idleCycles;

    private long idleCycles;
    private long interruptShadowUntil = -1;

    /// <summary>Set by an engine running the VM under <c>--clock host</c>: the clock follows the host's time (moved
    /// forward whenever it falls behind: at each look at events, at most <see cref="HostTimeCheckInterval"/>
    /// instructions apart, and at each RDTSC). Null: one cycle per retired instruction plus idle time, the default,
    /// so that a run repeats.</summary>
    public HostTime? HostTime { get; set; }

    /// <summary>Cycles this CPU's clock moved forward to follow <see cref="HostTime"/> (beyond its instructions and
    /// its own idle time).</summary>
    public long HostTimeCycles { get; private set; }

    /// <summary>Under <see cref="HostTime"/>, the most instructions between two reads of the host clock (about a
    /// hundred microseconds of interpreted code; a read costs tens of nanoseconds).</summary>
    public const long HostTimeCheckInterval = 1000;

    // The clock falls behind the host's time at the interpreter's speed; this catches it up. Only under HostTime.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FollowHostTime()
    {
        long behind = HostTime!.Now - Clock;
        if (behind > 0)
        {
            idleCycles += behind;
            HostTimeCycles += behind;
        }
    }

    // The last Run ended in HLT with nothing to wake the CPU (part of the saved state: a restored CPU says so too).
    private bool halted;

    /// <summary>The last <see cref="Run"/> ended in HLT with no timer armed or interrupts off: the CPU stopped.</summary>
    public bool Halted => halted;

    // The retired-instruction count at which the run loop next looks at the timer and pending interrupts; one
    // compare per instruction instead of several. Reset to 0 whenever the APIC changes or the CPU idles.
    private long eventCheckAt;

    /// <summary>Executes up to <paramref name="budget"/> instructions.</summary>
    public StopReason Run(long budget)
    {
        if (state.WaitingForStartup)
        {
            return StopReason.Halted; // wait-for-SIPI: nothing runs until a start-up IPI (Cpu.StartUp.cs)
        }
        RevalidateTranslations(); // registers may have been set from outside since the last run
        DebugControlsChanged(); // so may DR7, CR4.DE and RFLAGS.RF
        if (HostTime is not null)
        {
            FollowHostTime(); // host time went on while the other vCPUs ran
            eventCheckAt = 0;
        }
        try
        {
            var stop = RunSlice(budget);
            halted = stop == StopReason.Halted;
            return stop;
        }
        finally
        {
            FoldFastHits(); // the fast paths' hits, counted locally, folded into the counters they model
        }
    }

    private StopReason RunSlice(long budget)
    {
        long end = Counters.InstructionsRetired + budget;
        while (Counters.InstructionsRetired < end)
        {
            // The try region is outside the hot loop so that the JIT can keep the loop's state in registers; a
            // guest fault unwinds to here, is delivered, and the loop resumes.
            try
            {
                if (RunUntilStop(end) is { } stop)
                {
                    return stop;
                }
            }
            catch (GuestFault fault)
            {
                Rip = instructionStart;
                ForgetDebugTraps(); // the instruction did not complete: its traps go with it
                if (HandleFault(fault, null) is { } stop)
                {
                    return stop;
                }
                if (pendingStop is { } emulated)
                {
                    // The VMM emulated an instruction that stops the CPU (HLT, a debug-exit OUT).
                    pendingStop = null;
                    if (emulated == StopReason.Halted && platform.StopRequested)
                    {
                        return StopReason.PlatformStop; // a stop asked for is taken at the halt, not after idling
                    }
                    if (!(emulated == StopReason.Halted && IdleUntilTimer()))
                    {
                        return emulated == StopReason.Halted && platform.StopRequested ? StopReason.PlatformStop : emulated;
                    }
                }
                if (platform.StopRequested)
                {
                    // A guest can fault forever without retiring anything (a handler whose first fetch faults again
                    // on a fresh IST stack), so the budget alone would never end the slice: look for a stop here.
                    return StopReason.PlatformStop;
                }
            }
            catch (NestedPageFault fault)
            {
                Rip = instructionStart;
                ForgetDebugTraps();
                if (HandleFault(null, fault) is { } stop)
                {
                    return stop;
                }
                if (platform.StopRequested)
                {
                    return StopReason.PlatformStop; // likewise: EPT violations retire nothing
                }
            }
            catch (VmmStop)
            {
                RevalidateTranslations();
                return StopReason.VmmStop;
            }
            catch (ShutdownRequested)
            {
                return StopReason.Shutdown;
            }
            catch (NotSupportedException)
            {
                // Something the model does not implement (virtual-8086 mode, a task switch): the run ends, with RIP at the
                // instruction that asked for it rather than past it, so that the final state and the message name it.
                Rip = instructionStart;
                throw;
            }
        }
        return StopReason.Budget;
    }

    private StopReason? RunUntilStop(long end)
    {
        while (Counters.InstructionsRetired < end)
        {
            if (Counters.InstructionsRetired >= eventCheckAt && HandleEvents() is { } shutdown)
            {
                return shutdown;
            }
            instructionStart = Rip;
            singleStepTrap = rflags & FlagBits.Trap; // TF is never held lazily (Cpu.Flags.cs: status flags only)
            if (debugBoundary != 0)
            {
                InstructionBreakpointCheck(); // RF, or an armed instruction breakpoint (Cpu.Debug.cs)
            }
            ref DecodedInstruction instruction = ref Fetch(Rip);
            StopReason? stop = null;
            if (instruction.Operation != FastOperation.General)
            {
                ExecuteFast(ref instruction);
            }
            else
            {
                stop = Execute(in instruction.Instruction);
                RevalidateTranslations(); // it may have changed CS, EFER, RFLAGS.AC or the TLBs
                if (stop is not null && instruction.Class == (byte)InstructionClass.String && stringSuspension != StringSuspension.None)
                {
                    if (stringSuspension == StringSuspension.DebugTrap)
                    {
                        // A data breakpoint in an iteration: the #DB comes after it, RIP at the instruction (Cpu.Debug.cs).
                        stringSuspension = StringSuspension.None;
                        if (StringDebugTrap() is { } ended)
                        {
                            return ended;
                        }
                        continue;
                    }
                    // A repeated string instruction suspended between iterations (SDM Vol. 2B REP): RIP is still at
                    // it and RCX, RSI, RDI say how far it got; it is not retired, and resumes when executed again.
                    if (TakeStringSuspension() is { } suspended)
                    {
                        return suspended;
                    }
                    continue; // an interrupt is due: the top of the loop delivers it, with the REP as the saved RIP
                }
            }
            Counters.InstructionsRetired++;
            Counters.RetiredByClass[instruction.Class]++;
            if (translating && instruction.Class == (byte)InstructionClass.ControlTransfer && PrivilegeLevel == 0)
            {
                CountTranslatedBranch(in instruction.Instruction);
            }
            if ((singleStepTrap | debugTraps) != 0)
            {
                stop = DebugTrap(stop); // single-step, data and I/O breakpoints, MOV SS blocking (Cpu.Debug.cs)
            }
            if (stop is { } s)
            {
                if (s == StopReason.Halted && platform.StopRequested)
                {
                    // A stop asked for (a service VM's notify, a timeout) is taken at the halt, as at a port write,
                    // rather than after idling from timer tick to timer tick to the end of the slice.
                    return StopReason.PlatformStop;
                }
                if (s == StopReason.Halted && IdleUntilTimer())
                {
                    continue;
                }
                // Idling from device event to device event ends at a stop request (a timeout), which wins.
                return s == StopReason.Halted && platform.StopRequested ? StopReason.PlatformStop : s;
            }
        }
        return null;
    }

    // Nonzero when the instruction being executed must be followed by a single-step #DB: RFLAGS.TF as it began
    // (SDM Vol. 3B §17.3.1.4: the trap follows an instruction that began with TF set, so not the one that sets it),
    // overridden by the few instructions whose rule differs: MOV SS/POP SS (inhibited, Vol. 3A §6.8.3), INT n/INT3/
    // INTO/INT1 (the handler is entered with TF clear and no trap, as QEMU does), SYSCALL and SYSRET (the TF they
    // leave decides, as QEMU's TCG rechecks TF after them and as Linux's entry code relies on: a SYSRET that restores
    // TF traps at once in user mode). Set and read once per instruction; no state beyond the instruction.
    private ulong singleStepTrap;

    /// <summary>HLT with interrupts on: an interrupt the APIC can deliver wakes the CPU at once; otherwise, with the
    /// APIC timer or a platform device's timer armed (<see cref="IPlatform.NextDeviceEvent"/>), it idles until the
    /// earlier fires (true; a device event that brings no deliverable interrupt, e.g. to a masked I/O APIC pin, idles
    /// on to the next one, until a stop is requested); otherwise the CPU halts for good (SDM Vol. 3A §8.10.2: HLT is
    /// left by an enabled interrupt).</summary>
    /// <summary>Set by an engine that runs several vCPUs of a VM on one thread: the latest clock of this vCPU's
    /// siblings. A halted vCPU idles to a platform device's timer event only up to there (null: alone, it idles on to
    /// every event, since nothing else can wake it). Without the bound a halted application processor facing a
    /// device timer that interrupts nobody (the firmware's PIT behind masked 8259 and I/O APIC pins) would idle on
    /// forever, one period at a time, while its siblings wait.</summary>
    public Func<long>? IdleHorizon { get; set; }

    /// <summary>A halted processor's clock moves to <paramref name="clock"/> as idle time (an engine idling all of
    /// a VM's halted vCPUs to the next device event, when none can run); nothing else changes.</summary>
    public void IdleUntil(long clock)
    {
        if (halted && clock > Clock)
        {
            idleCycles += clock - Clock;
        }
        HostTime?.SkipTo(clock);
    }

    private bool IdleUntilTimer()
    {
        if (HostTime is not null)
        {
            FollowHostTime(); // halted since its last look: its deadlines are compared with the host's time now
        }
        while (true)
        {
            if (Apic.NonMaskableInterruptPending && !state.NmiBlocked)
            {
                eventCheckAt = 0; // an NMI wakes HLT whatever IF says
                return true;
            }
            if ((Rflags & FlagBits.Interrupt) == 0)
            {
                return false;
            }
            if (Apic.CanDeliver || (ExternalInterruptRequested && nonRoot is null))
            {
                eventCheckAt = 0;
                return true;
            }
            long device = platform.NextDeviceEvent;
            if (device < Apic.Deadline && !platform.StopRequested)
            {
                if (IdleHorizon is { } horizon && device > horizon())
                {
                    // One of several vCPUs: a sibling may wake it (an IPI) before that event, and the platform's
                    // time is the siblings' too, so it halts here; the siblings' run fires the event, or the
                    // engine idles every halted vCPU to it when none can run (IdleUntil).
                    return false;
                }
                idleCycles += Math.Max(0, device - Clock);
                if (IdleHorizon is null)
                {
                    HostTime?.SkipTo(Clock); // alone: the VM's time skips with it
                }
                platform.AdvanceDevices();
                continue;
            }
            if (Apic.Deadline == long.MaxValue)
            {
                return false;
            }
            idleCycles += Math.Max(0, Apic.Deadline - Clock);
            if (IdleHorizon is null)
            {
                HostTime?.SkipTo(Clock);
            }
            eventCheckAt = 0;
            return true;
        }
    }

    /// <summary>A fixed interrupt for this CPU's local APIC from outside (an I/O APIC message, SDM Vol. 3A §10.8.1):
    /// requested in the APIC's IRR, and the run loop looks at it before the next instruction. False when the APIC
    /// refused it (illegal vector, software-disabled).</summary>
    public bool RequestInterrupt(int vector, bool levelTriggered)
    {
        bool accepted = Apic.RequestInterrupt(vector, levelTriggered);
        eventCheckAt = 0;
        return accepted;
    }

    /// <summary>Call after changing the APIC's or the interrupt controls' state from outside (a restored
    /// <see cref="LocalApicState"/>, a VMM's interrupt-window request): the run loop looks at its events again before
    /// the next instruction.</summary>
    public void InterruptStateChanged() => eventCheckAt = 0;

    /// <summary>True while an STI has blocked interrupts until the next instruction completes (the SDM's "blocking by
    /// STI", Vol. 3C §25.4.2 interruptibility state).</summary>
    public bool InterruptShadow => Counters.InstructionsRetired <= interruptShadowUntil;

    /// <summary>The guest accepts an interrupt now: RFLAGS.IF set and no STI shadow (SDM Vol. 3A §6.8.1).</summary>
    public bool InterruptWindowOpen => (Rflags & FlagBits.Interrupt) != 0 && !InterruptShadow;

    /// <summary>Advances the APIC timer and delivers a pending interrupt if the CPU accepts one now (SDM Vol. 3A
    /// §6.8.1: between instructions, with RFLAGS.IF set, outside an STI shadow), then decides when to look again.
    /// In VMX non-root operation with external-interrupt or interrupt-window exiting the VMM decides instead.</summary>
    private StopReason? HandleEvents()
    {
        if (yieldRequested)
        {
            yieldRequested = false;
            return StopReason.Budget; // this processor sent another an IPI: its slice ends (Cpu.StartUp.cs)
        }
        if (HostTime is not null)
        {
            FollowHostTime();
        }
        if (Clock >= Apic.Deadline)
        {
            Apic.Tick(Clock);
        }
        if (Apic.NonMaskableInterruptPending && !state.NmiBlocked && nonRoot is null && !InterruptShadow)
        {
            // An NMI is taken whatever RFLAGS.IF says, through IDT entry 2, and blocks further NMIs until the next
            // IRET (SDM Vol. 3A §6.7.1).
            Apic.TakeNonMaskableInterrupt();
            state.NmiBlocked = true;
            if (DeliverExternalInterrupt((int)ExceptionVector.NonMaskableInterrupt) is { } shutdown)
            {
                return shutdown;
            }
        }
        if (nonRoot is { } controls && (controls.ExternalInterruptExiting || controls.InterruptWindowExiting))
        {
            if (InterruptExit(controls) is { } stop)
            {
                return stop;
            }
        }
        else if (InterruptDeliverable)
        {
            // Delivered through the IDT with the current RIP saved, as a hardware interrupt (no gate privilege check).
            if (DeliverExternalInterrupt(Apic.Accept()) is { } shutdown)
            {
                return shutdown;
            }
        }
        else if (nonRoot is null && ExternalInterruptRequested && (Rflags & FlagBits.Interrupt) != 0 && !InterruptShadow)
        {
            // INTR through LINT0 in ExtINT mode: the vector is the 8259's, read in the acknowledge cycle; it does not
            // pass through the IRR, the ISR or the PPR (SDM Vol. 3A §10.5.1). Under a VMM the line is not delivered.
            if (DeliverExternalInterrupt(ExternalInterrupts!.Acknowledge()) is { } shutdown)
            {
                return shutdown;
            }
        }
        eventCheckAt = Apic.PendingVector >= 0 || Apic.NonMaskableInterruptPending || nonRoot is { InterruptWindowExiting: true }
                || ExternalInterruptRequested
            ? Counters.InstructionsRetired + 1                  // waiting for IF, the shadow, the TPR or an EOI: look each time
            : Apic.Deadline == long.MaxValue ? long.MaxValue : Apic.Deadline - idleCycles;
        if (HostTime is not null)
        {
            eventCheckAt = Math.Min(eventCheckAt, Counters.InstructionsRetired + HostTimeCheckInterval); // host time moves on its own
        }
        return null;
    }

    /// <summary>Delivers <paramref name="vector"/> as an external interrupt at the current RIP; Shutdown on a triple fault.</summary>
    private StopReason? DeliverExternalInterrupt(int vector)
    {
        Counters.ExternalInterrupts++;
        instructionStart = Rip; // the interrupted instruction, should the delivery fault
        bool delivered = DeliverInterrupt(vector);
        RevalidateTranslations();
        return delivered ? null : StopReason.Shutdown;
    }

    /// <summary>The APIC has an interrupt to give and the CPU accepts one now (RFLAGS.IF set, outside an STI shadow).</summary>
    private bool InterruptDeliverable =>
        Apic.CanDeliver && (Rflags & FlagBits.Interrupt) != 0 && Counters.InstructionsRetired > interruptShadowUntil;

    // ---- Fetch and the decoded-instruction cache ------------------------------------------------------------

    /// <summary>The instructions decoded from one physical page as seen at one linear page. Iced resolves branch
    /// targets and RIP-relative operands to absolute addresses, so a page mapped at two linear addresses gets one
    /// DecodedPage per alias, chained through <see cref="Alias"/>.</summary>
    private sealed class DecodedPage(ulong physicalPage, ulong linearPage, int bitness, ulong codeBase)
    {
        public readonly ulong PhysicalPage = physicalPage;
        public readonly ulong LinearPage = linearPage;
        public readonly int Bitness = bitness;
        /// <summary>CS's base when decoded (0 in 64-bit mode): Iced resolves branch targets as offsets from it, so the
        /// same linear page under another CS base is another decode.</summary>
        public readonly ulong CodeBase = codeBase;
        public DecodedPage? Alias;
        public readonly short[] Slots = new short[4096];
        public DecodedInstruction[] Instructions = new DecodedInstruction[32];
        public int Count;
        /// <summary>In the cache (false once evicted or dropped by a write).</summary>
        public bool Resident = true;
        /// <summary>Its place in <see cref="residentOrder"/>.</summary>
        public int Order;
        /// <summary>The fetch translation array's entry that last held it (Cpu.TranslationCaches.cs), or -1.</summary>
        public int FetchIndex = -1;
    }

    // The decoded-instruction cache is bounded, so that a guest cannot grow the host process without limit (issue
    // 10, item 6). A decoded page costs an 8 KiB slot table (one per physical page and linear alias executed, however
    // few instructions it holds) and 80 bytes per DecodedInstruction; every byte offset can start an instruction, so
    // one page can hold 4,096 of them (320 KiB), and a physical page mapped at many linear addresses gets a decoded
    // page per alias: neither RAM size nor the number of physical pages bounded it. Measured, peak RSS of `nestor run
    // --flat GUEST --timeout 10` before / after the bounds: a 48 MiB straight line of NOPs looping back (every
    // instruction new, 36 M decoded) 3.7 GB and growing / 310 MB; random user-mode code behind an IDT that resumes
    // at a random spot after every fault and a 200-instruction APIC timer 336 / 256 MB (5 s of it left 6,539 pages,
    // 72 MiB, live); the same over 16 physical pages mapped at every 4 KiB of a 64 GiB linear window (each fault a new
    // alias) 349 MB, 646 MB at 30 s, / 130 MB. NestorOS's whole workload keeps fewer than 50 pages and 6,000
    // instructions decoded. The bounds: at most MaxAliases linear aliases per physical page (a new alias evicts the
    // oldest), and at most MaxResidentPages pages and MaxResidentInstructions instruction slots in all, evicted
    // oldest first in whole pages down to three quarters so that eviction is rare: at most 32 MiB of slot tables and
    // 40 MiB of instructions live. Eviction is not a correctness event: the page is decoded again when next fetched.
    /// <summary>Linear aliases of one physical page the decoded-instruction cache keeps.</summary>
    public const int MaxAliases = 8;

    /// <summary>Decoded pages the cache keeps in all.</summary>
    public const int MaxResidentPages = 4096;

    /// <summary>Instruction slots the cache's pages hold in all (80 bytes each).</summary>
    public const long MaxResidentInstructions = 512 * 1024;

    /// <summary>Decoded pages (one per physical page and linear alias) in the decoded-instruction cache now.</summary>
    public int ResidentDecodedPages => residentPages;

    /// <summary>Instruction slots (allocated, used or not) of the resident decoded pages.</summary>
    public long ResidentInstructionSlots => residentInstructions;

    // Resident pages in the order they were decoded (a ring; a page leaving the cache leaves the ring too, so that
    // nothing keeps its arrays alive: keeping them cost 1.1 GB in 5 s of the straight line above): eviction takes the
    // oldest.
    private readonly DecodedPage?[] residentOrder = new DecodedPage?[MaxResidentPages];
    private int residentNext;
    private int residentPages;
    private long residentInstructions; // the Instructions arrays' capacity summed over resident pages

    private sealed class FetchReader : CodeReader
    {
        public readonly byte[] Buffer = new byte[16];
        public int Position;
        public int Length;

        public override int ReadByte() => Position < Length ? Buffer[Position++] : -1;
    }

    // An instruction that crosses a page is decoded each time (it depends on two pages), into this slot of its own.
    private readonly DecodedInstruction[] scratch = new DecodedInstruction[1];

    // The fetch fast path: while RIP is on a page of the fetch translation array (Cpu.TranslationCaches.cs), with the
    // same privilege and no TLB change since (Mmu.Generation), the translation and the decoded page are reused, as
    // long as the ITLB still holds the entry they came from; the ITLB hit it stands for is counted and updates the
    // ITLB's LRU order. Privilege, mode and TLB changes only come from the general path, from exception and interrupt
    // delivery and from outside the CPU; each is followed by RevalidateTranslations, so the per-instruction check is
    // one compare of the tag and one of the ITLB slot's fill stamp.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref DecodedInstruction Fetch(ulong rip)
    {
        ulong ripPage = rip >> 12;
        ref var entry = ref EntryOf(fetchTranslations, ripPage);
        if (entry.Tag == (ripPage | fetchEpoch))
        {
            var page = entry.Page!;
            int slot = page.Slots[rip & 0xFFF];
            if (slot > 0 && Mmu.InstructionTlb.TryUse(entry.Slot, entry.Filled))
            {
                fastFetches++; // translations and ITLB hits, folded into the MMU's counters when Run returns
                fastFetchHits += entry.Counted;
                return ref page.Instructions[slot - 1];
            }
        }
        return ref FetchSlow(rip);
    }

    private ref DecodedInstruction FetchSlow(ulong rip)
    {
        int bitness = Bitness;
        // Outside 64-bit mode RIP is an offset in CS (SDM Vol. 3A §3.4.2): the fetch is at CS.base + IP, in a 32-bit
        // linear space. The fetch fast path keys on the IP's page, which names one linear page only while CS's
        // base is a multiple of the page size (real-mode bases are multiples of 16): otherwise every fetch comes here.
        ulong codeBase = bitness == 64 ? 0 : Cs.Base;
        ulong linear = bitness == 64 ? rip : (uint)(rip + codeBase);
        if ((ulong)((long)(linear << 16) >> 16) != linear)
        {
            throw GuestFault.GeneralProtection(); // a non-canonical RIP (SDM Vol. 3A §6.15, #GP)
        }
        if (Mmu.Translate(linear, AccessKind.Execute, PrivilegeLevel == 3, false, out ulong physical) is { } error)
        {
            throw new GuestFault(ExceptionVector.PageFault, (uint)error, true, linear);
        }
        int tlbSlot = Mmu.LastSlot;
        ulong tlbFilled = Mmu.LastFilled;
        ulong page = physical >> 12;
        decodedPages.TryGetValue(page, out DecodedPage? decoded);
        while (decoded is not null && (decoded.LinearPage != linear >> 12 || decoded.Bitness != bitness || decoded.CodeBase != codeBase))
        {
            decoded = decoded.Alias;
        }
        int offset = (int)(physical & 0xFFF);
        if (decoded is not null)
        {
            if ((codeBase & 0xFFF) == 0)
            {
                CacheFetch(rip >> 12, decoded, tlbSlot, tlbFilled);
            }
            if (decoded.Slots[offset] > 0)
            {
                return ref decoded.Instructions[decoded.Slots[offset] - 1];
            }
        }
        return ref DecodeSlow(rip, linear, codeBase, physical, page, offset);
    }

    private ref DecodedInstruction DecodeSlow(ulong rip, ulong linear, ulong codeBase, ulong physical, ulong page, int offset)
    {
        int first = Math.Min(15, 4096 - offset);
        byte* p = memory.Pointer(physical, first);
        if (p == null)
        {
            // Executing from a device (no RAM behind the address): the model cannot fetch there.
            throw new GuestFault(ExceptionVector.MachineCheck);
        }
        new ReadOnlySpan<byte>(p, first).CopyTo(fetchReader.Buffer);
        int length = first;
        if (first < 15)
        {
            // The instruction may continue on the next page, translated on its own.
            ulong nextLinear = (linear & ~0xFFFUL) + 0x1000;
            if (Mmu.Translate(nextLinear, AccessKind.Execute, PrivilegeLevel == 3, false, out ulong nextPhysical) is null)
            {
                byte* q = memory.Pointer(nextPhysical, 15 - first);
                if (q != null)
                {
                    new ReadOnlySpan<byte>(q, 15 - first).CopyTo(fetchReader.Buffer.AsSpan(first));
                    length = 15;
                }
            }
        }
        fetchReader.Position = 0;
        fetchReader.Length = length;
        int bits = Bitness;
        var decoder = bits == 64 ? decoder64 : bits == 32 ? decoder32 : decoder16;
        decoder.IP = rip;
        decoder.Decode(out Instruction instruction);
        Counters.DecodedInstructions++;
        if (translating && PrivilegeLevel == 0)
        {
            CountTranslation(in instruction);
        }
        if (instruction.IsInvalid)
        {
            if (decoder.LastError == DecoderError.NoMoreBytes && length < 15)
            {
                // The rest of the instruction is on a page that is not mapped.
                ulong nextLinear = (linear & ~0xFFFUL) + 0x1000;
                var error = Mmu.Translate(nextLinear, AccessKind.Execute, PrivilegeLevel == 3, false, out _) ?? PageFaultError.None;
                throw new GuestFault(ExceptionVector.PageFault, (uint)error, true, nextLinear);
            }
            throw GuestFault.InvalidOpcode();
        }
        if (offset + instruction.Length > 4096)
        {
            // Crosses a page: not cached (it depends on two pages' contents).
            scratch[0] = DecodedInstruction.Compile(instruction, bits);
            return ref scratch[0];
        }
        if (residentPages >= MaxResidentPages || residentInstructions >= MaxResidentInstructions)
        {
            EvictOldest();
        }
        decodedPages.TryGetValue(page, out var chain);
        var decoded = chain;
        int aliases = 0;
        while (decoded is not null && (decoded.LinearPage != linear >> 12 || decoded.Bitness != bits || decoded.CodeBase != codeBase))
        {
            decoded = decoded.Alias;
            aliases++;
        }
        if (decoded is null)
        {
            if (aliases >= MaxAliases)
            {
                // New aliases go first in the chain: the last is the oldest.
                var oldest = chain!;
                while (oldest.Alias is not null)
                {
                    oldest = oldest.Alias;
                }
                Evict(oldest);
                decodedPages.TryGetValue(page, out chain);
            }
            decoded = new DecodedPage(page, linear >> 12, bits, codeBase) { Alias = chain };
            decodedPages[page] = decoded;
            if (page < (ulong)codePages.Length)
            {
                codePages[page] = 1;
            }
            ForgetCodePageWrites(page); // the page may be cached for writes: writes to it must now be seen
            if (siblings is not null)
            {
                SiblingsDecoded(page); // by the other processors too
            }
            if (residentOrder[residentNext] is { } displaced)
            {
                Evict(displaced); // the ring is full of resident pages: this is the oldest
            }
            residentOrder[residentNext] = decoded;
            decoded.Order = residentNext;
            residentNext = (residentNext + 1) % MaxResidentPages;
            residentPages++;
            residentInstructions += decoded.Instructions.Length;
        }
        if (decoded.Count == decoded.Instructions.Length)
        {
            Array.Resize(ref decoded.Instructions, decoded.Count * 2);
            residentInstructions += decoded.Count;
        }
        decoded.Instructions[decoded.Count] = DecodedInstruction.Compile(instruction, bits);
        decoded.Slots[offset] = (short)(decoded.Count + 1);
        decoded.Count++;
        if (restoredCallouts is not null)
        {
            ApplyRestoredCallout(rip, ref decoded.Instructions[decoded.Count - 1]);
        }
        return ref decoded.Instructions[decoded.Count - 1];
    }

    /// <summary>Something other than this CPU wrote machine-physical memory at <paramref name="address"/> (a device's
    /// DMA): the decoded instructions of the written pages go, as for a write by the CPU itself (cross-modifying code;
    /// Intel SDM Vol. 3A §9.1.3 asks software to serialize, which the next fetch's decode is here).</summary>
    /// <param name="address">The address as this CPU's memory sees it: host-physical under a VMM, the guest-physical
    /// address when the guest runs natively.</param>
    public void PhysicalMemoryWritten(Addresses.HostPhysical address, int length)
    {
        if (length <= 0)
        {
            return;
        }
        ulong last = address.Value + (ulong)length - 1;
        for (ulong page = address.Value & ~0xFFFUL; page <= last && page >= (address.Value & ~0xFFFUL); page += 0x1000)
        {
            CodeWritten(page);
        }
    }

    /// <summary>A write to a page holding decoded instructions drops them (self-modifying code).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CodeWritten(ulong physical)
    {
        ulong page = physical >> 12;
        if (page < (ulong)codePages.Length && codePages[page] != 0)
        {
            codePages[page] = 0;
            if (siblings is not null)
            {
                SiblingsCodeWritten(page);
            }
            if (decodedPages.Remove(page, out var chain)) // every alias of the page
            {
                for (var alias = chain; alias is not null; alias = alias.Alias)
                {
                    Release(alias);
                }
            }
            if (translating)
            {
                ringCompression!.PagesInvalidated++;
            }
            Counters.DecodeCacheInvalidations++;
        }
    }

    /// <summary>Makes room: evicts the oldest resident pages until a quarter of either bound is free.</summary>
    private void EvictOldest()
    {
        int cursor = residentNext;
        for (int n = 0; n < MaxResidentPages &&
             (residentPages > MaxResidentPages * 3 / 4 || residentInstructions > MaxResidentInstructions * 3 / 4); n++)
        {
            if (residentOrder[cursor] is { } page)
            {
                Evict(page);
            }
            cursor = (cursor + 1) % MaxResidentPages;
        }
    }

    /// <summary>Drops one decoded page (one alias) from the cache, as a write to it would, and every fast-path
    /// reference to it.</summary>
    private void Evict(DecodedPage victim)
    {
        ulong page = victim.PhysicalPage;
        if (decodedPages.TryGetValue(page, out var head))
        {
            if (head == victim)
            {
                if (victim.Alias is null)
                {
                    decodedPages.Remove(page);
                    if (page < (ulong)codePages.Length && siblings is null)
                    {
                        codePages[page] = 0; // no decoded code left on it: writes need not look any more (shared: others may have)
                    }
                }
                else
                {
                    decodedPages[page] = victim.Alias;
                }
            }
            else
            {
                var previous = head;
                while (previous.Alias is not null && previous.Alias != victim)
                {
                    previous = previous.Alias;
                }
                if (previous.Alias == victim)
                {
                    previous.Alias = victim.Alias;
                }
            }
        }
        Release(victim);
        Counters.DecodeCacheEvictions++;
        if (translating)
        {
            ringCompression!.PagesInvalidated++; // its translations (and callout marks) are gone with it
        }
    }

    /// <summary>Bookkeeping of a page leaving the cache; the fetch fast path forgets it.</summary>
    private void Release(DecodedPage page)
    {
        if (!page.Resident)
        {
            return;
        }
        page.Resident = false;
        residentOrder[page.Order] = null; // nothing may keep a page that left, or its arrays, alive
        residentPages--;
        residentInstructions -= page.Instructions.Length;
        ForgetFetch(page);
    }

    // ---- Memory ---------------------------------------------------------------------------------------------

    private ulong Translate(ulong linear, AccessKind kind)
    {
        if (writeOverride && kind == AccessKind.Write && (linear >> 12) == writeOverrideLinearPage)
        {
            return writeOverrideHostPage | (linear & 0xFFF);
        }
        if ((ulong)((long)(linear << 16) >> 16) != linear)
        {
            // A non-canonical linear address is #GP(0) (SDM Vol. 3A §3.3.7.1; #SS for stack references, which the
            // model does not tell apart). Only the slow path gets here: the fast paths hold canonical pages only.
            throw GuestFault.GeneralProtection();
        }
        bool user = PrivilegeLevel == 3;
        if (Mmu.Translate(linear, kind, user, (rflags & FlagBits.AlignmentCheck) != 0, out ulong physical) is { } error)
        {
            throw new GuestFault(ExceptionVector.PageFault, (uint)error, true, linear);
        }
        return physical;
    }

    // Data fast paths, one for reads and one for writes: the host addresses of recently translated pages, in arrays
    // valid while the MMU generation, the privilege level and RFLAGS.AC are unchanged (Cpu.TranslationCaches.cs), each
    // entry while the DTLB still holds the entry it came from. Pages holding decoded code are never cached for writes,
    // so self-modifying code is always seen (CodeWritten); counted as the TLB hits they model.

    /// <summary>Reads <paramref name="size"/> bytes (1, 2, 4, 8) at a linear address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong ReadLinear(ulong linear, int size)
    {
        ref var entry = ref EntryOf(readTranslations, linear >> 12);
        if (entry.Tag == ((linear >> 12) | readEpoch) && ((linear & 0xFFF) + (ulong)size) <= 0x1000 &&
            Mmu.DataTlb.TryUse(entry.Slot, entry.Filled))
        {
            fastReads++;
            fastReadHits += entry.Counted;
            byte* p = entry.Host + (linear & 0xFFF);
            return size switch
            {
                1 => *p,
                2 => Unsafe.ReadUnaligned<ushort>(p),
                4 => Unsafe.ReadUnaligned<uint>(p),
                _ => Unsafe.ReadUnaligned<ulong>(p),
            };
        }
        return ReadLinearSlow(linear, size);
    }

    private ulong ReadLinearSlow(ulong linear, int size)
    {
        Counters.MemoryReads++;
        slowDataAccesses++;
        if (watchingData)
        {
            MatchDataBreakpoints(linear, size, write: false); // only while DR7 arms one: the fast path is off then
        }
        if (((linear & 0xFFF) + (ulong)size) > 0x1000)
        {
            ulong value = 0;
            for (int i = 0; i < size; i++)
            {
                value |= ReadLinear(linear + (ulong)i, 1) << (8 * i);
            }
            Counters.MemoryReads -= size;
            return value;
        }
        ulong physical = Translate(linear, AccessKind.Read);
        byte* p = memory.Pointer(physical, size);
        if (p == null)
        {
            ulong device = physical & ~(PhysicalMemory.DeviceWindow | PhysicalMemory.AssignedWindow);
            if ((physical & PhysicalMemory.AssignedWindow) != 0)
            {
                return platform.DirectDeviceRead(device, size); // an assigned device's registers: no exit
            }
            return IsApic(device) ? Apic.Read((uint)(device & 0xFFF), Clock) : platform.MmioRead(device, size);
        }
        byte* pageHost = memory.Pointer(physical & ~0xFFFUL, 0x1000);
        if (pageHost != null)
        {
            CacheRead(linear, pageHost, physical);
        }
        return size switch
        {
            1 => *p,
            2 => Unsafe.ReadUnaligned<ushort>(p),
            4 => Unsafe.ReadUnaligned<uint>(p),
            _ => Unsafe.ReadUnaligned<ulong>(p),
        };
    }

    /// <summary>Writes the low <paramref name="size"/> bytes of <paramref name="value"/> at a linear address.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WriteLinear(ulong linear, int size, ulong value)
    {
        ref var entry = ref EntryOf(writeTranslations, linear >> 12);
        if (entry.Tag == ((linear >> 12) | writeEpoch) && ((linear & 0xFFF) + (ulong)size) <= 0x1000 &&
            Mmu.DataTlb.TryUse(entry.Slot, entry.Filled))
        {
            fastWrites++;
            fastWriteHits += entry.Counted;
            Store(entry.Host + (linear & 0xFFF), size, value);
            return;
        }
        WriteLinearSlow(linear, size, value);
    }

    private void WriteLinearSlow(ulong linear, int size, ulong value)
    {
        Counters.MemoryWrites++;
        slowDataAccesses++;
        if (watchingData)
        {
            MatchDataBreakpoints(linear, size, write: true);
        }
        if (((linear & 0xFFF) + (ulong)size) > 0x1000)
        {
            // Translate both pages before writing anything, so a fault leaves memory untouched.
            Translate(linear, AccessKind.Write);
            Translate(linear + (ulong)size - 1, AccessKind.Write);
            for (int i = 0; i < size; i++)
            {
                WriteLinear(linear + (ulong)i, 1, value >> (8 * i));
            }
            Counters.MemoryWrites -= size;
            return;
        }
        ulong physical = Translate(linear, AccessKind.Write);
        byte* p = memory.Pointer(physical, size);
        if (p == null)
        {
            ulong device = physical & ~(PhysicalMemory.DeviceWindow | PhysicalMemory.AssignedWindow);
            if ((physical & PhysicalMemory.AssignedWindow) != 0)
            {
                platform.DirectDeviceWrite(device, size, value); // an assigned device's registers: no exit
            }
            else if (IsApic(device))
            {
                Apic.Write((uint)(device & 0xFFF), (uint)value, Clock);
                eventCheckAt = 0; // the timer or the in-service interrupt may have changed
            }
            else
            {
                platform.MmioWrite(device, size, value);
            }
            return;
        }
        CodeWritten(physical);
        ulong page = physical >> 12;
        byte* pageHost = memory.Pointer(physical & ~0xFFFUL, 0x1000);
        if (pageHost != null && !writeOverride && (page >= (ulong)codePages.Length || codePages[page] == 0))
        {
            CacheWrite(linear, pageHost, physical);
        }
        Store(p, size, value);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(byte* p, int size, ulong value)
    {
        switch (size)
        {
            case 1: *p = (byte)value; break;
            case 2: Unsafe.WriteUnaligned(p, (ushort)value); break;
            case 4: Unsafe.WriteUnaligned(p, (uint)value); break;
            default: Unsafe.WriteUnaligned(p, value); break;
        }
    }

    /// <summary>The APIC's page, while IA32_APIC_BASE enables it (bit 11) in xAPIC mode (in x2APIC mode, EXTD, the
    /// registers are MSRs and the page is not decoded: SDM Vol. 3A §10.12.1.2).</summary>
    private bool IsApic(ulong physical) => (ApicBase & (ApicBaseEnable | ApicBaseExtended)) == ApicBaseEnable && (physical & ~0xFFFUL) == (ApicBase & ~0xFFFUL);

    private void UpdatePagingControls()
    {
        Mmu.SetControlRegisters(new PagingControls(
            Paging: (Cr0 & Architecture.Cr0.Paging) != 0,
            LongMode: (Efer & Architecture.Efer.LongModeActive) != 0,
            WriteProtect: (Cr0 & Architecture.Cr0.WriteProtect) != 0,
            NoExecute: (Efer & Architecture.Efer.NoExecuteEnable) != 0,
            GlobalPages: (Cr4 & Architecture.Cr4.PageGlobalEnable) != 0,
            ProcessContextIdentifiers: (Cr4 & Architecture.Cr4.ProcessContextIdentifiers) != 0,
            SupervisorExecutionPrevention: (Cr4 & Architecture.Cr4.SupervisorExecutionPrevention) != 0,
            SupervisorAccessPrevention: (Cr4 & Architecture.Cr4.SupervisorAccessPrevention) != 0,
            Cr3: Cr3));
    }

    /// <summary>The time-stamp counter: the clock, one tick per retired instruction (plus idle time), so that runs
    /// are reproducible; under <see cref="HostTime"/> brought up to the host's time first, so that successive reads
    /// see host time pass.</summary>
    private ulong Tsc
    {
        get
        {
            if (HostTime is not null)
            {
                FollowHostTime();
            }
            return (ulong)Clock;
        }
    }
}
