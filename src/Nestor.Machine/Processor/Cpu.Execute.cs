using System.Runtime.CompilerServices;
using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

public sealed partial class Cpu
{
    /// <summary>Executes one decoded instruction through its row's handler in <see cref="InstructionTable"/> (a
    /// mnemonic without a row is not modelled and raises #UD). RIP is advanced first (so RIP-relative and branch
    /// targets from Iced are absolute), and restored by the fault path if the instruction faults.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private StopReason? Execute(in Instruction i)
    {
        Rip = i.CodeSize == CodeSize.Code16 ? (ushort)i.NextIP : i.NextIP; // IP wraps at 64 KiB in 16-bit code
        return Handlers[(int)i.Mnemonic](this, in i);
    }

    // The semantics of the instructions whose rows point here (the other rows point at the families' methods in
    // Cpu.Arithmetic, Cpu.Control and Cpu.System).

    private StopReason? Move(in Instruction i)
    {
        if (i.GetOpKind(0) == OpKind.Register && i.GetOpRegister(0).IsCR())
        {
            return MoveToControl(i);
        }
        if (i.GetOpKind(0) == OpKind.Register && i.GetOpKind(1) == OpKind.Register &&
            (i.GetOpRegister(0).IsDR() || i.GetOpRegister(1).IsDR()))
        {
            return MoveDebugRegister(i); // Cpu.RealMode: 16- and 32-bit code sets them up too
        }
        if (i.GetOpKind(1) == OpKind.Register && i.GetOpRegister(1).IsCR())
        {
            RequirePrivilege0();
            if (nonRoot is { Cr3StoreExiting: true } && i.GetOpRegister(1) == Register.CR3 &&
                ExitOnInstruction(ExitReason.ControlRegisterAccess, ControlRegisterQualification(3, true, i.GetOpRegister(0)), i))
            {
                return null;
            }
            WriteRegister(i.GetOpRegister(0), ReadControl(i.GetOpRegister(1)));
            return null;
        }
        int size = OperandSize(i, 0);
        ulong value = ReadOperand(i, 1, OperandSize(i, 1));
        if (i.GetOpKind(1) is OpKind.Immediate32to64 or OpKind.Immediate8to64)
        {
            value = i.GetImmediate(1);
        }
        WriteOperand(i, 0, size, value);
        return null;
    }

    private StopReason? MoveSignExtend(in Instruction i)
    {
        int from = OperandSize(i, 1);
        WriteOperand(i, 0, OperandSize(i, 0), SignExtend(ReadOperand(i, 1, from), from));
        return null;
    }

    private StopReason? Exchange(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong a = ReadOperand(i, 0, size), b = ReadOperand(i, 1, size);
        WriteOperand(i, 0, size, b);
        WriteOperand(i, 1, size, a);
        return null;
    }

    private StopReason? ExchangeAdd(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong a = ReadOperand(i, 0, size), b = ReadOperand(i, 1, size);
        ulong sum = Add(a, b, 0, size);
        WriteOperand(i, 1, size, a);
        WriteOperand(i, 0, size, sum);
        return null;
    }

    private StopReason? CompareExchange(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong destination = ReadOperand(i, 0, size);
        ulong accumulator = Registers[Rax] & Mask(size);
        Subtract(accumulator, destination, 0, size);
        if (accumulator == destination)
        {
            WriteOperand(i, 0, size, ReadOperand(i, 1, size));
        }
        else
        {
            WriteOperand(i, 0, size, destination); // the processor always writes (SDM Vol. 2A CMPXCHG)
            WriteRegister(size switch { 1 => Register.AL, 2 => Register.AX, 4 => Register.EAX, _ => Register.RAX }, destination);
        }
        return null;
    }

    private StopReason? CompareExchange16Bytes(in Instruction i)
    {
        ulong address = EffectiveAddress(i);
        if ((address & 15) != 0)
        {
            throw GuestFault.GeneralProtection(); // the operand must be 16-byte aligned (SDM Vol. 2A CMPXCHG16B)
        }
        ulong low = ReadLinear(address, 8), high = ReadLinear(address + 8, 8);
        if (low == Registers[Rax] && high == Registers[Rdx])
        {
            WriteLinear(address, 8, Registers[Rbx]);
            WriteLinear(address + 8, 8, Registers[Rcx]);
            Rflags |= Z;
        }
        else
        {
            WriteLinear(address, 8, low);
            WriteLinear(address + 8, 8, high);
            (Registers[Rax], Registers[Rdx]) = (low, high);
            Rflags &= ~Z;
        }
        return null;
    }

    private StopReason? ByteSwap(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong v = ReadOperand(i, 0, size);
        WriteOperand(i, 0, size, size == 8 ? System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(v)
            : System.Buffers.Binary.BinaryPrimitives.ReverseEndianness((uint)v));
        return null;
    }

    private StopReason? PushOperand(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong value = i.GetOpKind(0) == OpKind.Register ? ReadRegister(i.GetOpRegister(0)) : ReadOperand(i, 0, size);
        if (i.GetOpKind(0) is OpKind.Immediate8to64 or OpKind.Immediate32to64 or OpKind.Immediate8to16)
        {
            value = i.GetImmediate(0);
        }
        // PUSH of a segment register moves the operand size (o16 or o32 outside 64-bit mode: Pushw_ES, Pushd_ES).
        Push(value, i.GetOpKind(0) == OpKind.Register && i.GetOpRegister(0).IsSegmentRegister()
            ? (Bitness == 64 ? 8 : -i.StackPointerIncrement) : size == 2 ? 2 : StackWidth);
        return null;
    }

    private StopReason? PopOperand(in Instruction i)
    {
        int size = OperandSize(i, 0);
        if (i.GetOpKind(0) == OpKind.Register && i.GetOpRegister(0).IsSegmentRegister())
        {
            ulong selector = Pop(Bitness == 64 ? 8 : i.StackPointerIncrement);
            WriteRegister(i.GetOpRegister(0), selector);
            return null;
        }
        ulong value = Pop(size == 2 ? 2 : StackWidth);
        WriteOperand(i, 0, size, value);
        return null;
    }

    private StopReason? ConditionalMove(in Instruction i)
    {
        int size = OperandSize(i, 0);
        ulong value = ReadOperand(i, 1, size); // the source is read (and may fault) whatever the condition
        if (Condition(i.ConditionCode))
        {
            WriteOperand(i, 0, size, value);
        }
        else if (size == 4)
        {
            WriteOperand(i, 0, 4, ReadOperand(i, 0, 4)); // a 32-bit CMOV zeroes the upper half regardless
        }
        return null;
    }


    /// <summary>LEA: the address without any segment base.</summary>
    private ulong EffectiveAddressNoSegment(in Instruction i)
    {
        ulong address;
        if (i.IsIPRelativeMemoryOperand)
        {
            return i.IPRelativeMemoryAddress;
        }
        address = i.MemoryDisplacement64;
        if (i.MemoryBase != Register.None)
        {
            address += ReadRegister(i.MemoryBase);
        }
        if (i.MemoryIndex != Register.None)
        {
            address += ReadRegister(i.MemoryIndex) * (ulong)i.MemoryIndexScale;
        }
        return Bitness != 64 && AddressSize16(i) ? (ushort)address : address; // LEA's offset at the address size
    }

    /// <summary>Evaluates a condition code from RFLAGS (SDM Vol. 1 Appendix B).</summary>
    private bool Condition(ConditionCode code)
    {
        ulong f = Rflags;
        bool cf = (f & C) != 0, zf = (f & Z) != 0, sf = (f & S) != 0, of = (f & O) != 0, pf = (f & P) != 0;
        return code switch
        {
            ConditionCode.o => of,
            ConditionCode.no => !of,
            ConditionCode.b => cf,
            ConditionCode.ae => !cf,
            ConditionCode.e => zf,
            ConditionCode.ne => !zf,
            ConditionCode.be => cf || zf,
            ConditionCode.a => !cf && !zf,
            ConditionCode.s => sf,
            ConditionCode.ns => !sf,
            ConditionCode.p => pf,
            ConditionCode.np => !pf,
            ConditionCode.l => sf != of,
            ConditionCode.ge => sf == of,
            ConditionCode.le => zf || sf != of,
            ConditionCode.g => !zf && sf == of,
            _ => true,
        };
    }

    /// <summary>MOVS, STOS, LODS, CMPS, SCAS, with REP/REPE/REPNE (SDM Vol. 2B "REP/REPE/REPZ/REPNE/REPNZ" and
    /// each instruction's page). The address-size attribute chooses the registers: RSI, RDI and RCX with 64-bit
    /// addresses; ESI, EDI and ECX with 32-bit ones (67h in 64-bit mode, or 32-bit code), which wrap at 32 bits and,
    /// being 32-bit register writes, clear the upper halves (SDM Vol. 1 §3.4.1.1); SI, DI and CX with 16-bit ones,
    /// the rest of each register kept. A fault leaves the registers at the faulting iteration and RIP at the
    /// instruction, so that it resumes there after the handler, as the hardware guarantees. A long repetition is
    /// also suspended between iterations, in the same architectural state, when the platform asks the CPU to stop,
    /// when an interrupt can be taken, or after <see cref="RepeatSlice"/> iterations, so that one instruction can
    /// neither hold the host nor one <see cref="Run"/> call for long (the SDM allows an interrupt between
    /// iterations; the suspended instruction is not retired, so a repetition counts as one instruction
    /// however often it was suspended).</summary>
    private StopReason? StringOperation(in Instruction i)
    {
        var mnemonic = i.Mnemonic;
        int size = mnemonic switch
        {
            Mnemonic.Movsb or Mnemonic.Stosb or Mnemonic.Lodsb or Mnemonic.Cmpsb or Mnemonic.Scasb => 1,
            Mnemonic.Movsw or Mnemonic.Stosw or Mnemonic.Lodsw or Mnemonic.Cmpsw or Mnemonic.Scasw => 2,
            Mnemonic.Movsd or Mnemonic.Stosd or Mnemonic.Lodsd or Mnemonic.Cmpsd or Mnemonic.Scasd => 4,
            _ => 8,
        };
        var form = mnemonic switch
        {
            Mnemonic.Movsb or Mnemonic.Movsw or Mnemonic.Movsd or Mnemonic.Movsq => StringForm.Move,
            Mnemonic.Stosb or Mnemonic.Stosw or Mnemonic.Stosd or Mnemonic.Stosq => StringForm.Store,
            Mnemonic.Lodsb or Mnemonic.Lodsw or Mnemonic.Lodsd or Mnemonic.Lodsq => StringForm.Load,
            Mnemonic.Cmpsb or Mnemonic.Cmpsw or Mnemonic.Cmpsd or Mnemonic.Cmpsq => StringForm.Compare,
            _ => StringForm.Scan,
        };
        int addressSize = StringAddressSize(i);
        ulong mask = addressSize == 8 ? ulong.MaxValue : addressSize == 4 ? 0xFFFF_FFFFUL : 0xFFFFUL;
        ulong kept = addressSize == 2 ? ~0xFFFFUL : 0; // a 16-bit register write keeps the rest of the register
        // DS:RSI takes a segment override (only FS and GS have a base in 64-bit mode, SDM Vol. 3A §3.2.4); ES:RDI
        // does not. Outside 64-bit mode every segment has its base (Cpu.RealMode).
        ulong sourceBase = 0, destinationBase = Bitness == 64 ? 0 : Es.Base;
        if (form is StringForm.Move or StringForm.Load or StringForm.Compare)
        {
            sourceBase = Bitness != 64 ? SegmentBase(i.MemorySegment)
                : i.MemorySegment == Register.FS ? Fs.Base : i.MemorySegment == Register.GS ? Gs.Base : 0;
        }
        ulong step = (Rflags & FlagBits.Direction) != 0 ? unchecked((ulong)-size) : (ulong)size;
        if (!(i.HasRepPrefix || i.HasRepePrefix || i.HasRepnePrefix))
        {
            StringIteration(form, size, sourceBase, destinationBase, step, mask, kept);
            return null;
        }
        // While a data breakpoint is armed every iteration is looked at, so that its trap follows the iteration that
        // met it (SDM Vol. 3B §17.3.1.2); otherwise every RepeatCheckInterval iterations, and the fast loops below.
        long checkMask = watchingData ? 0 : RepeatCheckInterval - 1;
        if (addressSize == 8 && form == StringForm.Store && !watchingData)
        {
            return RepeatStore(size, step);
        }
        if (addressSize == 8 && form == StringForm.Move && !watchingData)
        {
            return RepeatMove(size, step, sourceBase);
        }
        // REPE/REPNE end on ZF too, for the comparing forms only (F2 on MOVS, STOS and LODS repeats as REP does).
        bool untilUnequal = form is StringForm.Compare or StringForm.Scan && i.HasRepePrefix;
        bool untilEqual = form is StringForm.Compare or StringForm.Scan && i.HasRepnePrefix;
        long iterations = 0;
        while ((Registers[Rcx] & mask) != 0)
        {
            StringIteration(form, size, sourceBase, destinationBase, step, mask, kept);
            Registers[Rcx] = (Registers[Rcx] & kept) | ((Registers[Rcx] - 1) & mask);
            if ((untilUnequal && (Rflags & Z) == 0) || (untilEqual && (Rflags & Z) != 0))
            {
                break;
            }
            if ((++iterations & checkMask) == 0 && (Registers[Rcx] & mask) != 0 &&
                SuspendString(iterations) is { } suspended)
            {
                return suspended;
            }
        }
        return null;
    }

    // REP STOS and REP MOVS with 64-bit addresses (memset and memcpy), the forms that run long in practice, in
    // loops of their own: the same iterations and checks as the general loop, without its masks and conditions. The
    // registers are updated in place after each iteration, so a fault in the next leaves them right.

    private StopReason? RepeatStore(int size, ulong step)
    {
        ref ulong rcx = ref Registers[Rcx];
        ref ulong rdi = ref Registers[Rdi];
        ulong value = Registers[Rax];
        long iterations = 0;
        while (rcx != 0)
        {
            WriteLinear(rdi, size, value);
            rdi += step;
            rcx--;
            if ((++iterations & (RepeatCheckInterval - 1)) == 0 && rcx != 0 && SuspendString(iterations) is { } suspended)
            {
                return suspended;
            }
        }
        return null;
    }

    private StopReason? RepeatMove(int size, ulong step, ulong sourceBase)
    {
        ref ulong rcx = ref Registers[Rcx];
        ref ulong rsi = ref Registers[Rsi];
        ref ulong rdi = ref Registers[Rdi];
        long iterations = 0;
        while (rcx != 0)
        {
            WriteLinear(rdi, size, ReadLinear(sourceBase + rsi, size));
            rsi += step;
            rdi += step;
            rcx--;
            if ((++iterations & (RepeatCheckInterval - 1)) == 0 && rcx != 0 && SuspendString(iterations) is { } suspended)
            {
                return suspended;
            }
        }
        return null;
    }

    private enum StringForm : byte
    {
        Move,
        Store,
        Load,
        Compare,
        Scan,
    }

    /// <summary>One iteration: the memory operands at (RSI &amp; mask) and (RDI &amp; mask), the registers advanced.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void StringIteration(StringForm form, int size, ulong sourceBase, ulong destinationBase, ulong step, ulong mask, ulong kept)
    {
        ulong rsi = Registers[Rsi], rdi = Registers[Rdi];
        switch (form)
        {
            case StringForm.Move:
                WriteLinear(destinationBase + (rdi & mask), size, ReadLinear(sourceBase + (rsi & mask), size));
                Registers[Rsi] = (rsi & kept) | ((rsi + step) & mask);
                Registers[Rdi] = (rdi & kept) | ((rdi + step) & mask);
                break;
            case StringForm.Store:
                WriteLinear(destinationBase + (rdi & mask), size, Registers[Rax]);
                Registers[Rdi] = (rdi & kept) | ((rdi + step) & mask);
                break;
            case StringForm.Load:
                {
                    ulong value = ReadLinear(sourceBase + (rsi & mask), size);
                    WriteRegister(size switch { 1 => Register.AL, 2 => Register.AX, 4 => Register.EAX, _ => Register.RAX }, value);
                    Registers[Rsi] = (rsi & kept) | ((rsi + step) & mask);
                    break;
                }
            case StringForm.Compare:
                Subtract(ReadLinear(sourceBase + (rsi & mask), size), ReadLinear(destinationBase + (rdi & mask), size), 0, size);
                Registers[Rsi] = (rsi & kept) | ((rsi + step) & mask);
                Registers[Rdi] = (rdi & kept) | ((rdi + step) & mask);
                break;
            default:
                Subtract(Registers[Rax] & Mask(size), ReadLinear(destinationBase + (rdi & mask), size), 0, size);
                Registers[Rdi] = (rdi & kept) | ((rdi + step) & mask);
                break;
        }
    }

    /// <summary>The address size of a string instruction, in bytes, from its memory operands' kinds (Iced names the
    /// registers the address-size attribute selects).</summary>
    private static int StringAddressSize(in Instruction i)
    {
        for (int n = 0; n < i.OpCount; n++)
        {
            switch (i.GetOpKind(n))
            {
                case OpKind.MemorySegRSI or OpKind.MemorySegRDI or OpKind.MemoryESRDI:
                    return 8;
                case OpKind.MemorySegESI or OpKind.MemorySegEDI or OpKind.MemoryESEDI:
                    return 4;
                case OpKind.MemorySegSI or OpKind.MemorySegDI or OpKind.MemoryESDI:
                    return 2;
            }
        }
        return 8;
    }

    /// <summary>Iterations between looks at the platform's stop request and at pending interrupts; a power of two.</summary>
    private const long RepeatCheckInterval = 4096;

    /// <summary>Iterations one execution of a repeated string instruction runs before it is suspended so that
    /// <see cref="Run"/> can return (<see cref="StopReason.Budget"/>): about the time of as many simple instructions, the
    /// engine's slice between its own checks for a stop. A multiple of <see cref="RepeatCheckInterval"/>.</summary>
    private const long RepeatSlice = 1 << 20;

    private enum StringSuspension : byte
    {
        None,
        Interrupt,
        Budget,
        PlatformStop,
        /// <summary>A data breakpoint met in the last iteration (Cpu.Debug.cs).</summary>
        DebugTrap,
    }

    private StringSuspension stringSuspension;

    /// <summary>At a check between iterations (RCX not yet zero): whether to suspend the instruction, and why. When it
    /// suspends, RIP goes back to the instruction; the registers already say how far it got.</summary>
    private StopReason? SuspendString(long iterations)
    {
        if ((debugTraps & DebugStatusBreakpoints) != 0)
        {
            stringSuspension = StringSuspension.DebugTrap;
        }
        else if (platform.StopRequested)
        {
            stringSuspension = StringSuspension.PlatformStop;
        }
        else if (InterruptDeliverable)
        {
            stringSuspension = StringSuspension.Interrupt;
        }
        else if (iterations >= RepeatSlice)
        {
            stringSuspension = StringSuspension.Budget;
        }
        else
        {
            return null;
        }
        Rip = instructionStart;
        return StopReason.Budget; // any non-null value: the run loop asks TakeStringSuspension what it means
    }

    /// <summary>For the run loop, after a string instruction returned a stop: the reason Run returns with, or null when
    /// an interrupt is due (the loop goes on and delivers it).</summary>
    private StopReason? TakeStringSuspension()
    {
        var why = stringSuspension;
        stringSuspension = StringSuspension.None;
        switch (why)
        {
            case StringSuspension.Interrupt:
                eventCheckAt = 0;
                return null;
            case StringSuspension.DebugTrap:
                debugTraps &= ~DebugStatusBreakpoints; // a VMM's emulation of the instruction: not delivered
                return null;
            case StringSuspension.PlatformStop:
                return StopReason.PlatformStop;
            default:
                return StopReason.Budget;
        }
    }
}
