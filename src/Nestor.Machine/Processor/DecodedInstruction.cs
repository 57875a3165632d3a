using Iced.Intel;

namespace Nestor.Machine.Processor;

/// <summary>The interpreter's fast operations: the common instruction forms of compiled integer code, each with its
/// operands resolved at decode time to register indices, a size and an immediate, so that executing one reads a
/// few bytes of <see cref="DecodedInstruction"/> instead of asking Iced's accessors for every operand.
/// Everything else is <see cref="General"/> and goes through the full interpreter over Iced's
/// <see cref="Instruction"/>.</summary>
internal enum FastOperation : byte
{
    General,
    Nop,
    MoveRegisterRegister,
    MoveRegisterImmediate,
    MoveRegisterMemory,
    MoveMemoryRegister,
    MoveMemoryImmediate,
    ZeroExtendRegister,
    ZeroExtendMemory,
    SignExtendRegister,
    SignExtendMemory,
    LoadEffectiveAddress,
    ArithmeticRegisterRegister,
    ArithmeticRegisterImmediate,
    ArithmeticRegisterMemory,
    ArithmeticMemoryRegister,
    ArithmeticMemoryImmediate,
    IncrementRegister,
    DecrementRegister,
    NegateRegister,
    NotRegister,
    ShiftRegisterImmediate,
    JumpConditional,
    Jump,
    CallNear,
    ReturnNear,
    PushRegister,
    PopRegister,
    ConditionalMoveRegister,
    ConditionalMoveMemory,
    SetConditionRegister,
    /// <summary>Binary translation replaced this instruction with a callout into the VMM (its own operation is kept
    /// in <see cref="DecodedInstruction.Original"/> for the VMM to run it).</summary>
    Callout,
}

/// <summary>The two-operand arithmetic and logic instructions the fast path handles (ADC and SBB, rare in compiled
/// code, stay on the general path).</summary>
internal enum ArithmeticKind : byte
{
    Add,
    Or,
    And,
    Subtract,
    Xor,
    Compare,
    Test,
}

internal enum ShiftKind : byte
{
    ShiftLeft,
    ShiftRight,
    ShiftArithmeticRight,
}

/// <summary>One instruction of the decoded-instruction cache: Iced's decode, plus the compact form the fast path
/// executes (see <see cref="FastOperation"/>). Built once per decode, by <see cref="Compile"/>.</summary>
internal struct DecodedInstruction
{
    public const byte NoRegister = 0xFF;

    public Instruction Instruction;
    public FastOperation Operation;
    /// <summary>The operation a <see cref="FastOperation.Callout"/> replaced.</summary>
    public FastOperation Original;
    /// <summary>An <see cref="ArithmeticKind"/>, a <see cref="ShiftKind"/> or an Iced <see cref="ConditionCode"/>.</summary>
    public byte Kind;
    /// <summary>Operand size in bytes (of the destination).</summary>
    public byte Size;
    /// <summary>Source size in bytes, for MOVZX/MOVSX/MOVSXD.</summary>
    public byte SourceSize;
    /// <summary>General-purpose register indices (encoding order, RAX = 0).</summary>
    public byte Destination, Source;
    /// <summary>The memory operand: base and index register indices (or <see cref="NoRegister"/>), log2 of the
    /// scale, segment (0, or 1 = FS, 2 = GS: the only segments with a base in 64-bit mode, SDM Vol. 3A §3.2.4; outside
    /// it 3–6 for ES, CS, SS, DS) and a 32-bit address size (67h prefix, or 32-bit code).</summary>
    public byte Base, Index, ScaleShift, Segment;
    public bool Address32;
    /// <summary>The retired-instruction class (<see cref="InstructionClass"/>).</summary>
    public byte Class;
    /// <summary>The immediate (masked to the operand size), the shift count, or the branch target.</summary>
    public ulong Immediate;
    /// <summary>The displacement, or for a RIP-relative operand the absolute address (Iced resolves it, which is
    /// why a page is decoded per linear alias).</summary>
    public ulong Displacement;
    public ulong NextIp;

    /// <summary>Fills in the fast form of <paramref name="instruction"/>, or leaves <see cref="FastOperation.General"/>.</summary>
    public static DecodedInstruction Compile(in Instruction instruction, int bitness)
    {
        var d = new DecodedInstruction
        {
            Instruction = instruction,
            NextIp = instruction.NextIP,
            Class = InstructionTable.ClassByMnemonic[(int)instruction.Mnemonic],
            Base = NoRegister,
            Index = NoRegister,
        };
        d.Operation = Classify(ref d, instruction, bitness);
        return d;
    }

    private static FastOperation Classify(ref DecodedInstruction d, in Instruction i, int bitness)
    {
        // Prefixes that change an instruction's meaning beyond what the compact form records go the general way.
        if (i.HasRepPrefix || i.HasRepnePrefix || i.HasRepePrefix)
        {
            return FastOperation.General;
        }
        // Conditional jumps, moves and sets, by family (Iced knows which instructions they are).
        if (i.IsJccShortOrNear)
        {
            d.Kind = (byte)i.ConditionCode;
            d.Immediate = i.NearBranchTarget;
            return FastOperation.JumpConditional;
        }
        if (ConditionFamily[(int)i.Mnemonic] == Cmovcc)
        {
            d.Kind = (byte)i.ConditionCode;
            if (!Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size))
            {
                return FastOperation.General;
            }
            if (Register(i.Op1Kind, i.Op1Register, out d.Source, out _))
            {
                return FastOperation.ConditionalMoveRegister;
            }
            return i.Op1Kind == OpKind.Memory && Memory(ref d, i) ? FastOperation.ConditionalMoveMemory : FastOperation.General;
        }
        if (ConditionFamily[(int)i.Mnemonic] == Setcc)
        {
            d.Kind = (byte)i.ConditionCode;
            return Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size) ? FastOperation.SetConditionRegister : FastOperation.General;
        }
        switch (i.Mnemonic)
        {
            case Mnemonic.Nop:
            case Mnemonic.Endbr64:
            case Mnemonic.Pause:
                return FastOperation.Nop;
            case Mnemonic.Mov:
                return TwoOperand(ref d, i, FastOperation.MoveRegisterRegister, FastOperation.MoveRegisterImmediate,
                    FastOperation.MoveRegisterMemory, FastOperation.MoveMemoryRegister, FastOperation.MoveMemoryImmediate);
            case Mnemonic.Movzx:
            case Mnemonic.Movsx:
            case Mnemonic.Movsxd:
                {
                    bool zero = i.Mnemonic == Mnemonic.Movzx;
                    if (!Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size))
                    {
                        return FastOperation.General;
                    }
                    if (Register(i.Op1Kind, i.Op1Register, out d.Source, out d.SourceSize))
                    {
                        return zero ? FastOperation.ZeroExtendRegister : FastOperation.SignExtendRegister;
                    }
                    if (i.Op1Kind == OpKind.Memory && Memory(ref d, i))
                    {
                        d.SourceSize = (byte)i.MemorySize.GetSize();
                        return zero ? FastOperation.ZeroExtendMemory : FastOperation.SignExtendMemory;
                    }
                    return FastOperation.General;
                }
            case Mnemonic.Lea:
                return Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size) && Memory(ref d, i) && d.Size >= 4
                    ? FastOperation.LoadEffectiveAddress : FastOperation.General;
            case Mnemonic.Add: return Arithmetic(ref d, i, ArithmeticKind.Add);
            case Mnemonic.Or: return Arithmetic(ref d, i, ArithmeticKind.Or);
            case Mnemonic.And: return Arithmetic(ref d, i, ArithmeticKind.And);
            case Mnemonic.Sub: return Arithmetic(ref d, i, ArithmeticKind.Subtract);
            case Mnemonic.Xor: return Arithmetic(ref d, i, ArithmeticKind.Xor);
            case Mnemonic.Cmp: return Arithmetic(ref d, i, ArithmeticKind.Compare);
            case Mnemonic.Test: return Arithmetic(ref d, i, ArithmeticKind.Test);
            case Mnemonic.Inc:
            case Mnemonic.Dec:
            case Mnemonic.Neg:
            case Mnemonic.Not:
                if (i.HasLockPrefix || !Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size))
                {
                    return FastOperation.General;
                }
                return i.Mnemonic switch
                {
                    Mnemonic.Inc => FastOperation.IncrementRegister,
                    Mnemonic.Dec => FastOperation.DecrementRegister,
                    Mnemonic.Neg => FastOperation.NegateRegister,
                    _ => FastOperation.NotRegister,
                };
            case Mnemonic.Shl:
            case Mnemonic.Sal:
            case Mnemonic.Shr:
            case Mnemonic.Sar:
                {
                    if (!Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size))
                    {
                        return FastOperation.General;
                    }
                    ulong count;
                    if (i.OpCount == 1)
                    {
                        count = 1;
                    }
                    else if (i.Op1Kind == OpKind.Immediate8)
                    {
                        count = i.Immediate8;
                    }
                    else
                    {
                        return FastOperation.General; // a count in CL
                    }
                    count &= d.Size == 8 ? 63UL : 31UL;
                    if (count == 0 || count >= (ulong)d.Size * 8)
                    {
                        // A masked count of 0 changes no flags, and counts of at least the width (8- and 16-bit
                        // operands) have their own rules: both on the general path.
                        return FastOperation.General;
                    }
                    d.Immediate = count;
                    d.Kind = (byte)(i.Mnemonic switch
                    {
                        Mnemonic.Shr => ShiftKind.ShiftRight,
                        Mnemonic.Sar => ShiftKind.ShiftArithmeticRight,
                        _ => ShiftKind.ShiftLeft,
                    });
                    return FastOperation.ShiftRegisterImmediate;
                }
            case Mnemonic.Jmp:
                if (i.Op0Kind is OpKind.NearBranch16 or OpKind.NearBranch32 or OpKind.NearBranch64)
                {
                    d.Immediate = i.NearBranchTarget;
                    return FastOperation.Jump;
                }
                return FastOperation.General;
            case Mnemonic.Call:
                if (bitness == 64 && i.Op0Kind == OpKind.NearBranch64)
                {
                    d.Immediate = i.NearBranchTarget;
                    return FastOperation.CallNear;
                }
                return FastOperation.General;
            case Mnemonic.Ret:
                return bitness == 64 && i.OpCount == 0 && i.CodeSize == CodeSize.Code64 ? FastOperation.ReturnNear : FastOperation.General;
            case Mnemonic.Push:
            case Mnemonic.Pop:
                if (bitness == 64 && Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size) && d.Size == 8)
                {
                    return i.Mnemonic == Mnemonic.Push ? FastOperation.PushRegister : FastOperation.PopRegister;
                }
                return FastOperation.General;
            default:
                return FastOperation.General;
        }
    }

    private const byte Cmovcc = 1, Setcc = 2;

    /// <summary>CMOVcc and SETcc by mnemonic, built once from the sixteen condition suffixes (SDM Vol. 1 Appendix B).</summary>
    private static readonly byte[] ConditionFamily = BuildConditionFamilies();

    private static byte[] BuildConditionFamilies()
    {
        var family = new byte[Enum.GetValues<Mnemonic>().Max(m => (int)m) + 1];
        foreach (string suffix in (string[])["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g"])
        {
            family[(int)Enum.Parse<Mnemonic>("Cmov" + suffix, ignoreCase: true)] = Cmovcc;
            family[(int)Enum.Parse<Mnemonic>("Set" + suffix, ignoreCase: true)] = Setcc;
        }
        return family;
    }

    private static FastOperation Arithmetic(ref DecodedInstruction d, in Instruction i, ArithmeticKind kind)
    {
        d.Kind = (byte)kind;
        return TwoOperand(ref d, i, FastOperation.ArithmeticRegisterRegister, FastOperation.ArithmeticRegisterImmediate,
            FastOperation.ArithmeticRegisterMemory, FastOperation.ArithmeticMemoryRegister, FastOperation.ArithmeticMemoryImmediate);
    }

    /// <summary>Sorts a two-operand instruction (MOV and the ALU group) by its operand forms.</summary>
    private static FastOperation TwoOperand(ref DecodedInstruction d, in Instruction i, FastOperation registerRegister,
        FastOperation registerImmediate, FastOperation registerMemory, FastOperation memoryRegister, FastOperation memoryImmediate)
    {
        if (i.OpCount != 2)
        {
            return FastOperation.General;
        }
        if (Register(i.Op0Kind, i.Op0Register, out d.Destination, out d.Size))
        {
            if (Register(i.Op1Kind, i.Op1Register, out d.Source, out byte sourceSize))
            {
                return sourceSize == d.Size ? registerRegister : FastOperation.General;
            }
            if (ImmediateOperand(ref d, i))
            {
                return registerImmediate;
            }
            return i.Op1Kind == OpKind.Memory && Memory(ref d, i) ? registerMemory : FastOperation.General;
        }
        if (i.Op0Kind != OpKind.Memory || !Memory(ref d, i))
        {
            return FastOperation.General;
        }
        d.Size = (byte)i.MemorySize.GetSize();
        if (d.Size is not (1 or 2 or 4 or 8))
        {
            return FastOperation.General;
        }
        if (Register(i.Op1Kind, i.Op1Register, out d.Source, out byte size) && size == d.Size)
        {
            return memoryRegister;
        }
        return ImmediateOperand(ref d, i) ? memoryImmediate : FastOperation.General;
    }

    /// <summary>Operand 1 as an immediate, sign-extended by Iced where the encoding says so and masked to the
    /// operand size (a 64-bit MOV's imm64 or imm32-sign-extended arrives whole).</summary>
    private static bool ImmediateOperand(ref DecodedInstruction d, in Instruction i)
    {
        switch (i.Op1Kind)
        {
            case OpKind.Immediate8:
            case OpKind.Immediate16:
            case OpKind.Immediate32:
            case OpKind.Immediate64:
            case OpKind.Immediate8to16:
            case OpKind.Immediate8to32:
            case OpKind.Immediate8to64:
            case OpKind.Immediate32to64:
                ulong value = i.GetImmediate(1);
                d.Immediate = d.Size == 8 ? value : value & ((1UL << (d.Size * 8)) - 1);
                return true;
            default:
                return false;
        }
    }

    /// <summary>A general-purpose register operand as an index and a size. The legacy high-byte registers
    /// (AH, CH, DH, BH) are left to the general path.</summary>
    private static bool Register(OpKind kind, Register r, out byte index, out byte size)
    {
        index = 0;
        size = 0;
        if (kind != OpKind.Register)
        {
            return false;
        }
        if (r >= Iced.Intel.Register.RAX && r <= Iced.Intel.Register.R15)
        {
            (index, size) = ((byte)(r - Iced.Intel.Register.RAX), 8);
        }
        else if (r >= Iced.Intel.Register.EAX && r <= Iced.Intel.Register.R15D)
        {
            (index, size) = ((byte)(r - Iced.Intel.Register.EAX), 4);
        }
        else if (r >= Iced.Intel.Register.AX && r <= Iced.Intel.Register.R15W)
        {
            (index, size) = ((byte)(r - Iced.Intel.Register.AX), 2);
        }
        else if (r >= Iced.Intel.Register.AL && r <= Iced.Intel.Register.BL)
        {
            (index, size) = ((byte)(r - Iced.Intel.Register.AL), 1);
        }
        else if (r >= Iced.Intel.Register.SPL && r <= Iced.Intel.Register.DIL)
        {
            (index, size) = ((byte)(r - Iced.Intel.Register.SPL + 4), 1);
        }
        else if (r >= Iced.Intel.Register.R8L && r <= Iced.Intel.Register.R15L)
        {
            (index, size) = ((byte)(r - Iced.Intel.Register.R8L + 8), 1);
        }
        else
        {
            return false;
        }
        return true;
    }

    /// <summary>The memory operand in compact form; false for forms the fast path leaves alone.</summary>
    private static bool Memory(ref DecodedInstruction d, in Instruction i)
    {
        var segment = i.MemorySegment;
        d.Segment = segment == Iced.Intel.Register.FS ? (byte)1 : segment == Iced.Intel.Register.GS ? (byte)2 : (byte)0;
        if (i.CodeSize != CodeSize.Code64)
        {
            // Outside 64-bit mode every segment has a base (SDM Vol. 3A §3.4.2): 3 = ES, 4 = CS, 5 = SS, 6 = DS; and
            // 16-bit addressing (BX+SI and the rest, disp16) stays on the general path.
            if (d.Segment == 0)
            {
                d.Segment = segment switch
                {
                    Iced.Intel.Register.ES => 3,
                    Iced.Intel.Register.CS => 4,
                    Iced.Intel.Register.SS => 5,
                    _ => 6,
                };
            }
            if (i.MemoryBase == Iced.Intel.Register.None && i.MemoryIndex == Iced.Intel.Register.None && i.MemoryDisplSize == 2)
            {
                return false;
            }
        }
        if (i.IsIPRelativeMemoryOperand)
        {
            d.Displacement = i.IPRelativeMemoryAddress;
            d.Address32 = false;
            return true;
        }
        d.Displacement = i.MemoryDisplacement64;
        if (i.MemoryBase != Iced.Intel.Register.None)
        {
            if (!Register(OpKind.Register, i.MemoryBase, out d.Base, out byte size) || size < 4)
            {
                return false;
            }
            d.Address32 = size == 4;
        }
        if (i.MemoryIndex != Iced.Intel.Register.None)
        {
            if (!Register(OpKind.Register, i.MemoryIndex, out d.Index, out byte size) || size < 4)
            {
                return false;
            }
            d.Address32 |= size == 4;
            d.ScaleShift = (byte)System.Numerics.BitOperations.Log2((uint)i.MemoryIndexScale);
        }
        return true;
    }
}
