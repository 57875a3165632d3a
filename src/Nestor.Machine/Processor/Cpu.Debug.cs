using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

// The debug architecture (Intel SDM Vol. 3B ch. 17): the debug registers DR0–DR3, DR6 and DR7 (§17.2), the
// breakpoints they arm and the debug exceptions they raise (§17.3): instruction breakpoints, faults before the
// instruction (§17.3.1.1) held off for one instruction by RFLAGS.RF; data and I/O breakpoints, traps after the
// accessing instruction (§17.3.1.2), after the iteration for a repeated string instruction; general detect (§17.3.1.3);
// single-step (§17.3.1.4); and the MOV SS / POP SS blocking that holds a debug trap past the next instruction
// (Vol. 3A §6.8.3).
//
// What costs what. Nothing armed costs one test per instruction before it (debugBoundary: an armed instruction
// breakpoint or RF set) and the single-step test after it, which already existed and now also looks at debugTraps.
// Data breakpoints cost nothing per memory access while none is armed: the read and write fast paths
// (Cpu.TranslationCaches) stay as they are, and the check sits on the slow path only. While DR7 arms a data
// breakpoint (decided when DR7 or CR4 is written, never per access) the fast paths stop caching data translations, so
// every access takes the slow path, which matches it against DR0–DR3.
public sealed partial class Cpu
{
    /// <summary>DR6.B0–B3 (bits 0–3): which breakpoint conditions were met (SDM Vol. 3B §17.2.3).</summary>
    private const ulong DebugStatusBreakpoints = 0xF;

    /// <summary>DR6.BD, bit 13: the #DB was a general-detect fault (the next instruction accesses a debug register).</summary>
    private const ulong DebugStatusGeneralDetect = 1UL << 13;

    /// <summary>DR6.BS, bit 14: the #DB was a single-step trap (SDM Vol. 3B §17.2.3).</summary>
    private const ulong DebugStatusSingleStep = 1UL << 14;

    /// <summary>DR7.GD, bit 13: general detect enable.</summary>
    private const ulong DebugControlGeneralDetect = 1UL << 13;

    // debugTraps: the debug traps of the instruction executing now, in DR6's layout (B0–B3 from data and I/O
    // breakpoints; BS for a single-step held by MOV SS), with two marks of the model's own. MovSsBlocking: this
    // instruction loaded SS with MOV or POP (§6.8.3), so its traps wait until after the next one. HeldTraps: the bits
    // were held so by the previous instruction and are delivered, with this one's, after it completes (the VMCS
    // calls them "pending debug exceptions", Vol. 3C §25.4.2). Only HeldTraps outlives an instruction: it is saved in
    // CpuState.PendingDebugExceptions.
    private ulong debugTraps;
    private const ulong MovSsBlocking = 1UL << 32, HeldTraps = 1UL << 33;

    // Nonzero when the instruction about to start needs the debug check before it: RF set (held off breakpoints for
    // this one instruction), or an instruction breakpoint armed. Recomputed by DebugControlsChanged.
    private ulong debugBoundary;

    // The breakpoints DR7 arms, by kind, as B0–B3 masks (decided when DR7 or CR4.DE changes).
    private ulong instructionBreakpoints, dataBreakpoints, ioBreakpoints;

    /// <summary>A data breakpoint is armed: the data fast paths are off and every access is matched.</summary>
    private bool watchingData;

    // Data accesses that took the slow path (a test's view of whether the fast paths served a loop; the counters the
    // fast paths fold in are the same either way, by design).
    private long slowDataAccesses;

    /// <summary>Data reads and writes that went through the slow path since the CPU was made.</summary>
    internal long SlowDataAccesses => slowDataAccesses;

    /// <summary>Recomputes which breakpoints DR7 arms (L or G set; R/W 00 execute, 01 write, 11 read or write, 10 I/O
    /// with CR4.DE, SDM Vol. 3B §17.2.4–17.2.5) and whether the next instruction needs the debug check; drops the data
    /// fast paths' translations when a data breakpoint becomes armed, so that every access is seen.</summary>
    private void DebugControlsChanged()
    {
        ulong dr7 = state.Dr7;
        ulong instruction = 0, data = 0, io = 0;
        for (int n = 0; n < 4; n++)
        {
            if (((dr7 >> (2 * n)) & 3) == 0)
            {
                continue;
            }
            switch ((dr7 >> (16 + 4 * n)) & 3)
            {
                case 0: instruction |= 1UL << n; break;
                case 2:
                    // R/W = 10 is an I/O breakpoint with CR4.DE, undefined without (§17.2.4): nothing then.
                    if ((Cr4 & Architecture.Cr4.DebuggingExtensions) != 0)
                    {
                        io |= 1UL << n;
                    }
                    break;
                default: data |= 1UL << n; break;
            }
        }
        instructionBreakpoints = instruction;
        dataBreakpoints = data;
        ioBreakpoints = io;
        bool watch = data != 0;
        if (watch && !watchingData)
        {
            watchingData = true;
            DropReadTranslations();
            DropWriteTranslations();
        }
        watchingData = watch;
        debugBoundary = instruction | (rflags & FlagBits.Resume);
    }

    /// <summary>Before an instruction, when <see cref="debugBoundary"/> says so: RF set holds instruction breakpoints off
    /// for this one instruction and is cleared (the SDM clears it when the instruction completes, §17.3.1.1; clearing
    /// it before is the same but for IRET, which loads RF anew, and faults, whose delivery sets RF in the saved RFLAGS
    /// anyway); else an enabled instruction breakpoint at this instruction's linear address is a #DB fault, DR6.B0–B3
    /// naming the breakpoints that matched and the saved RFLAGS.RF clear (the handler sets it to go on, §17.3.1.1).</summary>
    private void InstructionBreakpointCheck()
    {
        if ((rflags & FlagBits.Resume) != 0)
        {
            rflags &= ~FlagBits.Resume;
            debugBoundary = instructionBreakpoints;
            return;
        }
        ulong linear = Bitness == 64 ? Rip : (uint)(Rip + Cs.Base);
        ulong hits = 0;
        for (int n = 0; n < 4; n++)
        {
            if ((instructionBreakpoints & (1UL << n)) != 0 && BreakpointAddress(n) == linear)
            {
                hits |= 1UL << n;
            }
        }
        if (hits != 0)
        {
            state.Dr6 = (state.Dr6 & ~DebugStatusBreakpoints) | hits;
            throw new GuestFault(ExceptionVector.Debug);
        }
    }

    private ulong BreakpointAddress(int n) => n switch
    {
        0 => state.Dr0,
        1 => state.Dr1,
        2 => state.Dr2,
        _ => state.Dr3,
    };

    /// <summary>The bytes a breakpoint covers: DR7.LENn 00 → 1, 01 → 2, 11 → 4, 10 → 8 (SDM Vol. 3B §17.2.5).</summary>
    private int BreakpointLength(int n) => ((state.Dr7 >> (18 + 4 * n)) & 3) switch
    {
        0 => 1,
        1 => 2,
        3 => 4,
        _ => 8,
    };

    /// <summary>A data access on the slow path while a data breakpoint is armed: a breakpoint whose range (its address
    /// with the low bits its length covers ignored, §17.2.5: "aligned") overlaps the accessed bytes and whose R/W
    /// matches (01 writes, 11 reads and writes) records its B bit for the trap after the instruction. Event delivery's
    /// own pushes are not matched.</summary>
    private void MatchDataBreakpoints(ulong linear, int size, bool write)
    {
        if (deliveryDepth != 0)
        {
            return;
        }
        for (int n = 0; n < 4; n++)
        {
            if ((dataBreakpoints & (1UL << n)) == 0 || (!write && ((state.Dr7 >> (16 + 4 * n)) & 3) == 1))
            {
                continue;
            }
            ulong length = (ulong)BreakpointLength(n);
            ulong start = BreakpointAddress(n) & ~(length - 1);
            if (linear < start + length && start < linear + (ulong)size)
            {
                debugTraps |= 1UL << n;
            }
        }
    }

    /// <summary>IN, OUT, INS, OUTS while an I/O breakpoint is armed (CR4.DE, R/W = 10): a breakpoint whose port range
    /// overlaps the accessed ports records its B bit for the trap after the instruction (SDM Vol. 3B §17.2.4).</summary>
    private void MatchIoBreakpoints(ushort port, int size)
    {
        if (ioBreakpoints == 0)
        {
            return;
        }
        for (int n = 0; n < 4; n++)
        {
            if ((ioBreakpoints & (1UL << n)) == 0)
            {
                continue;
            }
            ulong length = (ulong)BreakpointLength(n);
            ulong start = (BreakpointAddress(n) & 0xFFFF) & ~(length - 1);
            if (port < start + length && start < (ulong)port + (ulong)size)
            {
                debugTraps |= 1UL << n;
            }
        }
    }

    /// <summary>After an instruction completed with a debug trap due (single-step, a data or I/O breakpoint, or traps
    /// held by the previous instruction's MOV SS): if this instruction loaded SS, its traps are held until after the
    /// next (SDM Vol. 3A §6.8.3; a second MOV SS in a row does not hold again); else one #DB is delivered with RIP at the
    /// next instruction, ahead of NMIs and external interrupts (Vol. 3A §6.9, priority 4), DR6.B0–B3 replaced by the
    /// breakpoints that matched when any did and BS set for a single step: the processor clears no other DR6 bit
    /// (§17.2.3, software does). Delivery clears TF, so the handler is not stepped. Returns the instruction's own stop,
    /// unless the delivery ends the run or the instruction was HLT, which the #DB ends.</summary>
    private StopReason? DebugTrap(StopReason? stop)
    {
        ulong status = (debugTraps & (DebugStatusBreakpoints | DebugStatusSingleStep)) |
                       (singleStepTrap != 0 ? DebugStatusSingleStep : 0);
        bool hold = (debugTraps & (MovSsBlocking | HeldTraps)) == MovSsBlocking;
        singleStepTrap = 0;
        if (hold)
        {
            debugTraps = status | HeldTraps;
            return stop;
        }
        debugTraps = 0;
        if (status == 0)
        {
            return stop;
        }
        return DeliverDebugTrap(status) ?? (stop == StopReason.Halted ? null : stop);
    }

    /// <summary>Records <paramref name="status"/> in DR6 and delivers the trap-like #DB at the current RIP.</summary>
    private StopReason? DeliverDebugTrap(ulong status)
    {
        if ((status & DebugStatusBreakpoints) != 0)
        {
            state.Dr6 = (state.Dr6 & ~DebugStatusBreakpoints) | (status & DebugStatusBreakpoints);
        }
        state.Dr6 |= status & DebugStatusSingleStep;
        instructionStart = Rip; // a fault while delivering it is taken at the next instruction
        return HandleFault(new GuestFault(ExceptionVector.Debug), null);
    }

    /// <summary>A repeated string instruction met a data breakpoint: the trap comes after the iteration, with RIP still
    /// at the instruction and RCX, RSI, RDI saying how far it got (SDM Vol. 3B §17.3.1.2), so that it goes on when the
    /// handler returns.</summary>
    private StopReason? StringDebugTrap()
    {
        ulong status = debugTraps & DebugStatusBreakpoints;
        debugTraps &= ~DebugStatusBreakpoints;
        return DeliverDebugTrap(status);
    }

    /// <summary>An instruction did not complete (a fault, an EPT violation): its breakpoint hits go with it, and so do
    /// traps a MOV SS held (the exception delivered stands for them, as for ICEBP).</summary>
    private void ForgetDebugTraps()
    {
        debugTraps = 0;
        singleStepTrap = 0;
    }

    /// <summary>MOV SS and POP SS (SDM Vol. 3A §6.8.3): interrupts and debug traps are inhibited until the instruction
    /// boundary after the next instruction, so that MOV SS; MOV RSP is never split.</summary>
    private void StackSegmentLoaded()
    {
        debugTraps |= MovSsBlocking;
        interruptShadowUntil = Counters.InstructionsRetired + 1;
    }

    /// <summary>MOV to or from DR0–DR7 (SDM Vol. 2B "MOV—Move to/from Debug Registers", Vol. 3B §17.2): #GP(0) above
    /// CPL 0; DR4 and DR5 are DR6 and DR7 unless CR4.DE makes them #UD; with DR7.GD set the access is a #DB fault
    /// that clears GD and sets DR6.BD; a write of DR6 or DR7 with bits 63:32 set is #GP(0). DR6 and DR7 keep their
    /// fixed bits. Outside 64-bit mode the operand is 32 bits (the mod field is ignored: 0F 21 00 is MOV EAX, DR0).
    /// A write of DR7 or of a breakpoint address re-arms the breakpoints.</summary>
    private StopReason? MoveDebugRegister(in Instruction i)
    {
        RequirePrivilege0();
        bool toDebug = i.GetOpRegister(0).IsDR();
        var debug = toDebug ? i.GetOpRegister(0) : i.GetOpRegister(1);
        int n = debug - Register.DR0;
        if (n is 4 or 5)
        {
            if ((Cr4 & Architecture.Cr4.DebuggingExtensions) != 0)
            {
                throw GuestFault.InvalidOpcode();
            }
            n += 2;
        }
        if (n > 7)
        {
            throw GuestFault.InvalidOpcode(); // DR8–DR15 do not exist
        }
        if ((state.Dr7 & DebugControlGeneralDetect) != 0)
        {
            // A fault (§17.3.1.3): RIP stays at the MOV, which runs when the handler returns, GD now clear.
            state.Dr7 &= ~DebugControlGeneralDetect;
            state.Dr6 |= DebugStatusGeneralDetect;
            throw new GuestFault(ExceptionVector.Debug);
        }
        if (nonRoot is { MovDrExiting: true } &&
            ExitOnInstruction(ExitReason.DebugRegisterAccess, DebugRegisterQualification(debug - Register.DR0, !toDebug,
                toDebug ? i.GetOpRegister(1) : i.GetOpRegister(0)), i))
        {
            return null;
        }
        ref ulong register = ref DebugRegister(n);
        if (!toDebug)
        {
            WriteRegister(i.GetOpRegister(0), register);
            return null;
        }
        ulong value = ReadRegister(i.GetOpRegister(1));
        if (n >= 6 && (value >> 32) != 0)
        {
            throw GuestFault.GeneralProtection();
        }
        register = n switch
        {
            6 => (value & 0xE00F) | CpuState.DebugStatusFixed,
            7 => (value & 0xFFFF_23FF) | CpuState.DebugControlFixed,
            _ => Bitness == 64 ? value : (uint)value,
        };
        if (n == 7)
        {
            DebugControlsChanged();
        }
        return null;
    }

    /// <summary>Exit qualification of MOV DR (SDM Vol. 3C Table 28-4): bits 2:0 the debug register as encoded (4 and 5
    /// as such), bit 4 the direction (0 to the debug register, 1 from it), bits 11:8 the general-purpose register.</summary>
    private static ulong DebugRegisterQualification(int debugRegister, bool fromDebugRegister, Register general)
    {
        int gpr = general >= Register.RAX && general <= Register.R15 ? general - Register.RAX
            : general >= Register.EAX && general <= Register.R15D ? general - Register.EAX : 0;
        return (uint)debugRegister | (fromDebugRegister ? 1UL << 4 : 0) | ((uint)gpr << 8);
    }

    private ref ulong DebugRegister(int n)
    {
        switch (n)
        {
            case 0: return ref state.Dr0;
            case 1: return ref state.Dr1;
            case 2: return ref state.Dr2;
            case 3: return ref state.Dr3;
            case 6: return ref state.Dr6;
            default: return ref state.Dr7;
        }
    }
}
