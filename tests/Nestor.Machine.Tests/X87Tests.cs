using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Tests.RealMode;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The x87 FPU the machine models (Cpu.X87): its control instructions, its data moves with their exact
/// conversions, its stack faults, CR0.EM/TS/NE, and the arithmetic it does not model raising #UD, counted.</summary>
public class X87Tests
{
    private const ulong Data = 0x5000;

    private static ushort Word(TestMachine m, ulong address) => (ushort)m.Memory.Read(address);

    private static uint Dword(TestMachine m, ulong address) => (uint)m.Memory.Read(address);

    [Fact]
    public void Fninit_gives_the_initial_control_and_status_words_and_an_empty_stack()
    {
        var m = new TestMachine(a =>
        {
            a.fnstcw(__word_ptr[Data]);     // after RESET: 0x0040
            a.fninit();
            a.fnstsw(__word_ptr[Data + 2]);
            a.fnstcw(__word_ptr[Data + 4]);
            a.mov(eax, 0xFFFF_FFFF);
            a.fnstsw(ax);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x0040, Word(m, Data));
        Assert.Equal(0, Word(m, Data + 2));
        Assert.Equal(0x037F, Word(m, Data + 4));
        Assert.Equal(0xFFFF_0000UL, m.Cpu.Registers[0] & 0xFFFF_FFFF); // FNSTSW AX writes AX only
        Assert.Equal(0xFFFF, m.Cpu.SaveState().X87.Tag);
        Assert.Null(m.Cpu.LastUnmodelledInstruction);
    }

    /// <summary>kvm-unit-tests' realmode <c>test_fninit</c>, on a CPU as it leaves reset: FNINIT, then FNSTSW and
    /// FNSTCW to memory through 32-bit addresses in real mode.</summary>
    [Fact]
    public void Fninit_fnstsw_and_fnstcw_run_in_real_mode()
    {
        var m = new RealModeMachine(0, 0x1000);
        m.Place(16, 0x1000, 0x1000, a =>
        {
            a.mov(eax, 0x2000);
            a.mov(ebx, 0x2002);
            a.fninit();
            a.fnstsw(__word_ptr[eax]);
            a.fnstcw(__word_ptr[ebx]);
            a.mov(dx, 0xF4);
            a.@out(dx, al);
        });
        m.RunToExit();
        Assert.Equal(0, m.ReadWord(0x2000));
        Assert.Equal(0x037F, m.ReadWord(0x2002));
    }

    [Fact]
    public void Constants_exchange_sign_changes_and_extended_stores_give_the_exact_bit_patterns()
    {
        var m = new TestMachine(a =>
        {
            a.fninit();
            a.fld1();
            a.fldz();
            a.fxch(st0, st1);                    // ST0 = 1, ST1 = 0
            a.fchs();                       // ST0 = -1
            a.fstp(__tword_ptr[Data]);
            a.fchs();                       // -0
            a.fstp(__tword_ptr[Data + 16]);
            a.fnstsw(__word_ptr[Data + 32]);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x8000_0000_0000_0000UL, m.Memory.Read(Data));
        Assert.Equal(0xBFFF, Word(m, Data + 8));
        Assert.Equal(0UL, m.Memory.Read(Data + 16));
        Assert.Equal(0x8000, Word(m, Data + 24));
        Assert.Equal(0, Word(m, Data + 32));        // TOP back at 0, no flags
        Assert.Equal(0xFFFF, m.Cpu.SaveState().X87.Tag);
    }

    /// <summary>A double halfway between two singles rounds to the even one (1 + 2^-24 → 1.0) or up to it (1 + 3·2^-24
    /// → 1 + 2^-22, C1 set); FLDCW's round-toward-zero truncates (→ 1 + 2^-23); PE is set each time.</summary>
    [Fact]
    public void Stores_to_single_precision_round_by_the_control_word()
    {
        var m = new TestMachine(a =>
        {
            a.fninit();
            a.fld(__qword_ptr[Data]);
            a.fst(__dword_ptr[Data + 0x20]);
            a.fnstsw(__word_ptr[Data + 0x40]);
            a.fstp(st0);
            a.fnclex();
            a.fld(__qword_ptr[Data + 8]);
            a.fst(__dword_ptr[Data + 0x24]);
            a.fnstsw(__word_ptr[Data + 0x42]);
            a.fldcw(__word_ptr[Data + 0x10]);   // RC = 11b, toward zero
            a.fstp(__dword_ptr[Data + 0x28]);
            a.fnstcw(__word_ptr[Data + 0x44]);
        });
        m.Memory.Write(Data, 0x3FF0_0000_1000_0000UL);       // 1 + 2^-24
        m.Memory.Write(Data + 8, 0x3FF0_0000_3000_0000UL);   // 1 + 3·2^-24
        m.Memory.Write(Data + 0x10, 0x0F7FUL);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x3F80_0000u, Dword(m, Data + 0x20));
        Assert.Equal(0x0020, Word(m, Data + 0x40) & 0x0220);   // PE, C1 clear (rounded down)
        Assert.Equal(0x3F80_0002u, Dword(m, Data + 0x24));
        Assert.Equal(0x0220, Word(m, Data + 0x42) & 0x0220);   // PE, C1 set (rounded up)
        Assert.Equal(0x3F80_0001u, Dword(m, Data + 0x28));
        Assert.Equal(0x0F7F, Word(m, Data + 0x44));
    }

    [Theory]
    [InlineData(0x3FF0_0000_1000_0000UL, 0, 0x3F80_0000u, (ushort)0x20)]        // tie, to even
    [InlineData(0x3FF0_0000_1000_0001UL, 0, 0x3F80_0001u, (ushort)0x20)]        // above the tie
    [InlineData(0xBFF0_0000_1000_0001UL, 1, 0xBF80_0001u, (ushort)0x20)]        // down, negative: away from zero
    [InlineData(0x3FF0_0000_1000_0001UL, 1, 0x3F80_0000u, (ushort)0x20)]        // down, positive: truncated
    [InlineData(0x3FF0_0000_0000_0001UL, 2, 0x3F80_0001u, (ushort)0x20)]        // up
    [InlineData(0x7E37_E43C_8800_759CUL, 0, 0x7F80_0000u, (ushort)0x28)]        // 1e300: overflow to +inf
    [InlineData(0x7E37_E43C_8800_759CUL, 3, 0x7F7F_FFFFu, (ushort)0x28)]        // toward zero: the largest finite
    [InlineData(0x3800_0000_0000_0000UL, 0, 0x0040_0000u, (ushort)0)]           // 2^-127: an exact denormal
    [InlineData(0x0000_0000_0000_0001UL, 0, 0x0000_0000u, (ushort)0x32)]        // far below: DE (the source), zero, UE and PE
    [InlineData(0x7FF4_0000_0000_0000UL, 0, 0x7FE0_0000u, (ushort)0x01)]        // SNaN: quieted, IE
    [InlineData(0xFFF0_0000_0000_0000UL, 0, 0xFF80_0000u, (ushort)0)]           // -inf
    public void Double_to_single_through_the_extended_format_matches_IEEE_754(ulong source, int rounding, uint expected, ushort expectedFlags)
    {
        X87Conversion.Widen(source, X87Conversion.Double, out var extended, out ushort widenFlags);
        ulong bits = X87Conversion.Narrow(extended, X87Conversion.Single, rounding, trapUnderflow: false, out ushort flags, out _);
        Assert.Equal(expected, (uint)bits);
        Assert.Equal(expectedFlags, (ushort)(flags | widenFlags));
    }

    [Fact]
    public void Widening_is_exact_and_a_single_denormal_is_normalized_with_DE()
    {
        Assert.True(X87Conversion.Widen(0x3F80_0000, X87Conversion.Single, out var one, out _));
        Assert.Equal((0x8000_0000_0000_0000UL, (ushort)0x3FFF), (one.Significand, one.SignExponent));
        Assert.False(X87Conversion.Widen(0x0000_0001, X87Conversion.Single, out var tiny, out ushort flags));
        Assert.Equal(0x02, flags);                                  // DE
        Assert.Equal((0x8000_0000_0000_0000UL, (ushort)(16383 - 149)), (tiny.Significand, tiny.SignExponent));
        // And back: the smallest single denormal survives the round trip exactly.
        Assert.Equal(1UL, X87Conversion.Narrow(tiny, X87Conversion.Single, 0, false, out ushort back, out _));
        Assert.Equal(0, back);
        Assert.Equal(0x36A0_0000_0000_0000UL, X87Conversion.Narrow(tiny, X87Conversion.Double, 0, false, out _, out _)); // 2^-149 as a double
    }

    [Fact]
    public void A_ninth_push_is_a_masked_stack_overflow_that_loads_the_indefinite()
    {
        var m = new TestMachine(a =>
        {
            a.fninit();
            for (int n = 0; n < 9; n++)
            {
                a.fld1();
            }
            a.fnstsw(__word_ptr[Data + 16]);
            a.fstp(__tword_ptr[Data]);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x0241, Word(m, Data + 16) & 0x07FF);  // C1, SF, IE (ES clear: masked)
        Assert.Equal(7, (Word(m, Data + 16) >> 11) & 7);   // the indefinite pushed: TOP 7
        Assert.Equal(0xC000_0000_0000_0000UL, m.Memory.Read(Data));
        Assert.Equal(0xFFFF, Word(m, Data + 8));
    }

    [Fact]
    public void CR0_TS_makes_an_x87_instruction_raise_NM_and_CLTS_lets_it_run()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var body = a.CreateLabel();
            TestMachine.Gate(a, 7, handler);
            a.jmp(body);
            a.Label(ref handler);
            a.inc(r15);
            a.clts();
            a.iretq();
            a.Label(ref body);
            a.fninit();
            a.fnstcw(__word_ptr[Data]);
        }, setup: c => c.Cr0 |= Cr0.TaskSwitched);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(1UL, m.Cpu.Registers[15]);             // one #NM, then FNINIT ran again
        Assert.Equal(0x037F, Word(m, Data));
        Assert.Equal(1, m.Cpu.Counters.ExceptionsByVector[7]);
    }

    [Fact]
    public void CR0_EM_raises_NM_but_WAIT_only_with_TS_and_MP()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            a.wait();                       // EM does not affect WAIT
            at = a.CreateLabel();
            a.Label(ref at);
            a.fninit();                     // #NM; no IDT, so the CPU shuts down at it
        }, setup: c => c.Cr0 |= Cr0.Emulation);
        Assert.Equal(StopReason.Shutdown, m.RunToEnd().Stop);
        var cause = m.Cpu.ShutdownCause!.Value;
        Assert.Equal((ExceptionVector.DeviceNotAvailable, m.Address(at)), (cause.Vector, cause.Rip));
    }

    /// <summary>With IE unmasked, a stack overflow leaves the stack alone and sets ES; the next waiting instruction
    /// (FWAIT) delivers it as #MF (CR0.NE = 1); FNCLEX in the handler ends it.</summary>
    [Fact]
    public void An_unmasked_exception_is_pending_until_the_next_waiting_instruction_raises_MF()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var body = a.CreateLabel();
            TestMachine.Gate(a, 16, handler);
            a.jmp(body);
            a.Label(ref handler);
            a.inc(r15);
            a.fnstsw(__word_ptr[Data + 2]);
            a.fnclex();
            a.iretq();
            a.Label(ref body);
            a.fninit();
            a.fldcw(__word_ptr[Data]);      // 0x037E: IM clear
            for (int n = 0; n < 9; n++)
            {
                a.fld1();                   // the ninth overflows: not pushed
            }
            a.fnop();                       // a waiting instruction: #MF before it
            a.fnstsw(__word_ptr[Data + 4]);
        }, setup: c => c.Cr0 |= Cr0.NumericError);
        m.Memory.Write(Data, 0x037EUL);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(1UL, m.Cpu.Registers[15]);
        Assert.Equal(0x82C1, Word(m, Data + 2));            // B, C1, ES, SF, IE; TOP 0
        Assert.Equal(0, Word(m, Data + 4) & 0x80FF);
        Assert.Equal(0, m.Cpu.SaveState().X87.Tag);       // eight valid ones, none lost or replaced
    }

    [Fact]
    public void Fnstenv_writes_the_32_bit_protected_mode_environment_and_fldenv_reads_it_back()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            a.fninit();
            at = a.CreateLabel();
            a.Label(ref at);
            a.fld(__qword_ptr[Data + 0x100]);
            a.fnstenv(__[Data]);
            a.fnstcw(__word_ptr[Data + 0x40]);   // FNSTENV masked every exception
            a.fldenv(__[Data]);
            a.fnstcw(__word_ptr[Data + 0x42]);
        });
        m.Memory.Write(Data + 0x100, 0x3FF0_0000_0000_0000UL);
        m.Memory.Write(Data + 0x40, 0UL);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x037Fu, Dword(m, Data) & 0xFFFF);
        Assert.Equal(0x3800u, Dword(m, Data + 4) & 0xFFFF);   // TOP 7
        Assert.Equal(0x3FFFu, Dword(m, Data + 8) & 0xFFFF);   // R7 valid (00), the rest empty
        Assert.Equal((uint)m.Address(at), Dword(m, Data + 12));
        Assert.Equal(0x8u, Dword(m, Data + 16) & 0xFFFF);     // CS
        Assert.Equal(0x0504u, Dword(m, Data + 16) >> 16);     // FOP: DD /0 with ModR/M 04 (SIB)
        Assert.Equal((uint)(Data + 0x100), Dword(m, Data + 20));
        Assert.Equal(0x037F, Word(m, Data + 0x40));
        Assert.Equal(0x037F, Word(m, Data + 0x42));
    }

    [Fact]
    public void Fnsave_stores_the_registers_and_initializes_and_frstor_brings_them_back()
    {
        var m = new TestMachine(a =>
        {
            a.fninit();
            a.fld1();
            a.fldz();
            a.fnsave(__[Data]);
            a.fnstcw(__word_ptr[Data + 0x100]);
            a.fnstsw(__word_ptr[Data + 0x102]);
            a.frstor(__[Data]);
            a.fstp(__tword_ptr[Data + 0x110]);  // 0
            a.fstp(__tword_ptr[Data + 0x120]);  // 1
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        // 108 bytes: the 28-byte environment, then ST(0) = +0 and ST(1) = 1.0, ten bytes each.
        Assert.Equal(0UL, m.Memory.Read(Data + 28));
        Assert.Equal(0x8000_0000_0000_0000UL, m.Memory.Read(Data + 38));
        Assert.Equal(0x3FFF, Word(m, Data + 46));
        Assert.Equal(0x037F, Word(m, Data + 0x100));
        Assert.Equal(0, Word(m, Data + 0x102));
        Assert.Equal(0UL, m.Memory.Read(Data + 0x110));
        Assert.Equal(0x8000_0000_0000_0000UL, m.Memory.Read(Data + 0x120));
        Assert.Equal(0xFFFF, m.Cpu.SaveState().X87.Tag);
    }

    [Fact]
    public void X87_arithmetic_is_not_modelled_and_raises_UD_counted()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var body = a.CreateLabel();
            TestMachine.Gate(a, 6, handler);
            a.jmp(body);
            a.Label(ref handler);
            a.inc(r15);
            a.add(__qword_ptr[rsp], 2);     // past the two-byte FADDP
            a.iretq();
            a.Label(ref body);
            a.fninit();
            a.fld1();
            a.fld1();
            a.faddp(st1, st0);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(1UL, m.Cpu.Registers[15]);
        Assert.Equal("Faddp", m.Cpu.LastUnmodelledInstruction!.Value.Mnemonic);
        Assert.Equal("FPU", m.Cpu.LastUnmodelledInstruction!.Value.Feature);
        Assert.Contains(CpuidFeatures.Reported, f => f.Feature == CpuFeature.FloatingPointUnit);
    }
}
