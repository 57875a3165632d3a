using Iced.Intel;
using Nestor.Machine.Architecture;

namespace Nestor.Machine.Processor;

// The x87 FPU (SDM Vol. 1 chapter 8): the control instructions (FNINIT, FNSTSW, FNSTCW, FLDCW, FNCLEX, WAIT,
// FNSTENV/FLDENV, FNSAVE/FRSTOR, FFREE, FINCSTP/FDECSTP, FNOP) and the data moves (FLD/FST/FSTP of m32, m64, m80 and
// ST(i), FLD1/FLDZ, FXCH, FCHS, FABS). No arithmetic: FADD, FMUL, FCOM and the rest have no rows, so they raise #UD
// and are counted as not modelled (RecordUnmodelled), as every unmodelled instruction is; so is an exception the
// machine would have to deliver through FERR# (CR0.NE = 0) or a masked-off overflow/underflow/precision response it
// does not model. Nothing here computes a value it is not sure of.
public sealed partial class Cpu
{
    // FSW bits (SDM Vol. 1 §8.1.3, Figure 8-5).
    private const ushort FswInvalid = 1 << 0, FswDenormal = 1 << 1, FswOverflow = 1 << 3, FswUnderflow = 1 << 4,
        FswPrecision = 1 << 5, FswStackFault = 1 << 6, FswC1 = 1 << 9, FswTopMask = 7 << 11;

    // The QNaN floating-point indefinite (SDM Vol. 1 §4.8.3.7, Table 4-3): what a masked invalid operation produces.
    private const ulong IndefiniteSignificand = 0xC000_0000_0000_0000;
    private const ushort IndefiniteSignExponent = 0xFFFF;

    private ref X87State Fpu => ref state.X87;

    private int FpuTop => (Fpu.Status >> 11) & 7;

    private void SetFpuTop(int top) => Fpu.Status = (ushort)((Fpu.Status & ~FswTopMask) | ((top & 7) << 11));

    private int PhysicalOf(int stackIndex) => (FpuTop + stackIndex) & 7;

    private bool StackEmpty(int stackIndex) => ((Fpu.Tag >> (2 * PhysicalOf(stackIndex))) & 3) == 3;

    private static int TagOf(in X87Register r)
    {
        int exponent = r.SignExponent & 0x7FFF;
        if (exponent == 0x7FFF)
        {
            return 2;                                   // infinity or NaN: special
        }
        if (exponent == 0)
        {
            return r.Significand == 0 ? 1 : 2;          // zero, or a denormal: special
        }
        return (r.Significand >> 63) != 0 ? 0 : 2;      // valid, or an unnormal: special
    }

    private void SetTag(int physical, int tag) => Fpu.Tag = (ushort)((Fpu.Tag & ~(3 << (2 * physical))) | (tag << (2 * physical)));

    private void WriteStack(int stackIndex, X87Register value)
    {
        int physical = PhysicalOf(stackIndex);
        Fpu.Registers[physical] = value;
        SetTag(physical, TagOf(value));
    }

    private X87Register ReadStack(int stackIndex) => Fpu.Registers[PhysicalOf(stackIndex)];

    private void Pop()
    {
        SetTag(PhysicalOf(0), 3);
        SetFpuTop(FpuTop + 1);
    }

    /// <summary>Raises the x87 exception flags in <paramref name="flags"/>: true when all of them are masked (the
    /// masked response goes on), false when one is unmasked (the flag, ES and B are set and the instruction leaves its
    /// destination alone; the next waiting x87 instruction delivers it, SDM Vol. 1 §8.7).</summary>
    private bool RaiseFpuException(ushort flags)
    {
        Fpu.Status |= flags;
        Fpu.UpdateErrorSummary();
        return (flags & ~Fpu.Control & 0x3F) == 0;
    }

    /// <summary>CR0.EM or CR0.TS makes every x87 instruction raise #NM (SDM Vol. 3A §2.5, Table 2-2; §9.2); WAIT/FWAIT
    /// only when TS and MP are both set.</summary>
    private void CheckFpuAvailable(bool wait)
    {
        bool unavailable = wait
            ? (Cr0 & (Architecture.Cr0.TaskSwitched | Architecture.Cr0.MonitorCoprocessor)) == (Architecture.Cr0.TaskSwitched | Architecture.Cr0.MonitorCoprocessor)
            : (Cr0 & (Architecture.Cr0.Emulation | Architecture.Cr0.TaskSwitched)) != 0;
        if (unavailable)
        {
            throw new GuestFault(ExceptionVector.DeviceNotAvailable);
        }
    }

    /// <summary>A waiting x87 instruction first delivers a pending unmasked exception (FSW.ES): #MF when CR0.NE is set
    /// (native error reporting, SDM Vol. 1 §8.7, Vol. 3A §6.15 "Interrupt 16"); the PC-style FERR#/IRQ 13 path of
    /// CR0.NE = 0 is not modelled.</summary>
    private void DeliverPendingFpuException(in Instruction i)
    {
        if ((Fpu.Status & 0x80) == 0)
        {
            return;
        }
        if ((Cr0 & Architecture.Cr0.NumericError) != 0)
        {
            throw new GuestFault(ExceptionVector.FloatingPointError);
        }
        RecordUnmodelled("x87 error reporting through FERR# (CR0.NE = 0)", i.Code.CpuidFeatures());
        throw GuestFault.InvalidOpcode();
    }

    /// <summary>FOP, FIP and FDP (SDM Vol. 1 §8.1.8, §8.1.9): every x87 instruction but the control ones records its
    /// opcode (the low 3 bits of its D8–DF byte and its ModR/M byte), its address and its memory operand's.</summary>
    private void RecordFpuInstruction(in Instruction i)
    {
        ulong linear = Cs.Base + instructionStart;
        int n = 0;
        byte b = (byte)ReadLinear(linear, 1);
        // Skip the legacy prefixes and, in 64-bit mode, REX (at most 15 bytes make an instruction).
        while (n < 14 && (b is 0x26 or 0x2E or 0x36 or 0x3E or 0x64 or 0x65 or 0x66 or 0x67 or 0xF0 or 0xF2 or 0xF3 or 0x9B
            || (Bitness == 64 && b is >= 0x40 and <= 0x4F)))
        {
            b = (byte)ReadLinear(linear + (ulong)++n, 1);
        }
        byte modrm = (byte)ReadLinear(linear + (ulong)n + 1, 1);
        Fpu.Opcode = (ushort)(((b & 7) << 8) | modrm);
        Fpu.InstructionPointer = instructionStart;
        Fpu.InstructionSelector = Cs.Selector;
        if (i.OpCount > 0 && i.GetOpKind(0) == OpKind.Memory || i.OpCount > 1 && i.GetOpKind(1) == OpKind.Memory)
        {
            Fpu.OperandPointer = EffectiveOffset(i);
            Fpu.OperandSelector = SegmentOf(i.MemorySegment).Selector;
        }
    }

    // The memory operand's offset within its segment (FDP holds the offset, SDM Vol. 1 §8.1.8).
    private ulong EffectiveOffset(in Instruction i)
    {
        ulong linear = EffectiveAddress(i);
        return Bitness == 64 && i.MemorySegment is not (Register.FS or Register.GS) ? linear : linear - SegmentOf(i.MemorySegment).Base;
    }

    private ref Segment SegmentOf(Register segment)
    {
        switch (segment)
        {
            case Register.ES: return ref state.Es;
            case Register.CS: return ref state.Cs;
            case Register.SS: return ref state.Ss;
            case Register.FS: return ref state.Fs;
            case Register.GS: return ref state.Gs;
            default: return ref state.Ds;
        }
    }

    /// <summary>The x87 instructions the machine executes (the rows of Cpu.InstructionTable.cs).</summary>
    private StopReason? X87Instruction(in Instruction i)
    {
        bool wait = i.Mnemonic == Mnemonic.Wait;
        CheckFpuAvailable(wait);
        // The no-wait forms (FN…) do not look at pending exceptions; Iced decodes 9B D9 /7 and the like as the
        // waiting mnemonics (FSTCW, FSTSW, FINIT, FCLEX, FSTENV, FSAVE), which do.
        bool noWait = i.Mnemonic is Mnemonic.Fninit or Mnemonic.Fnstsw or Mnemonic.Fnstcw or Mnemonic.Fnclex or Mnemonic.Fnstenv or Mnemonic.Fnsave;
        if (!noWait)
        {
            DeliverPendingFpuException(i);
        }
        switch (i.Mnemonic)
        {
            case Mnemonic.Wait:
                return null;
            case Mnemonic.Fninit or Mnemonic.Finit:
                Fpu.Initialize();
                return null;
            case Mnemonic.Fnclex or Mnemonic.Fclex:
                // Clears the exception flags, SF, ES and B (SDM Vol. 2A, FCLEX/FNCLEX); C0–C3 are undefined, kept.
                Fpu.Status &= 0x7F00;
                return null;
            case Mnemonic.Fnstsw or Mnemonic.Fstsw:
                if (i.GetOpKind(0) == OpKind.Register)
                {
                    Registers[0] = (Registers[0] & ~0xFFFFUL) | Fpu.Status;   // FNSTSW AX
                }
                else
                {
                    WriteLinear(EffectiveAddress(i), 2, Fpu.Status);
                }
                return null;
            case Mnemonic.Fnstcw or Mnemonic.Fstcw:
                WriteLinear(EffectiveAddress(i), 2, Fpu.Control);
                return null;
            case Mnemonic.Fldcw:
                // Bits 6 and 13–15 are reserved; bit 6 reads as 1 on every processor since the 387 (SDM Vol. 1 §8.1.5).
                Fpu.Control = (ushort)((ReadLinear(EffectiveAddress(i), 2) & 0x1F3F) | 0x40);
                Fpu.UpdateErrorSummary();
                return null;
            case Mnemonic.Fnstenv or Mnemonic.Fstenv:
                StoreFpuEnvironment(i, EffectiveAddress(i));
                Fpu.Control |= 0x3F; // then every exception is masked (SDM Vol. 2A, FSTENV/FNSTENV)
                Fpu.UpdateErrorSummary();
                return null;
            case Mnemonic.Fldenv:
                LoadFpuEnvironment(i, EffectiveAddress(i));
                return null;
            case Mnemonic.Fnsave or Mnemonic.Fsave:
                {
                    ulong address = EffectiveAddress(i);
                    int length = StoreFpuEnvironment(i, address);
                    for (int n = 0; n < 8; n++)
                    {
                        WriteExtended(address + (ulong)length + (ulong)n * 10, ReadStack(n));
                    }
                    Fpu.Initialize(); // FSAVE then initializes the FPU (SDM Vol. 2A, FSAVE/FNSAVE)
                    return null;
                }
            case Mnemonic.Frstor:
                {
                    ulong address = EffectiveAddress(i);
                    int length = LoadFpuEnvironment(i, address);
                    ushort tag = Fpu.Tag;
                    for (int n = 0; n < 8; n++)
                    {
                        Fpu.Registers[PhysicalOf(n)] = ReadExtended(address + (ulong)length + (ulong)n * 10);
                    }
                    Fpu.Tag = tag;
                    return null;
                }
        }
        RecordFpuInstruction(i);
        switch (i.Mnemonic)
        {
            case Mnemonic.Fnop:
                return null;
            case Mnemonic.Ffree:
                SetTag(PhysicalOf(i.Op0Register - Register.ST0), 3);
                return null;
            case Mnemonic.Fincstp:
                SetFpuTop(FpuTop + 1);
                Fpu.Status &= unchecked((ushort)~FswC1);
                return null;
            case Mnemonic.Fdecstp:
                SetFpuTop(FpuTop - 1);
                Fpu.Status &= unchecked((ushort)~FswC1);
                return null;
            case Mnemonic.Fld:
                return LoadFloat(i);
            case Mnemonic.Fld1:
                Push(new X87Register { Significand = 0x8000_0000_0000_0000, SignExponent = 0x3FFF });
                return null;
            case Mnemonic.Fldz:
                Push(default);
                return null;
            case Mnemonic.Fst or Mnemonic.Fstp:
                return StoreFloat(i, pop: i.Mnemonic == Mnemonic.Fstp);
            case Mnemonic.Fxch:
                {
                    int other = i.OpCount > 1 ? i.Op1Register - Register.ST0 : 1;
                    if (StackEmpty(0) || StackEmpty(other))
                    {
                        // Stack underflow (SDM Vol. 2A, FXCH): masked, the empty registers become the indefinite.
                        if (!RaiseFpuException(FswInvalid | FswStackFault))
                        {
                            return null;
                        }
                        if (StackEmpty(0))
                        {
                            WriteStack(0, Indefinite);
                        }
                        if (StackEmpty(other))
                        {
                            WriteStack(other, Indefinite);
                        }
                    }
                    var top = ReadStack(0);
                    WriteStack(0, ReadStack(other));
                    WriteStack(other, top);
                    Fpu.Status &= unchecked((ushort)~FswC1);
                    return null;
                }
            case Mnemonic.Fchs or Mnemonic.Fabs:
                {
                    if (StackEmpty(0))
                    {
                        if (RaiseFpuException(FswInvalid | FswStackFault))
                        {
                            Fpu.Status &= unchecked((ushort)~FswC1);
                            WriteStack(0, Indefinite);
                        }
                        return null;
                    }
                    var value = ReadStack(0);
                    value.SignExponent = i.Mnemonic == Mnemonic.Fchs ? (ushort)(value.SignExponent ^ 0x8000) : (ushort)(value.SignExponent & 0x7FFF);
                    WriteStack(0, value);
                    Fpu.Status &= unchecked((ushort)~FswC1);
                    return null;
                }
        }
        return Unimplemented(i);
    }

    private static X87Register Indefinite => new() { Significand = IndefiniteSignificand, SignExponent = IndefiniteSignExponent };

    /// <summary>Pushes <paramref name="value"/>: TOP − 1 becomes ST(0). A full stack (the new ST(0) not empty) is a
    /// stack overflow: IE and SF with C1 = 1; masked, the indefinite is pushed (SDM Vol. 1 §8.5.1.1).</summary>
    private void Push(X87Register value)
    {
        int physical = (FpuTop - 1) & 7;
        Fpu.Status &= unchecked((ushort)~FswC1);
        if (((Fpu.Tag >> (2 * physical)) & 3) != 3)
        {
            if (!RaiseFpuException(FswInvalid | FswStackFault | FswC1))
            {
                return;
            }
            value = Indefinite;
        }
        SetFpuTop(FpuTop - 1);
        WriteStack(0, value);
    }

    private StopReason? LoadFloat(in Instruction i)
    {
        X87Register value;
        if (i.GetOpKind(0) == OpKind.Register)
        {
            int source = i.Op0Register - Register.ST0;
            if (StackEmpty(source))
            {
                // Stack underflow: masked, the indefinite is pushed; unmasked, nothing.
                if (RaiseFpuException(FswInvalid | FswStackFault))
                {
                    Push(Indefinite);
                }
                return null;
            }
            value = ReadStack(source);
        }
        else
        {
            ulong address = EffectiveAddress(i);
            switch (i.MemorySize)
            {
                case MemorySize.Float80:
                    value = ReadExtended(address);
                    break;
                case MemorySize.Float32:
                    if (!X87Conversion.Widen(ReadLinear(address, 4), X87Conversion.Single, out value, out ushort flags32) && !RaiseFpuException(flags32))
                    {
                        return null;
                    }
                    break;
                default:
                    if (!X87Conversion.Widen(ReadLinear(address, 8), X87Conversion.Double, out value, out ushort flags64) && !RaiseFpuException(flags64))
                    {
                        return null;
                    }
                    break;
            }
        }
        Push(value);
        return null;
    }

    private StopReason? StoreFloat(in Instruction i, bool pop)
    {
        Fpu.Status &= unchecked((ushort)~FswC1);
        X87Register value;
        if (StackEmpty(0))
        {
            // Stack underflow: masked, the indefinite is stored (SDM Vol. 1 §8.5.1.1); unmasked, nothing is.
            if (!RaiseFpuException(FswInvalid | FswStackFault))
            {
                return null;
            }
            value = Indefinite;
        }
        else
        {
            value = ReadStack(0);
        }
        if (i.GetOpKind(0) == OpKind.Register)
        {
            WriteStack(i.Op0Register - Register.ST0, value);
        }
        else if (i.MemorySize == MemorySize.Float80)
        {
            WriteExtended(EffectiveAddress(i), value);
        }
        else
        {
            var format = i.MemorySize == MemorySize.Float32 ? X87Conversion.Single : X87Conversion.Double;
            ulong bits = X87Conversion.Narrow(value, format, (Fpu.Control >> 10) & 3, (Fpu.Control & FswUnderflow) == 0, out ushort flags, out bool roundedUp);
            if (flags != 0)
            {
                bool masked = (flags & ~Fpu.Control & 0x3F) == 0;
                if (!masked && (flags & (FswInvalid | FswDenormal)) == 0)
                {
                    // Unmasked overflow, underflow or precision: the processor stores a re-biased result and
                    // delivers the exception (SDM Vol. 1 §4.9.2); that response is not modelled.
                    RecordUnmodelled("x87 unmasked numeric exception on a store", i.Code.CpuidFeatures());
                    throw GuestFault.InvalidOpcode();
                }
                if (!RaiseFpuException(flags))
                {
                    return null;
                }
            }
            if (roundedUp)
            {
                Fpu.Status |= FswC1;
            }
            WriteLinear(EffectiveAddress(i), format.Bytes, bits);
        }
        if (pop)
        {
            Pop();
        }
        return null;
    }

    private X87Register ReadExtended(ulong address) =>
        new() { Significand = ReadLinear(address, 8), SignExponent = (ushort)ReadLinear(address + 8, 2) };

    private void WriteExtended(ulong address, X87Register value)
    {
        WriteLinear(address, 8, value.Significand);
        WriteLinear(address + 8, 2, value.SignExponent);
    }

    // The 16-bit (14-byte) or 32-bit (28-byte) environment, by the operand size, in the real-mode or the
    // protected-mode layout (SDM Vol. 1 §8.1.10, Figures 8-9 to 8-12). Returns its length.
    private bool FpuEnvironment32(in Instruction i) => i.MemorySize is MemorySize.FpuEnv28 or MemorySize.FpuState108;

    private int StoreFpuEnvironment(in Instruction i, ulong address)
    {
        bool wide = FpuEnvironment32(i);
        int step = wide ? 4 : 2;
        ulong ip = Fpu.InstructionPointer, dp = Fpu.OperandPointer;
        WriteLinear(address, step, Fpu.Control | (wide ? 0xFFFF_0000u : 0));
        WriteLinear(address + (ulong)step, step, Fpu.Status | (wide ? 0xFFFF_0000u : 0));
        WriteLinear(address + 2 * (ulong)step, step, Fpu.Tag | (wide ? 0xFFFF_0000u : 0));
        if (RealMode)
        {
            // Real mode: the 20-bit linear instruction and operand addresses, split 16 + 4 (FOP beside the high part).
            ulong ipLinear = ((ulong)Fpu.InstructionSelector << 4) + ip, dpLinear = ((ulong)Fpu.OperandSelector << 4) + dp;
            if (wide)
            {
                WriteLinear(address + 12, 4, 0xFFFF_0000u | (ushort)ipLinear);
                WriteLinear(address + 16, 4, (uint)((ipLinear >> 16) & 0xFFFF) << 12 | Fpu.Opcode);
                WriteLinear(address + 20, 4, 0xFFFF_0000u | (ushort)dpLinear);
                WriteLinear(address + 24, 4, (uint)((dpLinear >> 16) & 0xFFFF) << 12);
            }
            else
            {
                WriteLinear(address + 6, 2, (ushort)ipLinear);
                WriteLinear(address + 8, 2, (uint)((ipLinear >> 16) & 0xF) << 12 | Fpu.Opcode);
                WriteLinear(address + 10, 2, (ushort)dpLinear);
                WriteLinear(address + 12, 2, (uint)((dpLinear >> 16) & 0xF) << 12);
            }
        }
        else if (wide)
        {
            WriteLinear(address + 12, 4, (uint)ip);
            WriteLinear(address + 16, 4, (uint)Fpu.Opcode << 16 | Fpu.InstructionSelector);
            WriteLinear(address + 20, 4, (uint)dp);
            WriteLinear(address + 24, 4, 0xFFFF_0000u | Fpu.OperandSelector);
        }
        else
        {
            WriteLinear(address + 6, 2, (ushort)ip);
            WriteLinear(address + 8, 2, Fpu.InstructionSelector);
            WriteLinear(address + 10, 2, (ushort)dp);
            WriteLinear(address + 12, 2, Fpu.OperandSelector);
        }
        return wide ? 28 : 14;
    }

    private int LoadFpuEnvironment(in Instruction i, ulong address)
    {
        bool wide = FpuEnvironment32(i);
        int step = wide ? 4 : 2;
        Fpu.Control = (ushort)((ReadLinear(address, 2) & 0x1F3F) | 0x40);
        Fpu.Status = (ushort)ReadLinear(address + (ulong)step, 2);
        Fpu.Tag = (ushort)ReadLinear(address + 2 * (ulong)step, 2);
        if (RealMode)
        {
            ulong ipLow = ReadLinear(address + 3 * (ulong)step, 2), ipHigh = ReadLinear(address + 4 * (ulong)step, step);
            ulong dpLow = ReadLinear(address + 5 * (ulong)step, 2), dpHigh = ReadLinear(address + 6 * (ulong)step, step);
            Fpu.Opcode = (ushort)(ipHigh & 0x7FF);
            Fpu.InstructionSelector = Fpu.OperandSelector = 0;
            Fpu.InstructionPointer = ipLow | ((ipHigh >> 12) << 16);
            Fpu.OperandPointer = dpLow | ((dpHigh >> 12) << 16);
        }
        else if (wide)
        {
            Fpu.InstructionPointer = ReadLinear(address + 12, 4);
            uint selectorAndOpcode = (uint)ReadLinear(address + 16, 4);
            Fpu.InstructionSelector = (ushort)selectorAndOpcode;
            Fpu.Opcode = (ushort)((selectorAndOpcode >> 16) & 0x7FF);
            Fpu.OperandPointer = ReadLinear(address + 20, 4);
            Fpu.OperandSelector = (ushort)ReadLinear(address + 24, 2);
        }
        else
        {
            Fpu.InstructionPointer = ReadLinear(address + 6, 2);
            Fpu.InstructionSelector = (ushort)ReadLinear(address + 8, 2);
            Fpu.OperandPointer = ReadLinear(address + 10, 2);
            Fpu.OperandSelector = (ushort)ReadLinear(address + 12, 2);
        }
        Fpu.UpdateErrorSummary();
        return wide ? 28 : 14;
    }
}
