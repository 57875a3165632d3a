using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The single-step trap (SDM Vol. 3B §17.3.1.4): an instruction that begins with RFLAGS.TF set is followed
/// by #DB with DR6.BS set and the saved RIP at the next instruction; not the instruction that sets TF (POPF), not
/// MOV SS (Vol. 3A §6.8.3), not INT n, and for SYSCALL the TF it leave decides. Each guest's #DB handler
/// records the saved RIP of every trap (up to four, at 0x7000) and returns with TF still set unless told.</summary>
public class SingleStepTests
{
    /// <summary>Runs <paramref name="body"/> with a #DB gate that appends the saved RIP to a list at 0x7000 (count in
    /// R13) and clears TF in the saved RFLAGS once R13 reaches <paramref name="stopAfter"/>.</summary>
    private static (List<ulong> Traps, TestMachine Machine) Run(Action<Assembler> body, int stopAfter = 4, ProcessorModel? model = null)
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            var keep = a.CreateLabel();
            TestMachine.Gate(a, 1, handler);
            a.xor(r13, r13);
            body(a);
            a.pushfq();
            a.and(__qword_ptr[rsp], ~0x100);
            a.popfq();
            a.jmp(done);
            a.Label(ref handler);
            a.push(rax);
            a.mov(rax, __qword_ptr[rsp + 8]); // the saved RIP
            a.mov(__qword_ptr[r13 * 8 + 0x7000], rax);
            a.inc(r13);
            a.cmp(r13, stopAfter);
            a.jb(keep);
            a.and(__qword_ptr[rsp + 24], ~0x100); // saved RFLAGS: TF off
            a.Label(ref keep);
            a.pop(rax);
            a.iretq();
            a.Label(ref done);
        }, setup: c => c.Model = model ?? ProcessorModel.Intel);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        var traps = new List<ulong>();
        for (int i = 0; i < (int)m.Cpu.Registers[13]; i++)
        {
            traps.Add(m.Memory.Read(0x7000 + (ulong)i * 8));
        }
        return (traps, m);
    }

    private static void SetTrapFlag(Assembler a)
    {
        a.pushfq();
        a.or(__qword_ptr[rsp], 0x100);
        a.popfq(); // sets TF: no trap after it
    }

    [Fact]
    public void Each_instruction_after_the_one_that_sets_tf_traps_with_the_next_rip_and_dr6_bs()
    {
        Label first = default, second = default, third = default;
        var (traps, m) = Run(a =>
        {
            first = a.CreateLabel();
            second = a.CreateLabel();
            third = a.CreateLabel();
            SetTrapFlag(a);
            a.Label(ref first);
            a.nop();
            a.Label(ref second);
            a.mov(eax, 1);
            a.Label(ref third);
            a.nop();
        }, stopAfter: 2);
        // No trap after the POPF that set TF; one after the NOP (at the MOV) and one after the MOV (at the NOP).
        Assert.Equal([m.Address(second), m.Address(third)], traps);
        Assert.Equal(1UL << 14, m.Cpu.SaveState().Dr6 & (1UL << 14));
    }

    [Fact]
    public void Mov_ss_inhibits_the_trap_until_the_next_instruction_completes()
    {
        Label after = default, afterNext = default;
        var (traps, m) = Run(a =>
        {
            after = a.CreateLabel();
            afterNext = a.CreateLabel();
            a.mov(ax, ss);
            SetTrapFlag(a);
            a.mov(ss, ax);
            a.Label(ref after);
            a.nop();
            a.Label(ref afterNext);
            a.nop();
        }, stopAfter: 1);
        Assert.Equal([m.Address(afterNext)], traps);
    }

    [Fact]
    public void Int_n_enters_its_handler_without_a_trap()
    {
        Label intHandler = default, back = default;
        var (traps, m) = Run(a =>
        {
            intHandler = a.CreateLabel();
            back = a.CreateLabel();
            var skip = a.CreateLabel();
            TestMachine.Gate(a, 0x40, intHandler);
            a.jmp(skip);
            a.Label(ref intHandler);
            a.mov(r12, 0x40); // runs with TF clear: no trap here
            a.iretq();        // restores TF
            a.Label(ref skip);
            SetTrapFlag(a);
            a.@int(0x40);
            a.Label(ref back);
            a.nop();
        }, stopAfter: 1);
        // The first trap follows the NOP after INT's return (IRET began with TF clear, so it did not trap).
        Assert.Single(traps);
        Assert.Equal(m.Address(back) + 1, traps[0]);
        Assert.Equal(0x40UL, m.Cpu.Registers[12]);
    }

    [Fact]
    public void A_faulting_instruction_takes_its_fault_and_no_trap()
    {
        // #UD (UD2) with TF set: the fault is delivered, the trap is not (it needs the instruction to complete).
        var m = new TestMachine(a =>
        {
            var ud = a.CreateLabel();
            var db = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 6, ud);
            TestMachine.Gate(a, 1, db);
            SetTrapFlag(a);
            a.nop(); // traps: R9 counts 1
            a.ud2();
            a.Label(ref db);
            a.inc(r9);
            a.and(__qword_ptr[rsp + 16], ~0x100);
            a.iretq();
            a.Label(ref ud);
            a.mov(r10, 6);
            a.Label(ref done);
        });
        // The #DB gate's IRET returns to UD2 with TF clear; fine either way: what matters is UD2 raises #UD, not #DB.
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(1UL, m.Cpu.Registers[9]);
        Assert.Equal(6UL, m.Cpu.Registers[10]);
    }

    [Fact]
    public void Syscall_whose_fmask_clears_tf_does_not_trap()
    {
        Label entry = default, user = default;
        var (traps, m) = Run(a =>
        {
            entry = a.CreateLabel();
            user = a.CreateLabel();
            var afterUser = a.CreateLabel();
            a.mov(ecx, Msr.Efer);
            a.rdmsr();
            a.or(eax, 1);
            a.wrmsr();
            a.mov(ecx, Msr.Star);
            a.xor(eax, eax);
            a.mov(edx, 0x0013_0008); // SYSCALL CS 0x08; SYSRETQ CS 0x13+16
            a.wrmsr();
            a.mov(ecx, Msr.LongStar);
            a.lea(rax, __[entry]);
            a.xor(edx, edx);
            a.wrmsr();
            a.mov(ecx, Msr.SyscallFlagMask);
            a.mov(eax, 0x100); // TF
            a.wrmsr();
            SetTrapFlag(a);
            a.syscall();       // TF masked: no trap after it (else one at `entry`)
            a.Label(ref entry);
            a.mov(r12, 1);
            a.jmp(afterUser);
            a.Label(ref afterUser);
        }, stopAfter: 4);
        Assert.DoesNotContain(m.Address(entry), traps);
        Assert.Equal(1UL, m.Cpu.Registers[12]);
        Assert.Equal(0UL, m.Cpu.Rflags & 0x100);
    }
}
