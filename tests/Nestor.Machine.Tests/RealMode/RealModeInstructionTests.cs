using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.RealMode;

/// <summary>Real-mode instructions and interrupts (SDM Vol. 3A ch. 20; Vol. 2 for each instruction's 16-bit forms),
/// each against values worked out by hand from the SDM. Code runs at CS = 0x0100 (base 0x1000), data and stack at
/// 0 unless the test loads other segments.</summary>
public class RealModeInstructionTests
{
    private static RealModeMachine Run(Action<Assembler> emit, Action<RealModeMachine>? setup = null)
    {
        var m = new RealModeMachine(0x0100);
        m.Cpu.Registers[4] = 0x7000;
        setup?.Invoke(m);
        m.Place(16, 0x1000, 0, a =>
        {
            emit(a);
            a.mov(dx, 0xF4);
            a.@out(dx, al);
        });
        m.RunToExit();
        return m;
    }

    /// <summary>INT n through the IVT (entry n at IDTR.base + 4n: offset, segment), pushing FLAGS, CS, IP and clearing
    /// IF and TF; IRET pops them back. The handler runs in its own segment (CS = 0x0300).</summary>
    [Fact]
    public void Int_goes_through_the_ivt_and_iret_returns()
    {
        var m = Run(a =>
        {
            a.sti();
            a.@int(0x21);
            a.mov(__word_ptr[0x0500], bx);                        // after IRET
            a.pushf();
            a.pop(__word_ptr[0x0502]);
        }, m =>
        {
            m.Memory.Write(0x21 * 4, 0x0300UL << 16 | 0x0010);   // vector 0x21 → 0300:0010 = physical 0x3010
            m.Place(16, 0x3010, 0x0010, a =>
            {
                a.mov(bp, sp);
                a.mov(ax, __word_ptr[bp]);                         // pushed IP
                a.mov(__word_ptr[0x0504], ax);
                a.mov(ax, __word_ptr[bp + 2]);                     // pushed CS
                a.mov(__word_ptr[0x0506], ax);
                a.mov(ax, __word_ptr[bp + 4]);                     // pushed FLAGS
                a.mov(__word_ptr[0x0508], ax);
                a.pushf();
                a.pop(__word_ptr[0x050A]);                        // FLAGS inside the handler
                a.mov(__word_ptr[0x050C], cs);
                a.mov(bx, 0x4242);
                a.iret();
            });
        });
        Assert.Equal(0x4242, m.ReadWord(0x0500));
        Assert.Equal(0x0100, m.ReadWord(0x0506));               // the interrupted CS
        Assert.Equal(3, m.ReadWord(0x0504));                     // the IP after STI (1 byte) and INT 21h (2 bytes)
        Assert.NotEqual(0, m.ReadWord(0x0508) & 0x200);          // IF was set when pushed
        Assert.Equal(0, m.ReadWord(0x050A) & 0x300);             // and clear (with TF) in the handler
        Assert.Equal(0x0300, m.ReadWord(0x050C));
        Assert.NotEqual(0, m.ReadWord(0x0502) & 0x200);          // IRET restored IF
        Assert.Equal(0x7000UL, m.Cpu.Registers[4] & 0xFFFF);
        Assert.Equal(1, m.Cpu.Counters.SoftwareInterrupts);
    }

    /// <summary>An exception in real mode (#DE from DIV by 0) is delivered through the IVT like INT 0, with the IP of
    /// the faulting instruction and no error code (SDM Vol. 3A §20.1.4); the handler skips the DIV and IRETs.</summary>
    [Fact]
    public void A_divide_error_goes_through_ivt_entry_0_with_the_faulting_ip()
    {
        var m = Run(a =>
        {
            a.xor(cx, cx);
            a.mov(ax, 10);
            a.div(cx);                                           // F7 F1, 2 bytes at IP 5
            a.mov(__word_ptr[0x0500], 0x600D);
        }, m =>
        {
            m.Memory.Write(0, 0x0000UL << 16 | 0x4000);          // vector 0 → 0000:4000
            m.Place(16, 0x4000, 0x4000, a =>
            {
                a.mov(bp, sp);
                a.mov(ax, __word_ptr[bp]);
                a.mov(__word_ptr[0x0502], ax);                   // the saved IP: the DIV itself
                a.mov(__word_ptr[0x0504], sp);
                a.add(__word_ptr[bp], 2);
                a.iret();
            });
        });
        Assert.Equal(0x600D, m.ReadWord(0x0500));
        Assert.Equal(5, m.ReadWord(0x0502));
        Assert.Equal(0x7000 - 6, m.ReadWord(0x0504));           // FLAGS, CS, IP: no error code
        Assert.Equal(1, m.Cpu.Counters.ExceptionsByVector[0]);
    }

    /// <summary>Far CALL ptr16:16 pushes CS and IP (2 bytes each) and RETF pops them; far CALL m16:16 through
    /// memory; RETF imm16 releases the arguments; a 66h far CALL (ptr16:32) pushes 4-byte slots and 66h RETF pops
    /// them.</summary>
    [Fact]
    public void Far_calls_and_returns_in_real_mode()
    {
        var m = Run(a =>
        {
            a.AddInstruction(Instruction.CreateBranch(Code.Call_ptr1616, 0x0400, 0x0000));
            a.mov(__word_ptr[0x0502], sp);
            a.mov(__word_ptr[0x0600], 0x0010);                     // m16:16 = 0400:0010
            a.mov(__word_ptr[0x0602], 0x0400);
            a.push(0x1111);
            a.push(0x2222);
            a.AddInstruction(Instruction.Create(Code.Call_m1616, new MemoryOperand(Register.None, 0x0600, 2)));
            a.mov(__word_ptr[0x0504], sp);                         // RETF 4 released both arguments
            a.AddInstruction(Instruction.CreateBranch(Code.Call_ptr1632, 0x0400, 0x0020));
            a.mov(__word_ptr[0x0506], sp);
        }, m =>
        {
            m.Place(16, 0x4000, 0x0000, a =>
            {
                a.mov(__word_ptr[0x0500], cs);
                a.retf();
            });
            m.Place(16, 0x4010, 0x0010, a =>
            {
                a.mov(bp, sp);
                a.mov(ax, __word_ptr[bp + 4]);                    // the last argument pushed
                a.mov(__word_ptr[0x0508], ax);
                a.retf(4);
            });
            m.Place(16, 0x4020, 0x0020, a =>
            {
                a.mov(bp, sp);
                a.mov(eax, __dword_ptr[bp + 4]);                  // CS in a 4-byte slot
                a.mov(__dword_ptr[0x050C], eax);
                a.AddInstruction(Instruction.Create(Code.Retfd));
            });
        });
        Assert.Equal(0x0400, m.ReadWord(0x0500));
        Assert.Equal(0x7000, m.ReadWord(0x0502));
        Assert.Equal(0x7000, m.ReadWord(0x0504));
        Assert.Equal(0x2222, m.ReadWord(0x0508));
        Assert.Equal(0x0100u, m.ReadDword(0x050C));
        Assert.Equal(0x7000, m.ReadWord(0x0506));
        Assert.Equal(0x0100, m.Cpu.Cs.Selector);
    }

    /// <summary>LOOP counts CX (the rest of ECX kept), JCXZ tests CX; REP MOVSB copies DS:SI to ES:DI with CX
    /// (both segments' bases applied); STOSW stores at ES:DI; LODSB loads from a segment override.</summary>
    [Fact]
    public void Loop_jcxz_and_strings_use_cx_si_di_and_the_segments()
    {
        var m = Run(a =>
        {
            var loop = a.CreateLabel();
            var zero = a.CreateLabel();
            a.mov(ecx, 0x0001_0003);
            a.xor(bx, bx);
            a.Label(ref loop);
            a.inc(bx);
            a.loop(loop);                                         // 3 iterations: CX 3 → 0, ECX's upper half kept
            a.mov(__dword_ptr[0x0500], ecx);
            a.mov(__word_ptr[0x0504], bx);
            a.jcxz(zero);
            a.mov(__word_ptr[0x0506], 0xBAD);
            a.Label(ref zero);
            a.mov(ax, 0x0200);
            a.mov(ds, ax);                                        // source segment at 0x2000
            a.mov(ax, 0x0300);
            a.mov(es, ax);                                        // destination at 0x3000
            a.mov(si, 0x10);
            a.mov(di, 0x20);
            a.mov(cx, 4);
            a.cld();
            a.rep.movsb();
            a.mov(ax, 0xBEEF);
            a.stosw();
            a.xor(ax, ax);
            a.mov(ds, ax);
            a.mov(si, 0x21);
            a.AddInstruction(Instruction.CreateLodsb(16, Register.ES));   // ES:[SI] = 0x3021, the second byte copied
            a.mov(__word_ptr[0x0508], ax);
            a.mov(__word_ptr[0x050A], di);
        }, m => m.Poke(0x2010, 1, 2, 3, 4));
        Assert.Equal(0x0001_0000u, m.ReadDword(0x0500));
        Assert.Equal(3, m.ReadWord(0x0504));
        Assert.Equal(0, m.ReadWord(0x0506));
        Assert.Equal(0x04030201u, m.ReadDword(0x3020));
        Assert.Equal(0xBEEF, m.ReadWord(0x3024));
        Assert.Equal(2, m.ReadWord(0x0508) & 0xFF);
        Assert.Equal(0x26, m.ReadWord(0x050A));
    }

    /// <summary>PUSHA pushes AX, CX, DX, BX, the original SP, BP, SI, DI (2 bytes each) and POPA restores all but SP;
    /// PUSHAD with 4-byte slots; PUSHF/POPF at 2 bytes and 66h PUSHFD at 4; ENTER 8, 0 and LEAVE on BP and SP.</summary>
    [Fact]
    public void Pusha_popa_pushf_enter_and_leave_on_a_16_bit_stack()
    {
        var m = Run(a =>
        {
            a.mov(ax, 1); a.mov(cx, 2); a.mov(dx, 3); a.mov(bx, 4); a.mov(bp, 6); a.mov(si, 7); a.mov(di, 8);
            a.pusha();
            a.mov(__word_ptr[0x0500], sp);
            a.mov(bp, sp);
            a.mov(ax, __word_ptr[bp + 6]);                       // the SP slot, above DI, SI, BP
            a.mov(__word_ptr[0x0512], ax);
            a.xor(ax, ax); a.xor(cx, cx); a.xor(bx, bx); a.xor(si, si); a.xor(di, di);
            a.popa();
            a.mov(__word_ptr[0x0502], si);
            a.mov(__word_ptr[0x0504], bx);
            a.mov(__word_ptr[0x0506], sp);
            a.pushad();
            a.mov(__word_ptr[0x0508], sp);
            a.popad();
            a.pushfd();
            a.mov(__word_ptr[0x050A], sp);
            a.popfd();
            a.enter(8, 0);
            a.mov(__word_ptr[0x050C], sp);
            a.mov(__word_ptr[0x050E], bp);
            a.leave();
            a.mov(__word_ptr[0x0510], sp);
        });
        Assert.Equal(0x7000 - 16, m.ReadWord(0x0500));
        Assert.Equal(0x7000, m.ReadWord(0x0512));                // the SP slot holds SP before PUSHA
        Assert.Equal(7, m.ReadWord(0x0502));
        Assert.Equal(4, m.ReadWord(0x0504));
        Assert.Equal(0x7000, m.ReadWord(0x0506));
        Assert.Equal(0x7000 - 32, m.ReadWord(0x0508));
        Assert.Equal(0x7000 - 4, m.ReadWord(0x050A));
        Assert.Equal(0x7000 - 2 - 8, m.ReadWord(0x050C));
        Assert.Equal(0x7000 - 2, m.ReadWord(0x050E));
        Assert.Equal(0x7000, m.ReadWord(0x0510));
    }

    /// <summary>LDS and LSS load a segment (base selector × 16) and a register from a far pointer; XLAT reads DS:[BX+AL];
    /// BOUND within its bounds passes and outside raises #BR through IVT entry 5.</summary>
    [Fact]
    public void Lds_lss_xlat_and_bound()
    {
        var m = Run(a =>
        {
            a.mov(__word_ptr[0x0600], 0x0040);
            a.mov(__word_ptr[0x0602], 0x0500);                    // far pointer 0500:0040
            a.lds(si, __dword_ptr[0x0600]);
            a.mov(al, 3);
            a.mov(bx, 0x0020);
            a.xlatb();                                            // DS:[0x23] = 0x5023
            a.xor(dx, dx);
            a.mov(ds, dx);
            a.mov(__word_ptr[0x0500], ax);
            a.mov(__word_ptr[0x0502], si);
            a.lss(sp, __dword_ptr[0x0600]);                       // SS = 0x500, SP = 0x40
            a.push(0x7777);                                       // at 0x5000 + 0x3E
            a.mov(__word_ptr[0x0610], 2);
            a.mov(__word_ptr[0x0612], 9);
            a.mov(cx, 5);
            a.bound(cx, __dword_ptr[0x0610]);
            a.mov(cx, 10);
            a.bound(cx, __dword_ptr[0x0610]);                     // #BR: the handler sets BP and skips it
            a.mov(__word_ptr[0x0504], bp);
        }, m =>
        {
            m.Poke(0x5023, 0xA5);
            m.Memory.Write(5 * 4, 0x0000UL << 16 | 0x4000);
            m.Place(16, 0x4000, 0x4000, a =>
            {
                a.mov(bp, sp);
                a.add(__word_ptr[bp], 4);                         // BOUND CX, [disp16] is 62 0E disp16: 4 bytes
                a.mov(bp, 0x0B0B);
                a.iret();
            });
        });
        Assert.Equal(0xA5, m.ReadWord(0x0500) & 0xFF);
        Assert.Equal(0x0040, m.ReadWord(0x0502));
        Assert.Equal(0x7777, m.ReadWord(0x5000 + 0x3E));
        Assert.Equal(0x5000UL, m.Cpu.Ss.Base);
        Assert.Equal(0x0B0B, m.ReadWord(0x0504));
        Assert.Equal(1, m.Cpu.Counters.ExceptionsByVector[(int)ExceptionVector.BoundRangeExceeded]);
    }

    /// <summary>DAA, DAS, AAA, AAS, AAM, AAD and SALC against the SDM's pseudo-code worked by hand: 0x19 + 0x28 = 0x41
    /// adjusted to BCD 47; 0x47 − 0x28 = 0x1F adjusted to 19; AAM of 0x10 gives AH 1, AL 6; AAD of AH 5, AL 6 gives 56
    /// (0x38); SALC with CF set gives AL = FFh.</summary>
    [Fact]
    public void Decimal_adjustments_follow_the_sdm()
    {
        var m = Run(a =>
        {
            a.mov(al, 0x19);
            a.add(al, 0x28);
            a.daa();
            a.mov(__byte_ptr[0x0500], al);
            a.mov(al, 0x47);
            a.sub(al, 0x28);
            a.das();
            a.mov(__byte_ptr[0x0501], al);
            a.mov(ax, 0x0010);
            a.aam(10);
            a.mov(__word_ptr[0x0502], ax);
            a.mov(ax, 0x0506);
            a.aad(10);
            a.mov(__word_ptr[0x0504], ax);
            a.mov(ax, 0x000F);
            a.aaa();                                              // AL 0x0F > 9: AX + 0x106 = 0x115, AL & 0x0F → 0x0105
            a.mov(__word_ptr[0x0506], ax);
            a.stc();
            a.salc();
            a.mov(__byte_ptr[0x0508], al);
        });
        Assert.Equal(0x47, m.ReadWord(0x0500) & 0xFF);
        Assert.Equal(0x19, m.ReadWord(0x0501) & 0xFF);
        Assert.Equal(0x0106, m.ReadWord(0x0502));
        Assert.Equal(0x0038, m.ReadWord(0x0504));
        Assert.Equal(0x0105, m.ReadWord(0x0506));
        Assert.Equal(0xFF, m.ReadWord(0x0508) & 0xFF);
    }
}
