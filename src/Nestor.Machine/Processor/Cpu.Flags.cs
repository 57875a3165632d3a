using System.Numerics;
using System.Runtime.CompilerServices;
using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

/// <summary>How the status flags (CF, PF, AF, ZF, SF, OF) are currently held: in <c>rflags</c>, or as the operands and
/// result of the last arithmetic instruction, from which they are computed only when something reads them.</summary>
internal enum FlagsKind : byte
{
    /// <summary>RFLAGS holds every flag.</summary>
    None,
    Add,
    Subtract,
    Logic,
    /// <summary>INC: as ADD of 1, but CF is the one saved in <c>flagsCarry</c> (INC and DEC leave CF alone).</summary>
    Increment,
    Decrement,
}

// Lazy flags. Most flag results are never read: a CMP is followed by one conditional jump that needs one or two of
// them, and an ADD's flags are usually overwritten by the next ADD. So the fast path records the operation, its
// operands and result (four stores), and the flags are computed when something reads RFLAGS (the Rflags property:
// PUSHF, interrupt delivery, the general path) — the technique of Bochs' lazy flags, and of QEMU's CC_OP. Conditional
// jumps after CMP/SUB/TEST/AND... evaluate their condition straight from the operands. The formulas are those of
// the SDM (Vol. 1 Appendix A, each instruction's "Flags Affected"), as in Cpu.Arithmetic.
public sealed partial class Cpu
{
    private ulong rflags = Rflags_Reserved;
    private FlagsKind flagsKind;
    private ulong flagsA, flagsB, flagsResult, flagsCarry;
    private int flagsSize = 8;

    /// <summary>RFLAGS, with the status flags computed if they are pending. Writing it replaces them all.</summary>
    public ulong Rflags
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            if (flagsKind != FlagsKind.None)
            {
                MaterializeFlags();
            }
            return rflags;
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        set
        {
            rflags = value;
            flagsKind = FlagsKind.None;
        }
    }

    private void MaterializeFlags()
    {
        ulong a = flagsA, b = flagsB, r = flagsResult;
        int size = flagsSize;
        ulong sign = SignBit(size);
        ulong f = ParityZeroSign(r, size);
        switch (flagsKind)
        {
            case FlagsKind.Add:
            case FlagsKind.Increment:
                if (flagsKind == FlagsKind.Add ? r < a : flagsCarry != 0)
                {
                    f |= C;
                }
                if (((a ^ r) & (b ^ r) & sign) != 0)
                {
                    f |= O;
                }
                f |= (a ^ b ^ r) & A;
                break;
            case FlagsKind.Subtract:
            case FlagsKind.Decrement:
                if (flagsKind == FlagsKind.Subtract ? a < b : flagsCarry != 0)
                {
                    f |= C;
                }
                if (((a ^ b) & (a ^ r) & sign) != 0)
                {
                    f |= O;
                }
                f |= (a ^ b ^ r) & A;
                break;
        }
        rflags = (rflags & ~FlagBits.Status) | f;
        flagsKind = FlagsKind.None;
    }

    /// <summary>CF, without computing the other flags (INC and DEC keep it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong CarryFlag() => flagsKind switch
    {
        FlagsKind.None => rflags & C,
        FlagsKind.Add => flagsResult < flagsA ? 1UL : 0,
        FlagsKind.Subtract => flagsA < flagsB ? 1UL : 0,
        FlagsKind.Logic => 0,
        _ => flagsCarry,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void SetLazyFlags(FlagsKind kind, ulong a, ulong b, ulong result, int size)
    {
        flagsKind = kind;
        flagsA = a;
        flagsB = b;
        flagsResult = result;
        flagsSize = size;
    }

    /// <summary>Evaluates a condition code (SDM Vol. 1 Appendix B), from the pending operands where it can.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool ConditionHolds(ConditionCode code)
    {
        if (flagsKind == FlagsKind.Subtract)
        {
            ulong a = flagsA, b = flagsB;
            int unused = 64 - 8 * flagsSize; // signed comparison of size-bit values: move their sign bits to bit 63
            switch (code)
            {
                case ConditionCode.e: return a == b;
                case ConditionCode.ne: return a != b;
                case ConditionCode.b: return a < b;
                case ConditionCode.ae: return a >= b;
                case ConditionCode.be: return a <= b;
                case ConditionCode.a: return a > b;
                case ConditionCode.l: return (long)(a << unused) < (long)(b << unused);
                case ConditionCode.ge: return (long)(a << unused) >= (long)(b << unused);
                case ConditionCode.le: return (long)(a << unused) <= (long)(b << unused);
                case ConditionCode.g: return (long)(a << unused) > (long)(b << unused);
            }
        }
        else if (flagsKind == FlagsKind.Logic)
        {
            // CF = OF = 0, so "less" is SF and "below" never holds.
            ulong r = flagsResult;
            bool negative = (r & SignBit(flagsSize)) != 0;
            switch (code)
            {
                case ConditionCode.e: return r == 0;
                case ConditionCode.ne: return r != 0;
                case ConditionCode.s or ConditionCode.l: return negative;
                case ConditionCode.ns or ConditionCode.ge: return !negative;
                case ConditionCode.le: return r == 0 || negative;
                case ConditionCode.g: return r != 0 && !negative;
                case ConditionCode.b or ConditionCode.o: return false;
                case ConditionCode.ae or ConditionCode.no: return true;
                case ConditionCode.be: return r == 0;
                case ConditionCode.a: return r != 0;
            }
        }
        else if (flagsKind is FlagsKind.Add or FlagsKind.Increment or FlagsKind.Decrement)
        {
            ulong r = flagsResult;
            switch (code)
            {
                case ConditionCode.e: return r == 0;
                case ConditionCode.ne: return r != 0;
                case ConditionCode.s: return (r & SignBit(flagsSize)) != 0;
                case ConditionCode.ns: return (r & SignBit(flagsSize)) == 0;
            }
        }
        return Condition(code);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong ParityZeroSign(ulong result, int size)
    {
        // PF: even parity of the low byte; ZF; SF. Branch-free.
        ulong f = (ulong)((~BitOperations.PopCount((uint)(result & 0xFF)) & 1) << 2);
        f |= (result & Mask(size)) == 0 ? Z : 0;
        f |= (result & SignBit(size)) != 0 ? S : 0;
        return f;
    }
}
