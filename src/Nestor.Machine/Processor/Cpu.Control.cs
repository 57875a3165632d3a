using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

// Branches, calls, returns, interrupts and the fast system-call pair (SDM Vol. 2: JMP, Jcc, CALL, RET, IRET, INT n,
// SYSCALL, SYSRET).
public sealed partial class Cpu
{
    private StopReason? ControlTransfer(in Instruction i)
    {
        switch (i.Mnemonic)
        {
            case Mnemonic.Jmp:
                if (i.GetOpKind(0) is OpKind.FarBranch32 or OpKind.FarBranch16)
                {
                    // JMP ptr16:32: load CS from the GDT; a code segment with L = 1 enters 64-bit mode when
                    // IA32_EFER.LMA is set (SDM Vol. 3A §9.8.5, step 6).
                    Cs = LoadDescriptor(i.FarBranchSelector);
                    Rip = i.GetOpKind(0) == OpKind.FarBranch32 ? i.FarBranch32 : i.FarBranch16;
                    return null;
                }
                if (i.GetOpKind(0) == OpKind.Memory && i.MemorySize is MemorySize.SegPtr32 or MemorySize.SegPtr64 or MemorySize.SegPtr16)
                {
                    return Unimplemented(i);
                }
                Rip = BranchTarget(i);
                return null;
            case Mnemonic.Call:
                {
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
                    ulong count = --Registers[Rcx];
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
                    // Far return in 64-bit mode with REX.W (lretq): pop RIP and CS; to an outer level also RSP and SS.
                    int size = i.CodeSize == CodeSize.Code64 && i.Code == Code.Retfq ? 8 : 4;
                    if (i.Code is not (Code.Retfq or Code.Retfd))
                    {
                        return Unimplemented(i);
                    }
                    ulong rip = Pop(size);
                    ushort selector = (ushort)Pop(size);
                    var code = LoadDescriptor(selector);
                    Cs = code;
                    Rip = rip;
                    return null;
                }
            case Mnemonic.Iretq:
                return InterruptReturn();
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
                    // A software interrupt is a trap: the saved RIP is the next instruction.
                    if (!Deliver((ExceptionVector)vector, 0, false, 0, software: i.Mnemonic == Mnemonic.Int, Rip))
                    {
                        return StopReason.Shutdown;
                    }
                    return null;
                }
            case Mnemonic.Syscall:
                return SystemCall();
            case Mnemonic.Sysretq:
                return SystemReturn();
            default:
                if (Condition(i.ConditionCode))
                {
                    Rip = i.NearBranchTarget;
                }
                return null;
        }
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
        int oldPrivilege = PrivilegeLevel;
        ulong changeable = FlagBits.Status | FlagBits.Trap | FlagBits.Direction |
                           FlagBits.Nested | FlagBits.Resume | FlagBits.AlignmentCheck |
                           FlagBits.Identification;
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
        Cs = code;
        Ss = stack;
        Registers[Rsp] = newRsp;
        Rip = rip;
        return null;
    }

    /// <summary>SYSCALL (SDM Vol. 2B): RCX ← RIP, R11 ← RFLAGS, RFLAGS &amp;= ~IA32_FMASK, CS ← STAR[47:32] (flat 64-bit
    /// code, DPL 0), SS ← STAR[47:32] + 8, RIP ← IA32_LSTAR.</summary>
    private StopReason? SystemCall()
    {
        if ((Efer & Architecture.Efer.SystemCallEnable) == 0)
        {
            throw GuestFault.InvalidOpcode();
        }
        Counters.SystemCalls++;
        Registers[Rcx] = Rip;
        Registers[11] = Rflags;
        Rflags &= ~SyscallFlagMask;
        Rflags |= Rflags_Reserved;
        ushort selector = (ushort)((Star >> 32) & 0xFFFC);
        Cs = new Segment { Selector = selector, Limit = 0xFFFF_FFFF, Attributes = 0xA09B };
        Ss = new Segment { Selector = (ushort)(selector + 8), Limit = 0xFFFF_FFFF, Attributes = 0xC093 };
        Rip = LongStar;
        return null;
    }

    /// <summary>SYSRETQ: RIP ← RCX, RFLAGS ← R11 (cleaned), CS ← STAR[63:48] + 16 | 3, SS ← STAR[63:48] + 8 | 3.</summary>
    private StopReason? SystemReturn()
    {
        if ((Efer & Architecture.Efer.SystemCallEnable) == 0)
        {
            throw GuestFault.InvalidOpcode();
        }
        RequirePrivilege0();
        ulong target = Registers[Rcx];
        if (!IsCanonical(target))
        {
            throw GuestFault.GeneralProtection();
        }
        ushort selector = (ushort)((Star >> 48) & 0xFFFC);
        Rflags = (Registers[11] & 0x3C_7FD7) | Rflags_Reserved;
        Cs = new Segment { Selector = (ushort)((selector + 16) | 3), Limit = 0xFFFF_FFFF, Attributes = 0xA0FB };
        Ss = new Segment { Selector = (ushort)((selector + 8) | 3), Limit = 0xFFFF_FFFF, Attributes = 0xC0F3 };
        Rip = target;
        return null;
    }

    private static bool IsCanonical(ulong address) => (ulong)((long)(address << 16) >> 16) == address;
}
