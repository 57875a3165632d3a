using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

// Segmented and 16-bit execution: real-address mode (SDM Vol. 3A ch. 20, "8086 Emulation"), 16-bit protected mode,
// and what every mode but 64-bit mode shares: segment bases added to every offset (Vol. 3A §3.4.2-§3.4.4: in 64-bit
// mode only FS and GS have one, §3.2.4), the stack's width chosen by SS.B (Vol. 3A §3.4.5, "D/B flag"), and operand
// and address sizes of 16 or 32 bits chosen by CS.D and flipped by 66h and 67h (Vol. 1 §3.6). The 64-bit paths do
// not come here: each hook in the shared files is one test of Bitness, on the general path only.
public sealed partial class Cpu
{
    /// <summary>Real-address mode: CR0.PE clear (SDM Vol. 3A §9.1). The privilege level is 0, segment loads take
    /// the selector times 16 as the base and keep the limit and attributes the cache holds (what "unreal" or "big
    /// real" mode code relies on, §9.9.2 and ch. 20.1.1), and interrupts go through the IVT.</summary>
    public bool RealMode => ((Cr0 & Architecture.Cr0.ProtectionEnable) | (Efer & Architecture.Efer.LongModeActive)) == 0;

    /// <summary>The base of the segment register an operand names, outside 64-bit mode.</summary>
    private ulong SegmentBase(Register segment) => segment switch
    {
        Register.ES => Es.Base,
        Register.CS => Cs.Base,
        Register.SS => Ss.Base,
        Register.DS => Ds.Base,
        Register.FS => Fs.Base,
        Register.GS => Gs.Base,
        _ => 0,
    };

    /// <summary>The fast path's segment numbering (<see cref="DecodedInstruction.Segment"/> 3–6) to a base.</summary>
    private ulong LegacySegmentBase(byte segment) => segment switch
    {
        3 => Es.Base,
        4 => Cs.Base,
        5 => Ss.Base,
        _ => Ds.Base,
    };

    /// <summary>The linear address of a memory operand outside 64-bit mode: the offset reduced to the address size
    /// (16 bits for the BX+SI forms and disp16, SDM Vol. 2A Table 2-1), plus the segment's base, in a 32-bit linear
    /// address space (Vol. 3A §3.4: legacy linear addresses wrap at 4 GiB).</summary>
    private ulong LegacyLinear(in Instruction i, ulong offset)
    {
        if (AddressSize16(i))
        {
            offset = (ushort)offset;
        }
        return (uint)(offset + SegmentBase(i.MemorySegment));
    }

    /// <summary>A 16-bit address size: Iced names the 16-bit base and index registers, or for a displacement alone
    /// gives it 2 bytes (mod 00, r/m 110).</summary>
    private static bool AddressSize16(in Instruction i)
    {
        var b = i.MemoryBase;
        var x = i.MemoryIndex;
        if (b == Register.None && x == Register.None)
        {
            return i.MemoryDisplSize == 2;
        }
        return b.GetSize() == 2 || x.GetSize() == 2;
    }

    /// <summary>Loads a data segment register in real mode: selector and base = selector × 16; the limit and
    /// attributes stay as the descriptor cache has them (SDM Vol. 3A §20.1.1; a limit set in protected mode stays
    /// usable, as hardware keeps it).</summary>
    private static void LoadRealModeSegment(ref Segment segment, ushort selector)
    {
        segment.Selector = selector;
        segment.Base = (ulong)selector << 4;
    }

    /// <summary>MOV, POP or LxS to a segment register in real mode: no descriptor is read (SDM Vol. 2A MOV,
    /// "real-address mode"). CS is not loadable so (#UD, as in every mode).</summary>
    private void WriteRealModeSegmentRegister(Register r, ushort selector)
    {
        switch (r)
        {
            case Register.DS: LoadRealModeSegment(ref Ds, selector); break;
            case Register.ES: LoadRealModeSegment(ref Es, selector); break;
            case Register.SS: LoadRealModeSegment(ref Ss, selector); break;
            case Register.FS: LoadRealModeSegment(ref Fs, selector); break;
            case Register.GS: LoadRealModeSegment(ref Gs, selector); break;
            default: throw GuestFault.InvalidOpcode();
        }
    }

    /// <summary>CS after a far transfer in real mode: base = selector × 16, the rest of the cache kept (a 16-bit CS
    /// stays 16-bit; SDM Vol. 3A §9.9.2 step 4, the far JMP after clearing PE).</summary>
    private Segment RealModeCode(ushort selector)
    {
        var code = Cs;
        LoadRealModeSegment(ref code, selector);
        return code;
    }

    // ---- The stack outside 64-bit mode ------------------------------------------------------------------------

    /// <summary>SS.B: a 32-bit stack (ESP) rather than a 16-bit one (SP) (SDM Vol. 3A §3.4.5).</summary>
    private bool Stack32 => (Ss.Attributes & 0x4000) != 0;

    /// <summary>The linear address of a stack offset: SS's base plus the offset at the stack's width.</summary>
    private ulong StackLinear(ulong offset) => (uint)(Ss.Base + (Stack32 ? (uint)offset : (ushort)offset));

    /// <summary>Sets SP or ESP (SS.B) to <paramref name="offset"/>; a 16-bit stack keeps ESP's upper half.</summary>
    private void SetStackPointer(ulong offset)
    {
        ref ulong rsp = ref Registers[Rsp];
        rsp = Stack32 ? (uint)offset : (rsp & ~0xFFFFUL) | (ushort)offset;
    }

    private void PushLegacy(ulong value, int size)
    {
        ulong sp = Registers[Rsp] - (ulong)size;
        WriteLinear(StackLinear(sp), size, value);
        SetStackPointer(sp);
    }

    private ulong PopLegacy(int size)
    {
        ulong sp = Registers[Rsp];
        ulong value = ReadLinear(StackLinear(sp), size);
        SetStackPointer(sp + (ulong)size);
        return value;
    }

    /// <summary>Reads the stack at <paramref name="displacement"/> bytes above the stack pointer.</summary>
    private ulong ReadStack(ulong displacement, int size) => ReadLinear(StackLinear(Registers[Rsp] + displacement), size);

    /// <summary>The operand size of a near CALL, RET, ENTER, LEAVE, far CALL/RET or IRET outside 64-bit mode, from
    /// the form Iced decoded (its o16/o32 variant: CS.D and 66h, SDM Vol. 1 §3.6).</summary>
    private static int LegacyOperandWidth(in Instruction i) => i.Code switch
    {
        Code.Call_rel16 or Code.Call_rm16 or Code.Retnw or Code.Retnw_imm16 or Code.Enterw_imm16_imm8 or
            Code.Leavew or Code.Call_ptr1616 or Code.Call_m1616 or Code.Retfw or Code.Retfw_imm16 or Code.Iretw or
            Code.Jmp_ptr1616 or Code.Jmp_m1616 => 2,
        _ => 4,
    };

    // ---- Control transfers ------------------------------------------------------------------------------------

    /// <summary>The control transfers whose stack or segment handling differs outside 64-bit mode: near CALL and RET
    /// at the operand size, ENTER and LEAVE on SP or ESP, JCXZ, far JMP, CALL and RET (real mode: CS = selector, base
    /// selector × 16, no descriptor; SDM Vol. 2A CALL/JMP "real-address mode"), IRET in real mode. True when it
    /// handled <paramref name="i"/>.</summary>
    private bool LegacyControlTransfer(in Instruction i, out StopReason? stop)
    {
        stop = null;
        switch (i.Mnemonic)
        {
            case Mnemonic.Call when IsFar(i):
                {
                    var (selector, offset, width) = FarPointer(i);
                    var code = RealMode ? RealModeCode(selector) : FarCodeSegment(selector);
                    // Both pushes are checked before either lands, as for the 64-bit form.
                    ulong sp = Registers[Rsp];
                    ulong cs = StackLinear(sp - (ulong)width), ip = StackLinear(sp - 2 * (ulong)width);
                    WriteLinear(cs, width, Cs.Selector);
                    WriteLinear(ip, width, Rip);
                    SetStackPointer(sp - 2 * (ulong)width);
                    Cs = code;
                    Rip = width == 2 ? (ushort)offset : (uint)offset;
                    return true;
                }
            case Mnemonic.Jmp when IsFar(i):
                {
                    var (selector, offset, width) = FarPointer(i);
                    Cs = RealMode ? RealModeCode(selector) : FarCodeSegment(selector);
                    Rip = width == 2 ? (ushort)offset : (uint)offset;
                    return true;
                }
            case Mnemonic.Call:
                {
                    int width = LegacyOperandWidth(i);
                    ulong target = i.GetOpKind(0) is OpKind.NearBranch16 or OpKind.NearBranch32
                        ? i.NearBranchTarget
                        : ReadOperand(i, 0, width);
                    PushLegacy(Rip, width);
                    Rip = width == 2 ? (ushort)target : (uint)target;
                    return true;
                }
            case Mnemonic.Jmp when i.GetOpKind(0) is not (OpKind.NearBranch16 or OpKind.NearBranch32):
                {
                    int width = OperandSize(i, 0);
                    Rip = ReadOperand(i, 0, width);
                    return true;
                }
            case Mnemonic.Ret:
                {
                    int width = LegacyOperandWidth(i);
                    ulong target = PopLegacy(width);
                    if (i.OpCount == 1)
                    {
                        SetStackPointer(Registers[Rsp] + i.GetImmediate(0));
                    }
                    Rip = target;
                    return true;
                }
            case Mnemonic.Retf:
                {
                    // RET far (SDM Vol. 2B RET): pop the offset and CS at the operand size, release the immediate's
                    // bytes; in protected mode to an outer level also pop SP and SS.
                    int width = LegacyOperandWidth(i);
                    ulong release = i.OpCount == 1 ? i.GetImmediate(0) : 0;
                    ulong ip = ReadStack(0, width);
                    ushort selector = (ushort)ReadStack((ulong)width, 2);
                    var code = RealMode ? RealModeCode(selector) : FarCodeSegment(selector, returning: true);
                    ulong sp = Registers[Rsp] + 2 * (ulong)width + release;
                    if (!RealMode && (selector & 3) > PrivilegeLevel)
                    {
                        ulong outerSp = ReadLinear(StackLinear(sp), width);
                        ushort outerSs = (ushort)ReadLinear(StackLinear(sp + (ulong)width), 2);
                        Ss = LoadDescriptor(outerSs);
                        sp = outerSp + release;
                    }
                    SetStackPointer(sp);
                    Cs = code;
                    Rip = ip;
                    return true;
                }
            case Mnemonic.Enter:
                {
                    // ENTER size, level (SDM Vol. 2A) on SP or ESP, at the operand size.
                    int width = LegacyOperandWidth(i);
                    ulong size = i.Immediate16;
                    int level = i.Immediate8_2nd & 31;
                    PushLegacy(Registers[Rbp], width);
                    ulong frame = Registers[Rsp];
                    ulong outer = Registers[Rbp];
                    for (int n = 1; n < level; n++)
                    {
                        outer -= (ulong)width;
                        PushLegacy(ReadLinear(StackLinear(outer), width), width);
                    }
                    if (level > 0)
                    {
                        PushLegacy(frame, width);
                    }
                    WriteFrameRegister(frame, width);
                    SetStackPointer(Registers[Rsp] - size);
                    return true;
                }
            case Mnemonic.Leave:
                {
                    int width = LegacyOperandWidth(i);
                    SetStackPointer(Registers[Rbp]);
                    WriteFrameRegister(PopLegacy(width), width);
                    return true;
                }
            case Mnemonic.Jcxz:
                if ((ushort)Registers[Rcx] == 0)
                {
                    Rip = i.NearBranchTarget;
                }
                return true;
            case Mnemonic.Iret or Mnemonic.Iretd when RealMode:
                stop = RealModeInterruptReturn(i.Mnemonic == Mnemonic.Iret ? 2 : 4);
                return true;
            case Mnemonic.Iret:
                // IRET with a 16-bit operand size in protected mode: 16-bit gates and task returns are not modelled.
                stop = Unimplemented(i);
                return true;
            default:
                return false;
        }
    }

    /// <summary>BP or EBP, by the operand size (ENTER and LEAVE write the frame pointer at it).</summary>
    private void WriteFrameRegister(ulong value, int width)
    {
        ref ulong rbp = ref Registers[Rbp];
        rbp = width == 2 ? (rbp & ~0xFFFFUL) | (ushort)value : (uint)value;
    }

    /// <summary>IRET in real mode (SDM Vol. 2A IRET, "real-address mode"): pops IP, CS and FLAGS (with 66h EIP, CS in
    /// a 4-byte slot and EFLAGS, whose VM, VIP and VIF stay as they are); CPL is 0, so IOPL and IF are loaded.</summary>
    private StopReason? RealModeInterruptReturn(int width)
    {
        ulong ip = ReadStack(0, width);
        ushort cs = (ushort)ReadStack((ulong)width, 2);
        ulong flags = ReadStack(2 * (ulong)width, width);
        ulong changeable = FlagBits.Status | FlagBits.Trap | FlagBits.Interrupt | FlagBits.Direction |
                           FlagBits.IoPrivilege | FlagBits.Nested;
        if (width == 4)
        {
            changeable |= FlagBits.AlignmentCheck | FlagBits.Identification;
        }
        SetStackPointer(Registers[Rsp] + 3 * (ulong)width);
        Rflags = (Rflags & ~changeable) | (flags & changeable) | Rflags_Reserved;
        Cs = RealModeCode(cs);
        Rip = ip;
        EndNmiBlocking();
        return null;
    }

    /// <summary>Interrupt and exception delivery in real mode (SDM Vol. 3A §20.1.4): the IVT at IDTR.base holds a
    /// 4-byte far pointer (offset, then segment) per vector; FLAGS, CS and IP are pushed as 16-bit words on SS:SP,
    /// IF, TF and AC are cleared, and no error code is pushed. A vector beyond IDTR.limit is #GP (Vol. 3A §20.1.4
    /// "if the vector is outside the IVT"), which in real mode escalates like any fault during delivery.</summary>
    private void DeliverRealMode(int vector, ulong returnRip)
    {
        if ((ulong)vector * 4 + 3 > IdtLimit)
        {
            throw GuestFault.GeneralProtection();
        }
        ulong entry = ReadLinear((uint)(IdtBase + (ulong)vector * 4), 4);
        ushort sp = (ushort)Registers[Rsp];
        // The three pushes are checked before any lands: a fault leaves SP and memory as they were.
        ulong flagsAt = (uint)(Ss.Base + (ushort)(sp - 2)), csAt = (uint)(Ss.Base + (ushort)(sp - 4)), ipAt = (uint)(Ss.Base + (ushort)(sp - 6));
        WriteLinear(flagsAt, 2, Rflags);
        WriteLinear(csAt, 2, Cs.Selector);
        WriteLinear(ipAt, 2, returnRip);
        Registers[Rsp] = (Registers[Rsp] & ~0xFFFFUL) | (ushort)(sp - 6);
        Rflags &= ~(FlagBits.Interrupt | FlagBits.Trap | FlagBits.AlignmentCheck | FlagBits.Resume);
        Cs = RealModeCode((ushort)(entry >> 16));
        Rip = (ushort)entry;
    }

    // ---- Instructions of 16- and 32-bit code only (#UD in 64-bit mode, where Iced does not decode them) ---------

    /// <summary>PUSHA/PUSHAD: AX (EAX), CX, DX, BX, the SP before the first push, BP, SI, DI; POPA/POPAD pops them
    /// back in reverse, skipping SP's slot (SDM Vol. 2B PUSHA, POPA). All eight slots are checked before SP moves.</summary>
    private StopReason? PushAll(in Instruction i)
    {
        int width = i.Mnemonic == Mnemonic.Pusha ? 2 : 4;
        ulong sp = Registers[Rsp];
        for (int r = 0; r < 8; r++)
        {
            WriteLinear(StackLinear(sp - (ulong)(width * (r + 1))), width, Registers[r]);
        }
        SetStackPointer(sp - (ulong)(8 * width));
        return null;
    }

    private StopReason? PopAll(in Instruction i)
    {
        int width = i.Mnemonic == Mnemonic.Popa ? 2 : 4;
        Span<ulong> values = stackalloc ulong[8];
        for (int r = 7; r >= 0; r--)
        {
            values[r] = ReadStack((ulong)(width * (7 - r)), width);
        }
        for (int r = 0; r < 8; r++)
        {
            if (r != Rsp)
            {
                ref ulong g = ref Registers[r];
                g = width == 2 ? (g & ~0xFFFFUL) | values[r] : values[r];
            }
        }
        SetStackPointer(Registers[Rsp] + (ulong)(8 * width));
        return null;
    }

    /// <summary>LDS, LES, LFS, LGS, LSS: a far pointer from memory, the offset at the operand size then the
    /// selector; the segment register is loaded as MOV would load it, then the register (SDM Vol. 2A LDS/LES/...).</summary>
    private StopReason? LoadFarPointer(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong address = EffectiveAddress(i);
        ulong offset = ReadLinear(address, size);
        ushort selector = (ushort)ReadLinear(address + (ulong)size, 2);
        var segment = i.Mnemonic switch
        {
            Mnemonic.Lds => Register.DS,
            Mnemonic.Les => Register.ES,
            Mnemonic.Lfs => Register.FS,
            Mnemonic.Lgs => Register.GS,
            _ => Register.SS,
        };
        WriteSegmentRegister(segment, selector);
        WriteRegister(i.GetOpRegister(0), offset);
        return null;
    }

    /// <summary>BOUND r, m: #BR (vector 5, a fault) unless lower ≤ r ≤ upper, signed, the bounds in memory at the
    /// operand size (SDM Vol. 2A BOUND).</summary>
    private StopReason? CheckBounds(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong address = EffectiveAddress(i);
        long index = (long)SignExtend(ReadRegister(i.GetOpRegister(0)), size);
        long lower = (long)SignExtend(ReadLinear(address, size), size);
        long upper = (long)SignExtend(ReadLinear(address + (ulong)size, size), size);
        if (index < lower || index > upper)
        {
            throw new GuestFault(ExceptionVector.BoundRangeExceeded);
        }
        return null;
    }

    /// <summary>The decimal and ASCII adjustments (SDM Vol. 2A AAA, AAD, AAM, AAS, DAA, DAS) and SALC (AL = CF ?
    /// FFh : 0, undocumented but on every Intel processor and in QEMU). Where the SDM leaves flags undefined, they
    /// are what QEMU's helpers give (SF, ZF, PF from AL; OF clear), so that results compare with the reference.</summary>
    private StopReason? DecimalAdjust(in Instruction i)
    {
        ulong flags = Rflags;
        ulong al = Registers[Rax] & 0xFF, ah = (Registers[Rax] >> 8) & 0xFF;
        bool cf = (flags & FlagBits.Carry) != 0, af = (flags & FlagBits.Adjust) != 0;
        ulong set = 0; // CF and AF to set; the others from AL below unless kept
        bool resultFlags = true;
        switch (i.Mnemonic)
        {
            case Mnemonic.Daa:
                {
                    ulong old = al;
                    bool newCf = false;
                    if ((al & 0xF) > 9 || af)
                    {
                        newCf = cf || al + 6 > 0xFF;
                        al = (al + 6) & 0xFF;
                        set |= FlagBits.Adjust;
                    }
                    if (old > 0x99 || cf)
                    {
                        al = (al + 0x60) & 0xFF;
                        newCf = true;
                    }
                    set |= newCf ? FlagBits.Carry : 0;
                    break;
                }
            case Mnemonic.Das:
                {
                    ulong old = al;
                    bool newCf = false;
                    if ((al & 0xF) > 9 || af)
                    {
                        newCf = cf || al < 6;
                        al = (al - 6) & 0xFF;
                        set |= FlagBits.Adjust;
                    }
                    if (old > 0x99 || cf)
                    {
                        al = (al - 0x60) & 0xFF;
                        newCf = true;
                    }
                    set |= newCf ? FlagBits.Carry : 0;
                    break;
                }
            case Mnemonic.Aaa:
            case Mnemonic.Aas:
                {
                    if ((al & 0xF) > 9 || af)
                    {
                        if (i.Mnemonic == Mnemonic.Aaa)
                        {
                            ulong ax = ((ah << 8) | al) + 0x106;
                            (ah, al) = ((ax >> 8) & 0xFF, ax & 0xFF);
                        }
                        else
                        {
                            ulong ax = ((ah << 8) | al) - 6;
                            al = ax & 0xFF;
                            ah = (ah - 1) & 0xFF;
                        }
                        set = FlagBits.Adjust | FlagBits.Carry;
                    }
                    al &= 0xF;
                    Registers[Rax] = (Registers[Rax] & ~0xFFFFUL) | (ah << 8) | al;
                    // SF, ZF, PF, OF undefined; QEMU keeps them as they were.
                    Rflags = (flags & ~(FlagBits.Carry | FlagBits.Adjust)) | set;
                    return null;
                }
            case Mnemonic.Aam:
                {
                    ulong divisor = i.Immediate8;
                    if (divisor == 0)
                    {
                        throw new GuestFault(ExceptionVector.DivideError);
                    }
                    ah = al / divisor;
                    al %= divisor;
                    break;
                }
            case Mnemonic.Aad:
                al = (al + ah * i.Immediate8) & 0xFF;
                ah = 0;
                break;
            default: // SALC
                al = cf ? 0xFFUL : 0;
                resultFlags = false;
                break;
        }
        Registers[Rax] = (Registers[Rax] & ~0xFFFFUL) | (ah << 8) | al;
        if (resultFlags)
        {
            ulong parity = (System.Numerics.BitOperations.PopCount(al) & 1) == 0 ? FlagBits.Parity : 0;
            ulong result = parity | (al == 0 ? FlagBits.Zero : 0) | ((al & 0x80) != 0 ? FlagBits.Sign : 0);
            // DAA and DAS set CF and AF as computed; AAM and AAD leave them (and OF) undefined: cleared, as QEMU does.
            Rflags = (flags & ~FlagBits.Status) | result | set;
        }
        return null;
    }
}
