using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

// Branches, calls, returns, interrupts and the fast system-call pair (SDM Vol. 2: JMP, Jcc, CALL, RET, IRET, INT n,
// SYSCALL, SYSRET).
public sealed partial class Cpu
{
    private StopReason? ControlTransfer(in Instruction i)
    {
        if (Bitness != 64 && LegacyControlTransfer(i, out var legacy))
        {
            return legacy; // operand sizes of 16 and 32 bits, SS's base, real mode (Cpu.RealMode)
        }
        switch (i.Mnemonic)
        {
            case Mnemonic.Jmp:
                if (IsFar(i))
                {
                    // JMP ptr16:32 or m16:32/m16:64: load CS from the GDT; a code segment with L = 1 enters 64-bit
                    // mode when IA32_EFER.LMA is set (SDM Vol. 3A §9.8.5, step 6).
                    var (selector, offset, _) = FarPointer(i);
                    Cs = FarCodeSegment(selector);
                    Rip = offset;
                    return null;
                }
                Rip = BranchTarget(i);
                return null;
            case Mnemonic.Call:
                {
                    if (IsFar(i))
                    {
                        // CALL ptr16:32 or m16:32/m16:64 to a code segment of the same privilege (SDM Vol. 2A CALL,
                        // "far call to the same privilege level"): push CS and the return offset at the operand
                        // size, then load CS:rIP. The target is checked before anything is pushed.
                        var (selector, offset, width) = FarPointer(i);
                        var code = FarCodeSegment(selector);
                        ulong rsp = Registers[Rsp];
                        WriteLinear(rsp - (ulong)width, width, Cs.Selector);
                        WriteLinear(rsp - 2 * (ulong)width, width, Rip);
                        Registers[Rsp] = rsp - 2 * (ulong)width;
                        Cs = code;
                        Rip = offset;
                        return null;
                    }
                    ulong target = BranchTarget(i);
                    Push(Rip);
                    Rip = target;
                    return null;
                }
            case Mnemonic.Ret:
                {
                    ulong target = Pop(StackWidth);
                    if (i.OpCount == 1)
                    {
                        Registers[Rsp] += i.GetImmediate(0);
                    }
                    Rip = target;
                    return null;
                }
            case Mnemonic.Enter:
                {
                    // ENTER size, level (SDM Vol. 2A): push the frame pointer, copy `level - 1` outer frame pointers,
                    // push the new frame pointer, then reserve `size` bytes.
                    int width = StackWidth;
                    ulong size = i.Immediate16;
                    int level = i.Immediate8_2nd & 31;
                    Push(Registers[Rbp], width);
                    ulong frame = Registers[Rsp];
                    ulong outer = Registers[Rbp];
                    for (int n = 1; n < level; n++)
                    {
                        outer -= (ulong)width;
                        Push(ReadLinear(outer, width), width);
                    }
                    if (level > 0)
                    {
                        Push(frame, width);
                    }
                    Registers[Rbp] = frame;
                    Registers[Rsp] -= size;
                    return null;
                }
            case Mnemonic.Leave:
                Registers[Rsp] = Registers[Rbp];
                Registers[Rbp] = Pop(StackWidth);
                return null;
            case Mnemonic.Loop:
            case Mnemonic.Loope:
            case Mnemonic.Loopne:
                {
                    // The address size picks the count register (SDM Vol. 2A LOOP/LOOPcc): RCX, ECX (67h in 64-bit
                    // mode; a 32-bit write, so bits 63:32 are cleared, as the CPU does) or CX (the rest kept).
                    ulong count;
                    switch (i.Code)
                    {
                        case Code.Loop_rel8_64_ECX or Code.Loope_rel8_64_ECX or Code.Loopne_rel8_64_ECX or
                             Code.Loop_rel8_32_ECX or Code.Loope_rel8_32_ECX or Code.Loopne_rel8_32_ECX or
                             Code.Loop_rel8_16_ECX or Code.Loope_rel8_16_ECX or Code.Loopne_rel8_16_ECX:
                            count = Registers[Rcx] = (uint)(Registers[Rcx] - 1);
                            break;
                        case Code.Loop_rel8_32_CX or Code.Loope_rel8_32_CX or Code.Loopne_rel8_32_CX or
                             Code.Loop_rel8_16_CX or Code.Loope_rel8_16_CX or Code.Loopne_rel8_16_CX:
                            count = (ushort)(Registers[Rcx] - 1);
                            Registers[Rcx] = (Registers[Rcx] & ~0xFFFFUL) | count;
                            break;
                        default:
                            count = --Registers[Rcx];
                            break;
                    }
                    bool taken = count != 0 && (i.Mnemonic == Mnemonic.Loop || (i.Mnemonic == Mnemonic.Loope) == ((Rflags & Z) != 0));
                    if (taken)
                    {
                        Rip = i.NearBranchTarget;
                    }
                    return null;
                }
            case Mnemonic.Jrcxz:
                if (Registers[Rcx] == 0)
                {
                    Rip = i.NearBranchTarget;
                }
                return null;
            case Mnemonic.Jecxz:
                if ((uint)Registers[Rcx] == 0)
                {
                    Rip = i.NearBranchTarget;
                }
                return null;
            case Mnemonic.Retf:
                {
                    // Far return (SDM Vol. 2B RET): pop rIP and CS at the operand size (8 with REX.W), release the
                    // immediate's bytes; to an outer privilege level also pop rSP and SS.
                    if (i.Code is not (Code.Retfq or Code.Retfd or Code.Retfq_imm16 or Code.Retfd_imm16))
                    {
                        return Unimplemented(i);
                    }
                    int size = i.Code is Code.Retfq or Code.Retfq_imm16 ? 8 : 4;
                    ulong release = i.OpCount == 1 ? i.GetImmediate(0) : 0;
                    ulong rsp = Registers[Rsp];
                    ulong rip = ReadLinear(rsp, size);
                    ushort selector = (ushort)ReadLinear(rsp + (ulong)size, size);
                    var code = FarCodeSegment(selector, returning: true);
                    rsp += 2 * (ulong)size + release;
                    if ((selector & 3) > PrivilegeLevel)
                    {
                        ulong outerRsp = ReadLinear(rsp, size);
                        ushort outerSs = (ushort)ReadLinear(rsp + (ulong)size, size);
                        Ss = (outerSs & ~3) == 0 ? new Segment { Selector = outerSs } : LoadDescriptor(outerSs);
                        rsp = outerRsp + release;
                    }
                    Registers[Rsp] = size == 4 && Bitness != 64 ? (uint)rsp : rsp;
                    Cs = code;
                    Rip = rip;
                    return null;
                }
            case Mnemonic.Iretq:
                return InterruptReturn();
            case Mnemonic.Iretd:
                return Bitness == 32 ? InterruptReturnLegacy() : Unimplemented(i); // IRETD in 64-bit mode: not modelled
            case Mnemonic.Int:
            case Mnemonic.Int3:
            case Mnemonic.Into:
            case Mnemonic.Int1:
                {
                    int vector = i.Mnemonic switch
                    {
                        Mnemonic.Int => (int)i.Immediate8,
                        Mnemonic.Int3 => 3,
                        Mnemonic.Int1 => 1,
                        _ => 4,
                    };
                    if (i.Mnemonic == Mnemonic.Into && (Rflags & O) == 0)
                    {
                        return null;
                    }
                    Counters.SoftwareInterrupts++;
                    // A software interrupt is a trap: the saved RIP is the next instruction. It enters its handler
                    // with TF clear and is not followed by a single-step trap (QEMU's behaviour; SDM Vol. 3B §17.3.1.4).
                    singleStepTrap = 0;
                    if (i.Mnemonic == Mnemonic.Int1)
                    {
                        // ICEBP (INT1, F1): a trap-like #DB that sets no DR6 bit (SDM Vol. 3B §17.3.1; Vol. 2A "INT n/
                        // INTO/INT3/INT1"). Debug traps a MOV SS held are subsumed by it: one #DB, not two (what
                        // kvm-unit-tests' debug "MOV SS + watchpoint + ICEBP" observes of hardware). INT n and INT3 keep
                        // them, delivered after the instruction, at the handler's first instruction.
                        debugTraps = 0;
                    }
                    if (!Deliver((ExceptionVector)vector, 0, false, 0, software: i.Mnemonic == Mnemonic.Int, Rip))
                    {
                        return StopReason.Shutdown;
                    }
                    return null;
                }
            case Mnemonic.Syscall:
                return SystemCall();
            case Mnemonic.Sysretq:
                return SystemReturn(to64: true);
            case Mnemonic.Sysret:
                return SystemReturn(to64: false);
            case Mnemonic.Sysenter:
                return SystemEnter();
            case Mnemonic.Sysexit:
            case Mnemonic.Sysexitq:
                return SystemExit(i.Mnemonic == Mnemonic.Sysexitq);
            default:
                if (Condition(i.ConditionCode))
                {
                    Rip = i.NearBranchTarget;
                }
                return null;
        }
    }

    private static bool IsFar(in Instruction i) =>
        i.GetOpKind(0) is OpKind.FarBranch32 or OpKind.FarBranch16 ||
        (i.GetOpKind(0) == OpKind.Memory && i.MemorySize is MemorySize.SegPtr16 or MemorySize.SegPtr32 or MemorySize.SegPtr64);

    /// <summary>The selector, offset and operand width of a far JMP or CALL: from the instruction (ptr16:16/32) or
    /// from memory (m16:16/32/64, the offset first, then the selector).</summary>
    private (ushort Selector, ulong Offset, int Width) FarPointer(in Instruction i)
    {
        switch (i.GetOpKind(0))
        {
            case OpKind.FarBranch32:
                return (i.FarBranchSelector, i.FarBranch32, 4);
            case OpKind.FarBranch16:
                return (i.FarBranchSelector, i.FarBranch16, 2);
            default:
                {
                    int width = i.MemorySize switch { MemorySize.SegPtr16 => 2, MemorySize.SegPtr32 => 4, _ => 8 };
                    ulong address = EffectiveAddress(i);
                    ulong offset = ReadLinear(address, width);
                    ushort selector = (ushort)ReadLinear(address + (ulong)width, 2);
                    return (selector, offset, width);
                }
        }
    }

    /// <summary>The code segment a far JMP, CALL or RET loads, with the protection checks of SDM Vol. 3A §5.8.1–5.8.2
    /// for a direct transfer: a code segment, non-conforming with DPL = CPL and RPL ≤ CPL, or conforming with
    /// DPL ≤ CPL; a far RET may also go outward (RPL > CPL, the caller's privilege). Call gates and task switches
    /// are not modelled: they raise #GP(selector) and are counted as unimplemented.</summary>
    private Segment FarCodeSegment(ushort selector, bool returning = false)
    {
        if ((selector & ~3) == 0)
        {
            throw GuestFault.GeneralProtection();
        }
        var code = LoadDescriptor(selector);
        bool isCode = (code.Attributes & 0x18) == 0x18;
        if (!isCode)
        {
            if ((code.Attributes & 0x10) == 0)
            {
                string name = "far transfer through a gate or TSS";
                Counters.UnimplementedByMnemonic[name] = Counters.UnimplementedByMnemonic.GetValueOrDefault(name) + 1;
            }
            throw GuestFault.GeneralProtection((uint)(selector & ~3));
        }
        int cpl = PrivilegeLevel, rpl = selector & 3, dpl = (code.Attributes >> 5) & 3;
        bool conforming = (code.Attributes & 0x04) != 0;
        bool allowed = returning
            ? rpl >= cpl && (conforming ? dpl <= rpl : dpl == rpl)
            : conforming ? dpl <= cpl : dpl == cpl && rpl <= cpl;
        if (!allowed)
        {
            throw GuestFault.GeneralProtection((uint)(selector & ~3));
        }
        if (!returning)
        {
            code.Selector = (ushort)((selector & ~3) | cpl); // the CPL does not change
        }
        return code;
    }

    private ulong BranchTarget(in Instruction i) => i.GetOpKind(0) switch
    {
        OpKind.NearBranch64 or OpKind.NearBranch32 or OpKind.NearBranch16 => i.NearBranchTarget,
        _ => ReadOperand(i, 0, 8),
    };

    /// <summary>IRETQ (SDM Vol. 2A IRET, 64-bit mode): pops RIP, CS, RFLAGS, RSP, SS; the privilege level becomes CS.RPL,
    /// and only CPL 0 may change IOPL, only CPL ≤ IOPL may change IF.</summary>
    private StopReason? InterruptReturn()
    {
        ulong rsp = Registers[Rsp];
        ulong rip = ReadLinear(rsp, 8);
        ushort cs = (ushort)ReadLinear(rsp + 8, 8);
        ulong flags = ReadLinear(rsp + 16, 8);
        ulong newRsp = ReadLinear(rsp + 24, 8);
        ushort ss = (ushort)ReadLinear(rsp + 32, 8);
        int newPrivilege = cs & 3;
        if (newPrivilege < PrivilegeLevel)
        {
            throw GuestFault.GeneralProtection(cs);
        }
        var code = LoadDescriptor(cs);
        // Sensitive: a ring-compressed kernel's IRETQ cannot load IF or IOPL (CPL 1 > IOPL).
        int oldPrivilege = DeprivilegedKernel(sensitiveOnly: true) ? ringCompression!.KernelRing : PrivilegeLevel;
        // RF is loaded: it holds instruction breakpoints off for the one instruction IRET returns to, after which the
        // CPU clears it (SDM Vol. 3B §17.3.1.1; Cpu.Debug.cs), so that a breakpoint's handler can return to it.
        ulong changeable = FlagBits.Status | FlagBits.Trap | FlagBits.Direction |
                           FlagBits.Nested | FlagBits.AlignmentCheck |
                           FlagBits.Identification | FlagBits.Resume;
        if (oldPrivilege == 0)
        {
            changeable |= FlagBits.IoPrivilege;
        }
        if (oldPrivilege <= (int)((Rflags >> 12) & 3))
        {
            changeable |= FlagBits.Interrupt;
        }
        var stack = (ss & ~3) == 0 ? new Segment { Selector = ss } : LoadDescriptor(ss);
        Rflags = (Rflags & ~changeable) | (flags & changeable) | Rflags_Reserved;
        debugBoundary |= flags & FlagBits.Resume;
        Cs = code;
        Ss = stack;
        Registers[Rsp] = newRsp;
        Rip = rip;
        EndNmiBlocking();
        return null;
    }

    /// <summary>IRETD in 32-bit protected mode (SDM Vol. 2A IRET, "protected mode" and "return to outer privilege
    /// level"): pops EIP, CS, EFLAGS, and to an outer level ESP and SS, with the IOPL/IF rules of IRETQ. A return
    /// from a nested task (NT set) or to virtual-8086 mode is not modelled.</summary>
    private StopReason? InterruptReturnLegacy()
    {
        if ((Rflags & FlagBits.Nested) != 0)
        {
            throw new NotSupportedException("IRET with EFLAGS.NT set (a task return): hardware task switching is not modelled");
        }
        uint esp = (uint)Registers[Rsp];
        uint eip = (uint)ReadLinear(esp, 4);
        ushort cs = (ushort)ReadLinear(esp + 4UL, 4);
        ulong flags = (uint)ReadLinear(esp + 8UL, 4);
        int oldPrivilege = PrivilegeLevel;
        if (oldPrivilege == 0 && (flags & FlagBits.Virtual8086) != 0)
        {
            throw new NotSupportedException("IRET to virtual-8086 mode is not modelled");
        }
        var code = FarCodeSegment(cs, returning: true);
        ulong changeable = FlagBits.Status | FlagBits.Trap | FlagBits.Direction | FlagBits.Nested |
                           FlagBits.AlignmentCheck | FlagBits.Identification | FlagBits.Resume; // RF: as IRETQ
        if (oldPrivilege == 0)
        {
            changeable |= FlagBits.IoPrivilege;
        }
        if (oldPrivilege <= (int)((Rflags >> 12) & 3))
        {
            changeable |= FlagBits.Interrupt;
        }
        ulong newEsp = esp + 12UL;
        if ((cs & 3) > oldPrivilege)
        {
            newEsp = (uint)ReadLinear(esp + 12UL, 4);
            ushort ss = (ushort)ReadLinear(esp + 16UL, 4);
            Ss = LoadDescriptor(ss);
        }
        Rflags = (Rflags & ~changeable) | (flags & changeable) | Rflags_Reserved;
        debugBoundary |= flags & FlagBits.Resume;
        Cs = code;
        Registers[Rsp] = (uint)newEsp;
        Rip = eip;
        EndNmiBlocking();
        return null;
    }

    /// <summary>IRET ends the blocking of NMIs an NMI's delivery began (SDM Vol. 3A §6.7.1): one waiting is taken
    /// after it.</summary>
    private void EndNmiBlocking()
    {
        if (state.NmiBlocked)
        {
            state.NmiBlocked = false;
            eventCheckAt = 0;
        }
    }

    /// <summary>SYSCALL (SDM Vol. 2B): RCX ← RIP, R11 ← RFLAGS, RFLAGS &amp;= ~IA32_FMASK, CS ← STAR[47:32] (flat 64-bit
    /// code, DPL 0), SS ← STAR[47:32] + 8, RIP ← IA32_LSTAR. On an Intel processor it exists in 64-bit mode only: #UD
    /// in compatibility and legacy mode, as without EFER.SCE. The AMD model follows APM Vol. 3 SYSCALL instead: in
    /// compatibility mode the same but RIP ← IA32_CSTAR (64-bit code is entered all the same), and outside long mode
    /// the legacy form: ECX ← EIP, CS/SS from STAR[47:32] as flat 32-bit segments, RFLAGS.VM, IF, RF cleared,
    /// EIP ← STAR[31:0].</summary>
    private StopReason? SystemCall()
    {
        if ((Efer & Architecture.Efer.SystemCallEnable) == 0 || (Bitness != 64 && !Model.IsAmd))
        {
            throw GuestFault.InvalidOpcode();
        }
        Counters.SystemCalls++;
        ushort selector = (ushort)((Star >> 32) & 0xFFFC);
        if ((Efer & Architecture.Efer.LongModeActive) == 0)
        {
            // AMD's SYSCALL_LEGACY_MODE (APM Vol. 3): R11 is untouched and IA32_FMASK is not applied.
            Registers[Rcx] = (uint)Rip;
            Rflags &= ~(FlagBits.Virtual8086 | FlagBits.Interrupt | FlagBits.Resume);
            Cs = new Segment { Selector = selector, Limit = 0xFFFF_FFFF, Attributes = FlatCode32 };
            Ss = new Segment { Selector = (ushort)(selector + 8), Limit = 0xFFFF_FFFF, Attributes = FlatData };
            Rip = (uint)Star;
            singleStepTrap = Rflags & FlagBits.Trap;
            return null;
        }
        ulong target = Bitness == 64 ? LongStar : CompatibilityStar;
        Registers[Rcx] = Rip;
        Registers[11] = Rflags;
        Rflags &= ~SyscallFlagMask;
        Rflags |= Rflags_Reserved;
        Cs = new Segment { Selector = selector, Limit = 0xFFFF_FFFF, Attributes = FlatCode64 };
        Ss = new Segment { Selector = (ushort)(selector + 8), Limit = 0xFFFF_FFFF, Attributes = FlatData };
        Rip = target;
        // The single-step trap follows SYSCALL only if TF survives IA32_FMASK (the flags it leaves, not those it began
        // with: QEMU's TCG rechecks TF after SYSCALL; kvm-unit-tests' syscall "TF handling" checks it).
        singleStepTrap = Rflags & FlagBits.Trap;
        return null;
    }

    // Descriptor attributes (access byte, then G, D/B, L in bits 15:13) of the flat segments SYSCALL, SYSRET, SYSENTER
    // and SYSEXIT load without reading the GDT (SDM Vol. 2B: base 0, limit 4 GiB, type 11 code or 3 data, S, P).
    private const ushort FlatCode64 = 0xA09B, FlatCode32 = 0xC09B, FlatData = 0xC093, UserDpl = 0x60;

    /// <summary>SYSRET (SDM Vol. 2B), #UD outside 64-bit mode or without EFER.SCE, #GP(0) at CPL &gt; 0. With REX.W
    /// (SYSRETQ) to 64-bit code: CS ← STAR[63:48] + 16, RIP ← RCX (canonical, else #GP(0) at CPL 0 as Intel parts do);
    /// without it to compatibility mode: CS ← STAR[63:48] as 32-bit code, EIP ← ECX. Both: SS ← STAR[63:48] + 8, RPL 3,
    /// RFLAGS ← (R11 &amp; 3C7FD7H) | 2. The AMD model (APM Vol. 3 SYSRET): also valid in compatibility mode and, in
    /// its legacy form, outside long mode (#GP(0) in real mode; CS/SS from STAR[63:48] as 32-bit, RFLAGS.IF set, EIP ←
    /// ECX); RCX is not checked, so a non-canonical return address faults at CPL 3, when it is fetched.</summary>
    private StopReason? SystemReturn(bool to64)
    {
        bool amd = Model.IsAmd;
        if ((Efer & Architecture.Efer.SystemCallEnable) == 0 || (Bitness != 64 && !amd))
        {
            throw GuestFault.InvalidOpcode();
        }
        if (amd && (Efer & Architecture.Efer.LongModeActive) == 0 && (Cr0 & Architecture.Cr0.ProtectionEnable) == 0)
        {
            throw GuestFault.GeneralProtection();
        }
        RequirePrivilege0();
        ulong target = to64 ? Registers[Rcx] : (uint)Registers[Rcx];
        if (!amd && !IsCanonical(target))
        {
            throw GuestFault.GeneralProtection();
        }
        ushort selector = (ushort)((Star >> 48) & 0xFFFC);
        if ((Efer & Architecture.Efer.LongModeActive) == 0)
        {
            Rflags |= FlagBits.Interrupt;
        }
        else
        {
            Rflags = (Registers[11] & 0x3C_7FD7) | Rflags_Reserved;
        }
        Cs = to64
            ? new Segment { Selector = (ushort)((selector + 16) | 3), Limit = 0xFFFF_FFFF, Attributes = FlatCode64 | UserDpl }
            : new Segment { Selector = (ushort)(selector | 3), Limit = 0xFFFF_FFFF, Attributes = FlatCode32 | UserDpl };
        Ss = new Segment { Selector = (ushort)((selector + 8) | 3), Limit = 0xFFFF_FFFF, Attributes = FlatData | UserDpl };
        Rip = target;
        // A SYSRET that loads TF traps at once, in user mode, unlike IRET (the flags it leaves decide, as QEMU's TCG
        // rechecks TF after SYSRET and Linux's entry code documents of hardware).
        singleStepTrap = Rflags & FlagBits.Trap;
        return null;
    }

    /// <summary>SYSENTER (SDM Vol. 2B; Vol. 3A §5.8.7): #GP(0) if IA32_SYSENTER_CS[15:2] is 0; else RFLAGS.VM, IF and RF
    /// clear, CPL 0 with CS ← SYSENTER_CS (64-bit code in IA-32e mode, else 32-bit), SS ← SYSENTER_CS + 8, RSP ←
    /// IA32_SYSENTER_ESP, RIP ← IA32_SYSENTER_EIP (their low 32 bits outside IA-32e mode). The AMD model: #UD in long
    /// mode (APM Vol. 3 SYSENTER: "not recognized in long mode"), legacy mode only.</summary>
    private StopReason? SystemEnter()
    {
        RefuseInLongModeOnAmd();
        ushort selector = (ushort)(SysenterCs & 0xFFFC);
        if (selector == 0)
        {
            throw GuestFault.GeneralProtection();
        }
        bool longMode = (Efer & Architecture.Efer.LongModeActive) != 0;
        Counters.SystemCalls++;
        Rflags &= ~(FlagBits.Virtual8086 | FlagBits.Interrupt | FlagBits.Resume);
        Cs = new Segment { Selector = selector, Limit = 0xFFFF_FFFF, Attributes = longMode ? FlatCode64 : FlatCode32 };
        Ss = new Segment { Selector = (ushort)(selector + 8), Limit = 0xFFFF_FFFF, Attributes = FlatData };
        Registers[Rsp] = longMode ? SysenterEsp : (uint)SysenterEsp;
        Rip = longMode ? SysenterEip : (uint)SysenterEip;
        return null;
    }

    /// <summary>SYSEXIT (SDM Vol. 2B): #GP(0) if IA32_SYSENTER_CS[15:2] is 0 or CPL &gt; 0. To CPL 3: with REX.W
    /// (SYSEXITQ) 64-bit code CS ← SYSENTER_CS + 32, SS ← + 40, RSP ← RCX, RIP ← RDX (canonical, else #GP(0));
    /// without it 32-bit code CS ← SYSENTER_CS + 16, SS ← + 24, ESP ← ECX, EIP ← EDX. #UD in long mode on AMD.</summary>
    private StopReason? SystemExit(bool to64)
    {
        RefuseInLongModeOnAmd();
        ushort selector = (ushort)(SysenterCs & 0xFFFC);
        RequirePrivilege0();
        if (selector == 0)
        {
            throw GuestFault.GeneralProtection();
        }
        ulong target = to64 ? Registers[Rdx] : (uint)Registers[Rdx];
        if (!IsCanonical(target))
        {
            throw GuestFault.GeneralProtection();
        }
        Cs = to64
            ? new Segment { Selector = (ushort)((selector + 32) | 3), Limit = 0xFFFF_FFFF, Attributes = FlatCode64 | UserDpl }
            : new Segment { Selector = (ushort)((selector + 16) | 3), Limit = 0xFFFF_FFFF, Attributes = FlatCode32 | UserDpl };
        Ss = new Segment { Selector = (ushort)((selector + (to64 ? 40 : 24)) | 3), Limit = 0xFFFF_FFFF, Attributes = FlatData | UserDpl };
        Registers[Rsp] = to64 ? Registers[Rcx] : (uint)Registers[Rcx];
        Rip = target;
        return null;
    }

    /// <summary>SYSENTER and SYSEXIT raise #UD in long mode (64-bit and compatibility mode) on AMD processors (APM
    /// Vol. 3 SYSENTER, SYSEXIT); Intel's run them there (SDM Vol. 2B).</summary>
    private void RefuseInLongModeOnAmd()
    {
        if (Model.IsAmd && (Efer & Architecture.Efer.LongModeActive) != 0)
        {
            throw GuestFault.InvalidOpcode();
        }
    }

    private static bool IsCanonical(ulong address) => (ulong)((long)(address << 16) >> 16) == address;
}
