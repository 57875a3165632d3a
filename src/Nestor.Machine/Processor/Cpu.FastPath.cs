using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

// The fast path: the common forms of compiled integer code (see FastOperation), executed from their compact decoded
// form with lazy flags. Semantics are those of the general path (Cpu.Execute and friends), which the unit tests and
// the differential tests against KVM check on both paths; one difference is deliberate: an arithmetic instruction
// with a memory destination sets its flags only after the write succeeded, so a page fault on the write leaves RFLAGS
// as it was (the SDM's fault semantics: a faulting instruction changes no architectural state).
public sealed partial class Cpu
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref ulong Gpr(int index) => ref Unsafe.Add(ref state.Registers[0], index);

    /// <summary>The low <paramref name="size"/> bytes (1–8) as a mask, without a branch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong SizeMask(int size) => ulong.MaxValue >> (64 - 8 * size);

    /// <summary>Writes a register with x86-64's rules (SDM Vol. 1 §3.4.1.1): a 32-bit write zeroes bits 63:32, 8- and
    /// 16-bit writes keep the rest.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void WriteGpr(int index, int size, ulong value)
    {
        ref ulong g = ref Gpr(index);
        if (size == 8)
        {
            g = value;
        }
        else if (size == 4)
        {
            g = (uint)value;
        }
        else
        {
            ulong m = SizeMask(size);
            g = (g & ~m) | (value & m);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong AddressWithoutSegment(ref DecodedInstruction d)
    {
        ulong address = d.Displacement;
        if (d.Base != DecodedInstruction.NoRegister)
        {
            address += Gpr(d.Base);
        }
        if (d.Index != DecodedInstruction.NoRegister)
        {
            address += Gpr(d.Index) << d.ScaleShift;
        }
        return d.Address32 ? (uint)address : address;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ulong Address(ref DecodedInstruction d)
    {
        ulong address = AddressWithoutSegment(ref d);
        if (d.Segment != 0)
        {
            if (d.Segment > 2)
            {
                return (uint)(address + LegacySegmentBase(d.Segment)); // outside 64-bit mode: 32-bit linear addresses
            }
            address += d.Segment == 1 ? Fs.Base : Gs.Base;
        }
        return address;
    }

    /// <summary>Computes a two-operand arithmetic or logic result; the flags are recorded by the caller once the
    /// result is stored.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Compute(ArithmeticKind kind, ulong a, ulong b, ulong mask, out FlagsKind flags)
    {
        switch (kind)
        {
            case ArithmeticKind.Add:
                flags = FlagsKind.Add;
                return (a + b) & mask;
            case ArithmeticKind.Subtract:
            case ArithmeticKind.Compare:
                flags = FlagsKind.Subtract;
                return (a - b) & mask;
            case ArithmeticKind.Or:
                flags = FlagsKind.Logic;
                return a | b;
            case ArithmeticKind.Xor:
                flags = FlagsKind.Logic;
                return a ^ b;
            default: // And, Test
                flags = FlagsKind.Logic;
                return a & b;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Writes(ArithmeticKind kind) => kind is not (ArithmeticKind.Compare or ArithmeticKind.Test);

    /// <summary>Executes one instruction of a <see cref="FastOperation"/> other than General.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecuteFast(ref DecodedInstruction d)
    {
        Rip = d.NextIp;
        int size = d.Size;
        switch (d.Operation)
        {
            case FastOperation.Nop:
                return;
            case FastOperation.MoveRegisterRegister:
                WriteGpr(d.Destination, size, Gpr(d.Source));
                return;
            case FastOperation.MoveRegisterImmediate:
                WriteGpr(d.Destination, size, d.Immediate);
                return;
            case FastOperation.MoveRegisterMemory:
                WriteGpr(d.Destination, size, ReadLinear(Address(ref d), size));
                return;
            case FastOperation.MoveMemoryRegister:
                WriteLinear(Address(ref d), size, Gpr(d.Source));
                return;
            case FastOperation.MoveMemoryImmediate:
                WriteLinear(Address(ref d), size, d.Immediate);
                return;
            case FastOperation.ZeroExtendRegister:
                WriteGpr(d.Destination, size, Gpr(d.Source) & SizeMask(d.SourceSize));
                return;
            case FastOperation.ZeroExtendMemory:
                WriteGpr(d.Destination, size, ReadLinear(Address(ref d), d.SourceSize));
                return;
            case FastOperation.SignExtendRegister:
                WriteGpr(d.Destination, size, SignExtend(Gpr(d.Source), d.SourceSize));
                return;
            case FastOperation.SignExtendMemory:
                WriteGpr(d.Destination, size, SignExtend(ReadLinear(Address(ref d), d.SourceSize), d.SourceSize));
                return;
            case FastOperation.LoadEffectiveAddress:
                WriteGpr(d.Destination, size, AddressWithoutSegment(ref d));
                return;
            case FastOperation.ArithmeticRegisterRegister:
            case FastOperation.ArithmeticRegisterImmediate:
            case FastOperation.ArithmeticRegisterMemory:
                {
                    ulong mask = SizeMask(size);
                    ulong a = Gpr(d.Destination) & mask;
                    ulong b = d.Operation == FastOperation.ArithmeticRegisterRegister ? Gpr(d.Source) & mask
                        : d.Operation == FastOperation.ArithmeticRegisterImmediate ? d.Immediate
                        : ReadLinear(Address(ref d), size);
                    var kind = (ArithmeticKind)d.Kind;
                    ulong r = Compute(kind, a, b, mask, out FlagsKind flags);
                    if (Writes(kind))
                    {
                        WriteGpr(d.Destination, size, r);
                    }
                    SetLazyFlags(flags, a, b, r, size);
                    return;
                }
            case FastOperation.ArithmeticMemoryRegister:
            case FastOperation.ArithmeticMemoryImmediate:
                {
                    ulong mask = SizeMask(size);
                    ulong address = Address(ref d);
                    ulong a = ReadLinear(address, size);
                    ulong b = d.Operation == FastOperation.ArithmeticMemoryRegister ? Gpr(d.Source) & mask : d.Immediate;
                    var kind = (ArithmeticKind)d.Kind;
                    ulong r = Compute(kind, a, b, mask, out FlagsKind flags);
                    if (Writes(kind))
                    {
                        WriteLinear(address, size, r);
                    }
                    SetLazyFlags(flags, a, b, r, size);
                    return;
                }
            case FastOperation.IncrementRegister:
            case FastOperation.DecrementRegister:
                {
                    ulong mask = SizeMask(size);
                    ulong a = Gpr(d.Destination) & mask;
                    bool increment = d.Operation == FastOperation.IncrementRegister;
                    ulong r = (increment ? a + 1 : a - 1) & mask;
                    flagsCarry = CarryFlag();
                    WriteGpr(d.Destination, size, r);
                    SetLazyFlags(increment ? FlagsKind.Increment : FlagsKind.Decrement, a, 1, r, size);
                    return;
                }
            case FastOperation.NegateRegister:
                {
                    ulong mask = SizeMask(size);
                    ulong a = Gpr(d.Destination) & mask;
                    ulong r = (0 - a) & mask;
                    WriteGpr(d.Destination, size, r);
                    SetLazyFlags(FlagsKind.Subtract, 0, a, r, size);
                    return;
                }
            case FastOperation.NotRegister:
                WriteGpr(d.Destination, size, ~Gpr(d.Destination));
                return;
            case FastOperation.ShiftRegisterImmediate:
                ShiftFast(ref d);
                return;
            case FastOperation.JumpConditional:
                if (ConditionHolds((ConditionCode)d.Kind))
                {
                    Rip = d.Immediate;
                }
                return;
            case FastOperation.Jump:
                Rip = d.Immediate;
                return;
            case FastOperation.CallNear:
                {
                    ref ulong rsp = ref Gpr(Rsp);
                    WriteLinear(rsp - 8, 8, d.NextIp);
                    rsp -= 8;
                    Rip = d.Immediate;
                    return;
                }
            case FastOperation.ReturnNear:
                {
                    ref ulong rsp = ref Gpr(Rsp);
                    Rip = ReadLinear(rsp, 8);
                    rsp += 8;
                    return;
                }
            case FastOperation.PushRegister:
                {
                    ulong value = Gpr(d.Destination); // PUSH RSP pushes the value before the push
                    ref ulong rsp = ref Gpr(Rsp);
                    WriteLinear(rsp - 8, 8, value);
                    rsp -= 8;
                    return;
                }
            case FastOperation.PopRegister:
                {
                    ref ulong rsp = ref Gpr(Rsp);
                    ulong value = ReadLinear(rsp, 8);
                    rsp += 8;
                    Gpr(d.Destination) = value; // POP RSP: the value read wins over the increment
                    return;
                }
            case FastOperation.ConditionalMoveRegister:
            case FastOperation.ConditionalMoveMemory:
                {
                    // The source is read (and may fault) whatever the condition; a 32-bit CMOV zeroes bits 63:32 of
                    // its destination even when it does not move (SDM Vol. 2A CMOVcc).
                    ulong value = d.Operation == FastOperation.ConditionalMoveRegister ? Gpr(d.Source) : ReadLinear(Address(ref d), size);
                    if (ConditionHolds((ConditionCode)d.Kind))
                    {
                        WriteGpr(d.Destination, size, value);
                    }
                    else if (size == 4)
                    {
                        Gpr(d.Destination) = (uint)Gpr(d.Destination);
                    }
                    return;
                }
            case FastOperation.SetConditionRegister:
                WriteGpr(d.Destination, 1, ConditionHolds((ConditionCode)d.Kind) ? 1UL : 0);
                return;
            case FastOperation.Callout:
                CalloutToVmm(ref d);
                return;
            default:
                throw new InvalidOperationException($"fast operation {d.Operation} has no handler");
        }
    }

    /// <summary>SHL/SHR/SAR of a register by an immediate count, masked and nonzero and below the operand width
    /// (checked at decode time); every status flag is written, so no pending flags are needed. Same formulas as
    /// <see cref="Shift"/>.</summary>
    private void ShiftFast(ref DecodedInstruction d)
    {
        int size = d.Size;
        int count = (int)d.Immediate;
        ulong mask = SizeMask(size);
        ulong sign = SignBit(size);
        ulong a = Gpr(d.Destination) & mask;
        ulong r;
        ulong f;
        switch ((ShiftKind)d.Kind)
        {
            case ShiftKind.ShiftLeft:
                {
                    r = (a << count) & mask;
                    bool cf = ((a >> (size * 8 - count)) & 1) != 0;
                    f = ParityZeroSign(r, size) | (cf ? C : 0) | ((((r & sign) != 0) ^ cf) ? O : 0);
                    break;
                }
            case ShiftKind.ShiftRight:
                r = a >> count;
                f = ParityZeroSign(r, size) | ((a >> (count - 1)) & 1) | (count == 1 && (a & sign) != 0 ? O : 0);
                break;
            default:
                {
                    long s = (long)SignExtend(a, size);
                    r = (ulong)(s >> count) & mask;
                    f = ParityZeroSign(r, size) | ((ulong)(s >> (count - 1)) & 1);
                    break;
                }
        }
        WriteGpr(d.Destination, size, r);
        rflags = (rflags & ~FlagBits.Status) | f;
        flagsKind = FlagsKind.None;
    }
}
