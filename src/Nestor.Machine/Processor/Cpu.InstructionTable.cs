using Iced.Intel;
using Nestor.Machine.Architecture;
using static Nestor.Machine.Processor.Sensitivity;

namespace Nestor.Machine.Processor;

// The rows of the instruction table (InstructionTable): one per mnemonic the interpreter implements, in the order of
// the SDM's chapters on general-purpose and system instructions (Vol. 1 §5.1 and §5.20). The handlers are static
// lambdas (allocated once, when the table is built) calling the semantics' methods; the interpreter calls them
// through an array indexed by mnemonic.
public sealed partial class Cpu
{
    // Declared before Handlers: static fields are initialised in text order.
    private static readonly InstructionHandler UnimplementedHandler = static (Cpu c, in Instruction i) => c.Unimplemented(i);

    /// <summary>The handlers by mnemonic; a mnemonic without a row gets <see cref="Unimplemented"/> (#UD).</summary>
    private static readonly InstructionHandler[] Handlers = BuildHandlers();

    private static InstructionHandler[] BuildHandlers()
    {
        var handlers = new InstructionHandler[InstructionTable.MnemonicCount];
        Array.Fill(handlers, UnimplementedHandler);
        foreach (var row in InstructionTable.Rows)
        {
            handlers[(int)row.Mnemonic] = row.Handler;
        }
        return handlers;
    }

    /// <summary>The handler the interpreter dispatches <paramref name="mnemonic"/> to (for the table's tests).</summary>
    internal static InstructionHandler HandlerFor(Mnemonic mnemonic) => Handlers[(int)mnemonic];

    /// <summary>Whether <paramref name="handler"/> is the one for mnemonics without a row.</summary>
    internal static bool IsUnimplementedHandler(InstructionHandler handler) => ReferenceEquals(handler, UnimplementedHandler);

    internal static InstructionRow[] BuildInstructionRows()
    {
        InstructionHandler arithmetic = static (Cpu c, in Instruction i) => c.Arithmetic(i);
        InstructionHandler shift = static (Cpu c, in Instruction i) => c.Shift(i);
        InstructionHandler doubleShift = static (Cpu c, in Instruction i) => c.DoubleShift(i);
        InstructionHandler multiplyDivide = static (Cpu c, in Instruction i) => c.MultiplyDivide(i);
        InstructionHandler bits = static (Cpu c, in Instruction i) => c.BitOperation(i);
        InstructionHandler control = static (Cpu c, in Instruction i) => c.ControlTransfer(i);
        InstructionHandler conditionalMove = static (Cpu c, in Instruction i) => c.ConditionalMove(i);
        InstructionHandler setCondition = static (Cpu c, in Instruction i) =>
        {
            c.WriteOperand(i, 0, 1, c.Condition(i.ConditionCode) ? 1UL : 0);
            return null;
        };
        InstructionHandler @string = static (Cpu c, in Instruction i) => c.StringOperation(i);
        InstructionHandler system = static (Cpu c, in Instruction i) => c.SystemInstruction(i);
        InstructionHandler stringIo = static (Cpu c, in Instruction i) => c.StringPortIo(i);
        InstructionHandler nothing = static (Cpu c, in Instruction i) => null;
        InstructionHandler x87 = static (Cpu c, in Instruction i) => c.X87Instruction(i);
        InstructionHandler undefined = static (Cpu c, in Instruction i) => throw GuestFault.InvalidOpcode();

        static InstructionRow Row(Mnemonic m, InstructionClass c, InstructionHandler h, CpuFeature f = CpuFeature.None, Sensitivity s = Innocuous) =>
            new(m, c, f, s, h);

        return
        [
            // Data transfer (SDM Vol. 1 §5.1.1). MOV's control-register forms are privileged and its reads of CS
            // and SS sensitive: InstructionTable.SensitivityOf tells the forms apart.
            Row(Mnemonic.Mov, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.Move(i)),
            Row(Mnemonic.Movzx, InstructionClass.DataMovement, static (Cpu c, in Instruction i) =>
            {
                c.WriteOperand(i, 0, OperandSize(i, 0), c.ReadOperand(i, 1, OperandSize(i, 1)));
                return null;
            }),
            Row(Mnemonic.Movsx, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.MoveSignExtend(i)),
            Row(Mnemonic.Movsxd, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.MoveSignExtend(i)),
            Row(Mnemonic.Lea, InstructionClass.DataMovement, static (Cpu c, in Instruction i) =>
            {
                c.WriteOperand(i, 0, OperandSize(i, 0), c.EffectiveAddressNoSegment(i));
                return null;
            }),
            Row(Mnemonic.Xchg, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.Exchange(i)),
            // 16- and 32-bit code only (SDM Vol. 2: PUSHA, POPA, LDS/LES/LFS/LGS/LSS, BOUND; Cpu.RealMode).
            Row(Mnemonic.Pusha, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.PushAll(i)),
            Row(Mnemonic.Pushad, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.PushAll(i)),
            Row(Mnemonic.Popa, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.PopAll(i)),
            Row(Mnemonic.Popad, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.PopAll(i)),
            Row(Mnemonic.Lds, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.LoadFarPointer(i)),
            Row(Mnemonic.Les, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.LoadFarPointer(i)),
            Row(Mnemonic.Lfs, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.LoadFarPointer(i)),
            Row(Mnemonic.Lgs, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.LoadFarPointer(i)),
            Row(Mnemonic.Lss, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.LoadFarPointer(i)),
            Row(Mnemonic.Bound, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.CheckBounds(i)),
            Row(Mnemonic.Xlatb, InstructionClass.DataMovement, static (Cpu c, in Instruction i) =>
            {
                // AL = [rBX + zero-extended AL] (SDM Vol. 2B XLAT): Iced gives the operand as base rBX, index AL.
                c.WriteRegister(Register.AL, c.ReadOperand(i, 0, 1));
                return null;
            }),
            Row(Mnemonic.Push, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.PushOperand(i)),
            Row(Mnemonic.Pop, InstructionClass.DataMovement, static (Cpu c, in Instruction i) => c.PopOperand(i)),
            Row(Mnemonic.Cmovo, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovno, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovb, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovae, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmove, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovne, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovbe, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmova, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovs, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovns, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovp, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovnp, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovl, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovge, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovle, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Cmovg, InstructionClass.DataMovement, conditionalMove, CpuFeature.ConditionalMove),
            Row(Mnemonic.Xadd, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.ExchangeAdd(i)),
            Row(Mnemonic.Cmpxchg, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.CompareExchange(i)),
            Row(Mnemonic.Cmpxchg8b, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.CompareExchange8Bytes(i), CpuFeature.CompareExchange8Bytes),
            Row(Mnemonic.Cmpxchg16b, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.CompareExchange16Bytes(i), CpuFeature.CompareExchange16Bytes),
            Row(Mnemonic.Bswap, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.ByteSwap(i)),
            // Decimal arithmetic (SDM Vol. 1 §5.1.2.5) and SALC, of 16- and 32-bit code only.
            Row(Mnemonic.Daa, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Das, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Aaa, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Aas, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Aam, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Aad, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Salc, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) => c.DecimalAdjust(i)),
            Row(Mnemonic.Cbw, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.WriteRegister(Register.AX, SignExtend(c.Registers[Rax], 1));
                return null;
            }),
            Row(Mnemonic.Cwde, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.WriteRegister(Register.EAX, SignExtend(c.Registers[Rax], 2));
                return null;
            }),
            Row(Mnemonic.Cdqe, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Registers[Rax] = SignExtend(c.Registers[Rax], 4);
                return null;
            }),
            Row(Mnemonic.Cwd, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.WriteRegister(Register.DX, (c.Registers[Rax] & 0x8000) != 0 ? 0xFFFFUL : 0UL);
                return null;
            }),
            Row(Mnemonic.Cdq, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.WriteRegister(Register.EDX, (c.Registers[Rax] & 0x8000_0000) != 0 ? 0xFFFF_FFFF : 0);
                return null;
            }),
            Row(Mnemonic.Cqo, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Registers[Rdx] = (c.Registers[Rax] & (1UL << 63)) != 0 ? ulong.MaxValue : 0;
                return null;
            }),

            // Binary arithmetic, logic, shifts and rotates, bit and byte (SDM Vol. 1 §5.1.2 to §5.1.6).
            Row(Mnemonic.Add, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Adc, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Sub, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Sbb, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Cmp, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.And, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Or, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Xor, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Test, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Inc, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Dec, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Neg, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Not, InstructionClass.Arithmetic, arithmetic),
            Row(Mnemonic.Mul, InstructionClass.MultiplyDivide, multiplyDivide),
            Row(Mnemonic.Imul, InstructionClass.MultiplyDivide, multiplyDivide),
            Row(Mnemonic.Div, InstructionClass.MultiplyDivide, multiplyDivide),
            Row(Mnemonic.Idiv, InstructionClass.MultiplyDivide, multiplyDivide),
            Row(Mnemonic.Shl, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Sal, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Shr, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Sar, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Rol, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Ror, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Rcl, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Rcr, InstructionClass.Arithmetic, shift),
            Row(Mnemonic.Shld, InstructionClass.Arithmetic, doubleShift),
            Row(Mnemonic.Shrd, InstructionClass.Arithmetic, doubleShift),
            Row(Mnemonic.Bt, InstructionClass.Arithmetic, bits),
            Row(Mnemonic.Bts, InstructionClass.Arithmetic, bits),
            Row(Mnemonic.Btr, InstructionClass.Arithmetic, bits),
            Row(Mnemonic.Btc, InstructionClass.Arithmetic, bits),
            Row(Mnemonic.Bsf, InstructionClass.Arithmetic, bits),
            Row(Mnemonic.Bsr, InstructionClass.Arithmetic, bits),
            // BMI1's TZCNT (see CpuidFeatures: the rest of BMI1 is not modelled, so BMI1 is not reported).
            Row(Mnemonic.Tzcnt, InstructionClass.Arithmetic, bits, CpuFeature.BitManipulation1),
            Row(Mnemonic.Lzcnt, InstructionClass.Arithmetic, bits, CpuFeature.LeadingZeroCount),
            Row(Mnemonic.Popcnt, InstructionClass.Arithmetic, bits, CpuFeature.PopulationCount),
            Row(Mnemonic.Seto, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setno, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setb, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setae, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Sete, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setne, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setbe, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Seta, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Sets, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setns, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setp, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setnp, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setl, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setge, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setle, InstructionClass.DataMovement, setCondition),
            Row(Mnemonic.Setg, InstructionClass.DataMovement, setCondition),

            // Control transfer (SDM Vol. 1 §5.1.7). Far JMP and CALL compare privilege levels: sensitive by form
            // (InstructionTable.SensitivityOf). A far RET, IRET and INT n check the saved or the gate's privilege
            // against CPL, and IRET keeps IF and IOPL at CPL > 0: sensitive, unprivileged (Robin & Irvine).
            Row(Mnemonic.Jmp, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Call, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Ret, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jo, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jno, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jb, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jae, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Je, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jne, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jbe, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Ja, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Js, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jns, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jp, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jnp, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jl, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jge, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jle, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jg, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jrcxz, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jecxz, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Jcxz, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Loop, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Loope, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Loopne, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Enter, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Leave, InstructionClass.ControlTransfer, control),
            Row(Mnemonic.Retf, InstructionClass.System, control, s: SensitiveUnprivileged),
            Row(Mnemonic.Iretq, InstructionClass.System, control, s: SensitiveUnprivileged),
            Row(Mnemonic.Iretd, InstructionClass.System, control, s: SensitiveUnprivileged),
            Row(Mnemonic.Iret, InstructionClass.System, control, s: SensitiveUnprivileged),
            Row(Mnemonic.Int, InstructionClass.System, control, s: SensitiveUnprivileged),
            Row(Mnemonic.Int3, InstructionClass.System, control, s: SensitiveUnprivileged),
            Row(Mnemonic.Into, InstructionClass.System, control, s: SensitiveUnprivileged),
            // INT1 (ICEBP) is delivered as a debug exception, without the gate's DPL check (SDM Vol. 3A §6.12.1.1).
            Row(Mnemonic.Int1, InstructionClass.System, control),
            Row(Mnemonic.Syscall, InstructionClass.System, control, CpuFeature.SystemCall),
            Row(Mnemonic.Sysretq, InstructionClass.System, control, CpuFeature.SystemCall, Privileged),
            Row(Mnemonic.Sysret, InstructionClass.System, control, CpuFeature.SystemCall, Privileged),
            // SYSENTER enters CPL 0 from any ring; SYSEXIT is privileged (SDM Vol. 2B).
            Row(Mnemonic.Sysenter, InstructionClass.System, control, CpuFeature.SystemEnter),
            Row(Mnemonic.Sysexit, InstructionClass.System, control, CpuFeature.SystemEnter, Privileged),
            Row(Mnemonic.Sysexitq, InstructionClass.System, control, CpuFeature.SystemEnter, Privileged),

            // String (SDM Vol. 1 §5.1.8).
            Row(Mnemonic.Movsb, InstructionClass.String, @string),
            Row(Mnemonic.Movsw, InstructionClass.String, @string),
            Row(Mnemonic.Movsd, InstructionClass.String, @string),
            Row(Mnemonic.Movsq, InstructionClass.String, @string),
            Row(Mnemonic.Stosb, InstructionClass.String, @string),
            Row(Mnemonic.Stosw, InstructionClass.String, @string),
            Row(Mnemonic.Stosd, InstructionClass.String, @string),
            Row(Mnemonic.Stosq, InstructionClass.String, @string),
            Row(Mnemonic.Lodsb, InstructionClass.String, @string),
            Row(Mnemonic.Lodsw, InstructionClass.String, @string),
            Row(Mnemonic.Lodsd, InstructionClass.String, @string),
            Row(Mnemonic.Lodsq, InstructionClass.String, @string),
            Row(Mnemonic.Cmpsb, InstructionClass.String, @string),
            Row(Mnemonic.Cmpsw, InstructionClass.String, @string),
            Row(Mnemonic.Cmpsd, InstructionClass.String, @string),
            Row(Mnemonic.Cmpsq, InstructionClass.String, @string),
            Row(Mnemonic.Scasb, InstructionClass.String, @string),
            Row(Mnemonic.Scasw, InstructionClass.String, @string),
            Row(Mnemonic.Scasd, InstructionClass.String, @string),
            Row(Mnemonic.Scasq, InstructionClass.String, @string),

            // Flag control (SDM Vol. 1 §5.1.11). PUSHF shows the real IF and IOPL, and POPF silently keeps them at
            // CPL > 0: the classic sensitive, unprivileged pair.
            Row(Mnemonic.Clc, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Rflags &= ~FlagBits.Carry;
                return null;
            }),
            Row(Mnemonic.Stc, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Rflags |= FlagBits.Carry;
                return null;
            }),
            Row(Mnemonic.Cmc, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Rflags ^= FlagBits.Carry;
                return null;
            }),
            Row(Mnemonic.Cld, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Rflags &= ~FlagBits.Direction;
                return null;
            }),
            Row(Mnemonic.Std, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Rflags |= FlagBits.Direction;
                return null;
            }),
            Row(Mnemonic.Lahf, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Registers[Rax] = (c.Registers[Rax] & ~0xFF00UL) | ((c.Rflags & 0xD7 | 2) << 8);
                return null;
            }, CpuFeature.LahfSahf64),
            Row(Mnemonic.Sahf, InstructionClass.Arithmetic, static (Cpu c, in Instruction i) =>
            {
                c.Rflags = (c.Rflags & ~0xD5UL) | ((c.Registers[Rax] >> 8) & 0xD5);
                return null;
            }, CpuFeature.LahfSahf64),
            Row(Mnemonic.Cli, InstructionClass.System, system, s: IoPrivileged),
            Row(Mnemonic.Sti, InstructionClass.System, system, s: IoPrivileged),
            Row(Mnemonic.Clac, InstructionClass.System, system, CpuFeature.SupervisorModeAccessPrevention, Privileged),
            Row(Mnemonic.Stac, InstructionClass.System, system, CpuFeature.SupervisorModeAccessPrevention, Privileged),
            Row(Mnemonic.Pushf, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Pushfq, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Pushfd, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Popfd, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Popf, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Popfq, InstructionClass.System, system, s: SensitiveUnprivileged),

            // Miscellaneous (SDM Vol. 1 §5.1.13) and cacheability hints: no architectural effect in the model.
            Row(Mnemonic.Nop, InstructionClass.DataMovement, nothing),
            Row(Mnemonic.Pause, InstructionClass.DataMovement, nothing),
            Row(Mnemonic.Endbr64, InstructionClass.DataMovement, nothing),
            Row(Mnemonic.Endbr32, InstructionClass.DataMovement, nothing), // CET is not modelled: a NOP (SDM Vol. 2A ENDBR32)
            Row(Mnemonic.Lfence, InstructionClass.System, nothing),
            Row(Mnemonic.Mfence, InstructionClass.System, nothing),
            Row(Mnemonic.Sfence, InstructionClass.System, nothing),
            // CLFLUSH and CLFLUSHOPT check the line's address (the model has no caches to flush).
            Row(Mnemonic.Clflush, InstructionClass.System, system, CpuFeature.CacheLineFlush),
            Row(Mnemonic.Clflushopt, InstructionClass.System, system, CpuFeature.CacheLineFlushOptimized),
            Row(Mnemonic.Prefetchnta, InstructionClass.System, nothing),
            Row(Mnemonic.Prefetcht0, InstructionClass.System, nothing),
            Row(Mnemonic.Prefetcht1, InstructionClass.System, nothing),
            Row(Mnemonic.Prefetcht2, InstructionClass.System, nothing),
            Row(Mnemonic.Ud0, InstructionClass.System, undefined),
            Row(Mnemonic.Ud1, InstructionClass.System, undefined),
            Row(Mnemonic.Ud2, InstructionClass.System, undefined),

            // I/O (SDM Vol. 1 §5.1.9): allowed at CPL ≤ IOPL (the TSS bitmap is not modelled).
            Row(Mnemonic.In, InstructionClass.System, system, s: IoPrivileged),
            Row(Mnemonic.Out, InstructionClass.System, system, s: IoPrivileged),
            // INS and OUTS are string instructions (their REP forms are suspended between items and retire once).
            Row(Mnemonic.Insb, InstructionClass.String, stringIo, s: IoPrivileged),
            Row(Mnemonic.Insw, InstructionClass.String, stringIo, s: IoPrivileged),
            Row(Mnemonic.Insd, InstructionClass.String, stringIo, s: IoPrivileged),
            Row(Mnemonic.Outsb, InstructionClass.String, stringIo, s: IoPrivileged),
            Row(Mnemonic.Outsw, InstructionClass.String, stringIo, s: IoPrivileged),
            Row(Mnemonic.Outsd, InstructionClass.String, stringIo, s: IoPrivileged),

            // System (SDM Vol. 1 §5.20). SGDT, SIDT, SLDT, STR and SMSW read privileged registers at any CPL (no
            // CR4.UMIP in the model): sensitive, unprivileged. CPUID and RDTSC are innocuous (RDTSC would be
            // privileged with CR4.TSD, not modelled); VMCALL raises #UD outside VMX at every CPL.
            Row(Mnemonic.Hlt, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Cpuid, InstructionClass.System, system),
            Row(Mnemonic.Rdtsc, InstructionClass.System, system, CpuFeature.TimeStampCounter),
            Row(Mnemonic.Rdtscp, InstructionClass.System, system, CpuFeature.ReadTimeStampCounterAndProcessor),
            Row(Mnemonic.Rdpid, InstructionClass.System, system, CpuFeature.ReadProcessorId),
            // RDPMC: #GP for every counter, since the machine has none (CPUID leaf 0xA: version 0); privileged
            // unless CR4.PCE.
            Row(Mnemonic.Rdpmc, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Rdmsr, InstructionClass.System, system, CpuFeature.ModelSpecificRegisters, Privileged),
            Row(Mnemonic.Wrmsr, InstructionClass.System, system, CpuFeature.ModelSpecificRegisters, Privileged),
            Row(Mnemonic.Lgdt, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Lidt, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Ltr, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Lldt, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Sgdt, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Sidt, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Sldt, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Str, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Smsw, InstructionClass.System, system, s: SensitiveUnprivileged),
            Row(Mnemonic.Invlpg, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Invpcid, InstructionClass.System, system, CpuFeature.InvalidateProcessContext, Privileged),
            Row(Mnemonic.Swapgs, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Wbinvd, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Invd, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Clts, InstructionClass.System, system, s: Privileged),
            // LMSW: CR0 bits 3:0, PE set but never cleared (SDM Vol. 2A LMSW); #GP(0) outside ring 0.
            Row(Mnemonic.Lmsw, InstructionClass.System, system, s: Privileged),
            Row(Mnemonic.Vmcall, InstructionClass.System, system),

            // The x87 FPU (SDM Vol. 1 chapter 8; Cpu.X87): its control instructions and data moves, no arithmetic.
            // WAIT/FWAIT is on every processor; it checks for pending x87 exceptions.
            Row(Mnemonic.Wait, InstructionClass.System, x87),
            Row(Mnemonic.Fninit, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Finit, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fnclex, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fclex, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fnstsw, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fstsw, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fnstcw, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fstcw, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fldcw, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fnstenv, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fstenv, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fldenv, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fnsave, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fsave, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Frstor, InstructionClass.System, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fnop, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Ffree, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fincstp, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fdecstp, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fld, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fld1, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fldz, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fst, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fstp, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fxch, InstructionClass.DataMovement, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fchs, InstructionClass.Arithmetic, x87, CpuFeature.FloatingPointUnit),
            Row(Mnemonic.Fabs, InstructionClass.Arithmetic, x87, CpuFeature.FloatingPointUnit),
        ];
    }
}
