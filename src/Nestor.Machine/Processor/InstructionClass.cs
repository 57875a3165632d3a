using Iced.Intel;

namespace Nestor.Machine.Processor;

/// <summary>Coarse instruction classes for the retired-instruction counters (and, later, the cost model).</summary>
public enum InstructionClass : byte
{
    Arithmetic,
    MultiplyDivide,
    DataMovement,
    ControlTransfer,
    String,
    System,
}

/// <summary>Maps Iced mnemonics to <see cref="InstructionClass"/> once, so counting costs one table lookup.</summary>
internal static class InstructionClasses
{
    public static readonly byte[] ByMnemonic = Build();

    private static byte[] Build()
    {
        var table = new byte[Enum.GetValues<Mnemonic>().Max(m => (int)m) + 1];
        Array.Fill(table, (byte)InstructionClass.System);
        void Set(InstructionClass c, params Mnemonic[] mnemonics)
        {
            foreach (var m in mnemonics)
            {
                table[(int)m] = (byte)c;
            }
        }
        Set(InstructionClass.Arithmetic, Mnemonic.Add, Mnemonic.Adc, Mnemonic.Sub, Mnemonic.Sbb, Mnemonic.Cmp, Mnemonic.And,
            Mnemonic.Or, Mnemonic.Xor, Mnemonic.Test, Mnemonic.Inc, Mnemonic.Dec, Mnemonic.Neg, Mnemonic.Not, Mnemonic.Shl,
            Mnemonic.Sal, Mnemonic.Shr, Mnemonic.Sar, Mnemonic.Rol, Mnemonic.Ror, Mnemonic.Rcl, Mnemonic.Rcr, Mnemonic.Shld,
            Mnemonic.Shrd, Mnemonic.Bt, Mnemonic.Bts, Mnemonic.Btr, Mnemonic.Btc, Mnemonic.Bsf, Mnemonic.Bsr, Mnemonic.Tzcnt,
            Mnemonic.Lzcnt, Mnemonic.Popcnt, Mnemonic.Xadd, Mnemonic.Cmpxchg, Mnemonic.Cmpxchg8b, Mnemonic.Cmpxchg16b,
            Mnemonic.Bswap, Mnemonic.Cbw, Mnemonic.Cwde, Mnemonic.Cdqe, Mnemonic.Cwd, Mnemonic.Cdq, Mnemonic.Cqo, Mnemonic.Clc,
            Mnemonic.Stc, Mnemonic.Cmc, Mnemonic.Cld, Mnemonic.Std, Mnemonic.Lahf, Mnemonic.Sahf);
        Set(InstructionClass.MultiplyDivide, Mnemonic.Mul, Mnemonic.Imul, Mnemonic.Div, Mnemonic.Idiv);
        Set(InstructionClass.DataMovement, Mnemonic.Mov, Mnemonic.Movzx, Mnemonic.Movsx, Mnemonic.Movsxd, Mnemonic.Lea,
            Mnemonic.Xchg, Mnemonic.Xlatb, Mnemonic.Push, Mnemonic.Pop, Mnemonic.Nop, Mnemonic.Pause, Mnemonic.Endbr64,
            Mnemonic.Cmovo, Mnemonic.Cmovno, Mnemonic.Cmovb, Mnemonic.Cmovae, Mnemonic.Cmove, Mnemonic.Cmovne, Mnemonic.Cmovbe,
            Mnemonic.Cmova, Mnemonic.Cmovs, Mnemonic.Cmovns, Mnemonic.Cmovp, Mnemonic.Cmovnp, Mnemonic.Cmovl, Mnemonic.Cmovge,
            Mnemonic.Cmovle, Mnemonic.Cmovg, Mnemonic.Seto, Mnemonic.Setno, Mnemonic.Setb, Mnemonic.Setae, Mnemonic.Sete,
            Mnemonic.Setne, Mnemonic.Setbe, Mnemonic.Seta, Mnemonic.Sets, Mnemonic.Setns, Mnemonic.Setp, Mnemonic.Setnp,
            Mnemonic.Setl, Mnemonic.Setge, Mnemonic.Setle, Mnemonic.Setg);
        Set(InstructionClass.ControlTransfer, Mnemonic.Jmp, Mnemonic.Call, Mnemonic.Ret, Mnemonic.Jo, Mnemonic.Jno, Mnemonic.Jb,
            Mnemonic.Jae, Mnemonic.Je, Mnemonic.Jne, Mnemonic.Jbe, Mnemonic.Ja, Mnemonic.Js, Mnemonic.Jns, Mnemonic.Jp,
            Mnemonic.Jnp, Mnemonic.Jl, Mnemonic.Jge, Mnemonic.Jle, Mnemonic.Jg, Mnemonic.Jrcxz, Mnemonic.Jecxz, Mnemonic.Loop,
            Mnemonic.Loope, Mnemonic.Loopne, Mnemonic.Enter, Mnemonic.Leave);
        Set(InstructionClass.String, Mnemonic.Movsb, Mnemonic.Movsw, Mnemonic.Movsd, Mnemonic.Movsq, Mnemonic.Stosb,
            Mnemonic.Stosw, Mnemonic.Stosd, Mnemonic.Stosq, Mnemonic.Lodsb, Mnemonic.Lodsw, Mnemonic.Lodsd, Mnemonic.Lodsq,
            Mnemonic.Cmpsb, Mnemonic.Cmpsw, Mnemonic.Cmpsd, Mnemonic.Cmpsq, Mnemonic.Scasb, Mnemonic.Scasw, Mnemonic.Scasd,
            Mnemonic.Scasq);
        return table;
    }
}
