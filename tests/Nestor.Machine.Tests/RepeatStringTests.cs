using Iced.Intel;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>Repeated string instructions are interruptible between iterations (SDM Vol. 2B REP): a long one leaves
/// Run with RIP still at it, RCX/RSI/RDI saying how far it got, not retired; executed again, it goes on from there.</summary>
public class RepeatStringTests
{
    private const ulong Huge = 1UL << 40;
    private const ulong Slice = 1UL << 20; // the iterations one execution runs before it yields to Run's caller
    private const ulong Buffer = 0x100000, Other = 0x300000;

    private static (TestMachine Machine, ulong At) Machine(Action<Assembler> setup, Action<Assembler> repeat, int megabytes = 8)
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            setup(a);
            at = a.CreateLabel();
            a.Label(ref at);
            repeat(a);
        }, megabytes);
        return (m, m.Address(at));
    }

    [Fact]
    public void A_huge_rep_stosb_returns_from_Run_with_rip_at_it_and_rcx_counted_down()
    {
        var (m, at) = Machine(a =>
        {
            a.mov(rcx, Huge);
            a.mov(rdi, Buffer);
            a.mov(eax, 0xAB);
        }, a => a.rep.stosb());
        var stop = m.Cpu.Run(1_000_000);
        Assert.Equal(StopReason.Budget, stop);
        Assert.Equal(at, m.Cpu.Rip);
        Assert.Equal(3, m.Cpu.Counters.InstructionsRetired); // the three MOVs; the REP is not retired
        Assert.Equal(Huge - Slice, m.Cpu.Registers[1]);
        Assert.Equal(Buffer + Slice, m.Cpu.Registers[7]);
        Assert.Equal(0xABABABABABABABABUL, m.Memory.Read(Buffer + Slice - 8));
        Assert.Equal(0UL, m.Memory.Read(Buffer + Slice));
        // And again: the next call goes on from there.
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal((at, Huge - 2 * Slice), (m.Cpu.Rip, m.Cpu.Registers[1]));
        Assert.Equal(3, m.Cpu.Counters.InstructionsRetired);
    }

    [Fact]
    public void A_suspended_rep_resumes_to_the_exact_result_and_retires_once()
    {
        const ulong count = 3 * Slice + 5;
        var (m, _) = Machine(a =>
        {
            a.mov(rcx, count);
            a.mov(rdi, Buffer);
            a.mov(eax, 0x5A);
        }, a => a.rep.stosb());
        var (stop, budgets) = m.RunToEnd();
        Assert.Equal(StopReason.PlatformStop, stop);
        Assert.Equal(3, budgets); // suspended three times, the fourth execution finished it
        Assert.Equal(0UL, m.Cpu.Registers[1]);
        Assert.Equal(Buffer + count, m.Cpu.Registers[7]);
        Assert.Equal(0x5A5A5A5A5A5A5A5AUL, m.Memory.Read(Buffer + count - 8));
        Assert.Equal(0UL, m.Memory.Read(Buffer + count) & 0xFF);
        Assert.Equal(0x5AUL, m.Memory.Read(Buffer + count - 1) & 0xFF);
        // 3 MOVs, the REP once, MOV DX and OUT.
        Assert.Equal(6, m.Cpu.Counters.InstructionsRetired);
        Assert.Equal(1, m.Cpu.Counters.RetiredByClass[(int)InstructionClass.String]);
    }

    [Fact]
    public void A_stop_request_suspends_a_rep_within_a_few_thousand_iterations()
    {
        var (m, at) = Machine(a =>
        {
            a.mov(rcx, Huge);
            a.mov(rdi, Buffer);
        }, a => a.rep.stosb());
        m.Host.Stop = true; // a timeout or Ctrl-C, say
        Assert.Equal(StopReason.PlatformStop, m.Cpu.Run(1_000_000));
        Assert.Equal(at, m.Cpu.Rip);
        ulong done = Huge - m.Cpu.Registers[1];
        Assert.InRange(done, 1UL, 4096UL);
        Assert.Equal(Buffer + done, m.Cpu.Registers[7]);
        Assert.Equal(2, m.Cpu.Counters.InstructionsRetired);
        // Without the request it carries on.
        m.Host.Stop = false;
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal(Huge - done - Slice, m.Cpu.Registers[1]);
    }

    [Fact]
    public void A_short_rep_ignores_a_stop_request_and_completes()
    {
        var (m, _) = Machine(a =>
        {
            a.mov(ecx, 4000);
            a.mov(rdi, Buffer);
        }, a => a.rep.stosb());
        m.Host.Stop = true;
        Assert.Equal(StopReason.PlatformStop, m.Cpu.Run(1_000_000));
        Assert.Equal(0UL, m.Cpu.Registers[1]); // completed: fewer iterations than one check interval
        Assert.Equal(1, m.Host.StopChecks); // only the OUT looked
    }

    [Fact]
    public void Rep_movsb_is_suspended_and_resumed_too()
    {
        var (m, at) = Machine(a =>
        {
            // A recognisable source: the first 16 bytes, and one past the first slice.
            a.mov(rax, 0x1122334455667788UL);
            a.mov(__qword_ptr[Buffer], rax);
            a.mov(__qword_ptr[Buffer + Slice], rax);
            a.mov(rcx, Slice + 16);
            a.mov(rsi, Buffer);
            a.mov(rdi, Other);
        }, a => a.rep.movsb());
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal((at, 16UL, Buffer + Slice, Other + Slice), (m.Cpu.Rip, m.Cpu.Registers[1], m.Cpu.Registers[6], m.Cpu.Registers[7]));
        Assert.Equal(StopReason.PlatformStop, m.Cpu.Run(1_000_000));
        Assert.Equal(0UL, m.Cpu.Registers[1]);
        Assert.Equal(0x1122334455667788UL, m.Memory.Read(Other));
        Assert.Equal(0x1122334455667788UL, m.Memory.Read(Other + Slice));
    }

    /// <summary>REPE CMPSB over equal (zero) memory runs past a suspension and still ends at the first difference,
    /// with ZF clear and the registers one past it.</summary>
    [Fact]
    public void Repe_cmpsb_ends_at_the_first_difference_across_a_suspension()
    {
        const ulong difference = Slice + 10;
        var (m, at) = Machine(a =>
        {
            a.mov(__byte_ptr[Other + difference], 1);
            a.mov(rcx, Huge);
            a.mov(rsi, Buffer);
            a.mov(rdi, Other);
        }, a => a.repe.cmpsb());
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal((at, Huge - Slice), (m.Cpu.Rip, m.Cpu.Registers[1]));
        Assert.Equal(StopReason.PlatformStop, m.Cpu.Run(1_000_000));
        Assert.Equal(Huge - difference - 1, m.Cpu.Registers[1]);
        Assert.Equal((Buffer + difference + 1, Other + difference + 1), (m.Cpu.Registers[6], m.Cpu.Registers[7]));
        Assert.Equal(0UL, m.Cpu.Rflags & 0x40); // ZF clear: 0 - 1
        Assert.Equal(1UL, m.Cpu.Rflags & 1);    // and a borrow
    }

    [Fact]
    public void Repne_scasb_finds_the_byte_and_repe_scasb_stops_at_another()
    {
        var (m, _) = Machine(a =>
        {
            a.mov(__byte_ptr[Buffer + 6], 0x42);
            a.mov(ecx, 100);
            a.mov(rdi, Buffer);
            a.mov(eax, 0x42);
        }, a =>
        {
            a.repne.scasb();
            a.mov(r8, rcx);
            a.mov(r9, rdi);
            a.mov(ecx, 100);
            a.mov(rdi, Buffer);
            a.xor(eax, eax);
            a.repe.scasb();
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal((100UL - 7, Buffer + 7), (m.Cpu.Registers[8], m.Cpu.Registers[9]));
        Assert.Equal((100UL - 7, Buffer + 7), (m.Cpu.Registers[1], m.Cpu.Registers[7]));
        Assert.Equal(0UL, m.Cpu.Rflags & 0x40);
    }

    [Fact]
    public void Huge_repe_scasb_over_equal_memory_and_rep_lodsb_are_suspended()
    {
        var (m, at) = Machine(a =>
        {
            a.mov(rcx, Huge);
            a.mov(rdi, Buffer);
            a.xor(eax, eax);
        }, a => a.repe.scasb());
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal((at, Huge - Slice, Buffer + Slice), (m.Cpu.Rip, m.Cpu.Registers[1], m.Cpu.Registers[7]));

        (m, at) = Machine(a =>
        {
            a.mov(__byte_ptr[Buffer + Slice - 1], 0x77);
            a.mov(rcx, Huge);
            a.mov(rsi, Buffer);
        }, a => a.rep.lodsb());
        Assert.Equal(StopReason.Budget, m.Cpu.Run(1_000_000));
        Assert.Equal((at, Huge - Slice, Buffer + Slice), (m.Cpu.Rip, m.Cpu.Registers[1], m.Cpu.Registers[6]));
        Assert.Equal(0x77UL, m.Cpu.Registers[0] & 0xFF); // the last byte loaded
    }

    [Fact]
    public void Rep_lodsq_and_std_count_down()
    {
        var (m, _) = Machine(a =>
        {
            a.mov(rax, 0x0102030405060708UL);
            a.mov(__qword_ptr[Buffer], rax);
            a.mov(ecx, 3);
            a.mov(rsi, Buffer + 16);
            a.std();
        }, a => { a.rep.lodsq(); a.cld(); });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x0102030405060708UL, m.Cpu.Registers[0]);
        Assert.Equal(Buffer - 8, m.Cpu.Registers[6]);
    }

    /// <summary>With a 32-bit address size (67h in 64-bit mode), ESI, EDI and ECX are the registers: they wrap at
    /// 4 GiB and, as 32-bit register writes, clear the upper halves (SDM Vol. 2B REP, Vol. 1 §3.4.1.1).</summary>
    [Fact]
    public void Address_size_32_uses_esi_edi_and_ecx_wrapping_at_32_bits()
    {
        var (m, _) = Machine(a =>
        {
            a.mov(rcx, 0x0000_0007_0000_0020UL);   // ECX = 32; the upper half is not the count
            a.mov(rdi, 0x0000_0005_FFFF_FFF0UL);   // EDI 16 bytes below 4 GiB
            a.mov(eax, 0xCD);
        }, a => a.db(0x67, 0xF3, 0xAA));           // a32 rep stosb
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0UL, m.Cpu.Registers[1]);     // not 7 << 32: ECX counted, and RCX's upper half cleared
        Assert.Equal(0x10UL, m.Cpu.Registers[7]);  // EDI wrapped to 0x10, the upper half cleared
        Assert.Equal(0xCDCDCDCDCDCDCDCDUL, m.Memory.Read(0));
        Assert.Equal(0xCDCDCDCDCDCDCDCDUL, m.Memory.Read(8));

        (m, _) = Machine(a =>
        {
            a.mov(rax, 0x8877665544332211UL);
            a.mov(__qword_ptr[0x40], rax);
            a.mov(rsi, 0x0000_0001_0000_0040UL);   // ESI = 0x40
            a.mov(rdi, 0x0000_0002_0000_0080UL);   // EDI = 0x80
            a.mov(ecx, 8);
        }, a => a.db(0x67, 0xF3, 0xA4));           // a32 rep movsb
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x8877665544332211UL, m.Memory.Read(0x80));
        Assert.Equal((0x48UL, 0x88UL), (m.Cpu.Registers[6], m.Cpu.Registers[7]));
    }

    /// <summary>A zero count (ECX under a 32-bit address size, whatever RCX's upper half) does nothing at all.</summary>
    [Fact]
    public void A_zero_count_does_no_iteration()
    {
        var (m, _) = Machine(a =>
        {
            a.mov(rcx, 0x0000_0001_0000_0000UL);
            a.mov(rdi, Buffer);
            a.mov(eax, 0xEE);
        }, a => a.db(0x67, 0xF3, 0xAA));
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal((0x0000_0001_0000_0000UL, Buffer), (m.Cpu.Registers[1], m.Cpu.Registers[7]));
        Assert.Equal(0UL, m.Memory.Read(Buffer));
    }

    /// <summary>The source of MOVS takes a segment override (GS here, with a base); the destination ES:RDI does not.</summary>
    [Fact]
    public void Movs_takes_a_segment_override_on_the_source()
    {
        var (m, _) = Machine(a =>
        {
            a.mov(rax, 0x0123456789ABCDEFUL);
            a.mov(__qword_ptr[Other + 0x10], rax);
            a.mov(rsi, 0x10);
            a.mov(rdi, Buffer);
            a.mov(ecx, 8);
        }, a => a.db(0x65, 0xF3, 0xA4));           // rep movsb gs:[rsi]
        m.Cpu.Gs.Base = Other;
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(0x0123456789ABCDEFUL, m.Memory.Read(Buffer));
    }

    /// <summary>A page fault in the middle of a repetition leaves RCX, RSI and RDI at the faulting iteration and RIP
    /// at the instruction, for the handler (which could map the page and return to finish it).</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void A_fault_mid_repetition_leaves_the_registers_at_the_faulting_iteration(bool move)
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 14, handler);
            a.mov(rsi, Other);
            a.mov(rdi, Buffer + 0xF00);
            a.mov(ecx, 0x200);
            at = a.CreateLabel();
            a.Label(ref at);
            if (move)
            {
                a.rep.movsb();
            }
            else
            {
                a.rep.stosb();
            }
            a.Label(ref handler);
            a.pop(rbx);          // the error code
            a.pop(r15);          // the saved RIP
            a.mov(r14, cr2);
            a.mov(rsp, 0x8000);
            a.Label(ref done);
        }, setup: cpu =>
        {
            cpu.Cr0 = 0x8001_0033;
            cpu.Efer = 0xD00;
        });
        foreach (ulong page in new ulong[] { 0x1000, 0x2000, 0x3000, 0x6000, 0x7000, Buffer, Other })
        {
            m.Memory.Map(page, page, TestMemory.P | TestMemory.W);
        }
        m.Cpu.Cr3 = m.Memory.Cr3;
        m.Cpu.ControlStateChanged();
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(m.Address(at), m.Cpu.Registers[15]);
        Assert.Equal(Buffer + 0x1000, m.Cpu.Registers[14]);            // CR2: the first byte of the next page
        Assert.Equal(2UL, m.Cpu.Registers[3]);                         // a write, not present
        Assert.Equal(0x100UL, m.Cpu.Registers[1]);                     // 0x100 bytes left
        Assert.Equal(Buffer + 0x1000, m.Cpu.Registers[7]);
        Assert.Equal(move ? Other + 0x100 : Other, m.Cpu.Registers[6]);
    }

    /// <summary>An interrupt that becomes deliverable during a long REP (here: its own EOI write to the APIC unblocks
    /// a pending timer interrupt) is taken between iterations, with the REP as the saved RIP and RCX how far it got;
    /// after IRETQ the REP finishes.</summary>
    [Fact]
    public void A_pending_interrupt_is_taken_between_iterations_and_the_rep_resumes()
    {
        var at = default(Label);
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            var wait = a.CreateLabel();
            var nested = a.CreateLabel();
            TestMachine.Gate(a, 0x40, handler);
            a.mov(rbx, 0xFEE0_0000UL);
            a.mov(__dword_ptr[rbx + 0xF0], 0x1FF);   // APIC on
            a.mov(__dword_ptr[rbx + 0x3E0], 0xB);    // divide by 1
            a.mov(__dword_ptr[rbx + 0x320], 0x40);   // one-shot, vector 0x40
            a.mov(__dword_ptr[rbx + 0x380], 5);
            a.xor(r13d, r13d);
            a.sti();
            a.Label(ref wait);
            a.cmp(r13d, 2);
            a.jne(wait);
            a.jmp(done);

            a.Label(ref handler);
            a.cmp(r13d, 1);
            a.je(nested);
            // First entry: re-arm, let the timer fire while this one is in service, then a long REP STOSD from the
            // EOI register on (its first write is the EOI; the rest of the page gets zeros, which stops the timer).
            a.mov(r13d, 1);
            a.mov(__dword_ptr[rbx + 0x380], 3);
            for (int k = 0; k < 8; k++)
            {
                a.nop();
            }
            a.sti();
            a.lea(rdi, __[rbx + 0xB0]);
            a.mov(ecx, 3 * 4096);
            a.xor(eax, eax);
            at = a.CreateLabel();
            a.Label(ref at);
            a.rep.stosd();
            a.mov(r12, rcx);
            a.iretq();

            // Second entry, inside the REP.
            a.Label(ref nested);
            a.mov(r13d, 2);
            a.mov(r14, rcx);
            a.mov(r15, __qword_ptr[rsp]);
            a.mov(__dword_ptr[rbx + 0xB0], 0);       // EOI
            a.iretq();
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(m.Address(at), m.Cpu.Registers[15]);      // the saved RIP: the REP
        Assert.Equal(2UL * 4096, m.Cpu.Registers[14]);         // after the first check, 4096 iterations in
        Assert.Equal(0UL, m.Cpu.Registers[12]);                // then it finished
        Assert.Equal(0xFEE0_00B0UL + 3 * 4096 * 4, m.Cpu.Registers[7]);
        Assert.Equal(2, m.Cpu.Counters.ExternalInterrupts);
    }
}
