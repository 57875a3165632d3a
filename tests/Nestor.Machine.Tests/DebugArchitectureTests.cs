using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The debug architecture (Intel SDM Vol. 3B ch. 17): CR4.DE and DR4/DR5 (§17.2.2), instruction breakpoints
/// as faults held off by RF (§17.3.1.1), data and I/O breakpoints as traps (§17.3.1.2) with the length and alignment
/// rule (§17.2.5), DR6's bits (§17.2.3), ICEBP, and the MOV SS blocking that holds debug traps past the next instruction
/// (Vol. 3A §6.8.3). Each guest's #DB handler records the saved RIP and DR6 of every #DB (at 0x7000, count in R13),
/// clears DR6, and after <c>stopAfter</c> of them disarms DR7 and clears TF.</summary>
public class DebugArchitectureTests
{
    private const ulong Variable = 0x5000;

    /// <summary>Runs <paramref name="body"/> under the recording #DB handler; with <paramref name="resume"/> the handler
    /// sets RF in the saved RFLAGS when a breakpoint (DR6.B0–B3) caused the #DB, as a debugger does to go on.</summary>
    private static (List<(ulong Rip, ulong Dr6)> Debugs, TestMachine Machine) Run(Action<Assembler> body, int stopAfter = 8,
        bool resume = true, Action<Assembler>? handlers = null)
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            var keep = a.CreateLabel();
            var noResume = a.CreateLabel();
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
            a.mov(rax, dr6);
            a.mov(__qword_ptr[r13 * 8 + 0x7800], rax);
            if (resume)
            {
                a.test(eax, 0xF);
                a.jz(noResume);
                a.or(__qword_ptr[rsp + 24], 1 << 16); // saved RFLAGS: RF
                a.Label(ref noResume);
            }
            a.xor(eax, eax);
            a.mov(dr6, rax);
            a.inc(r13);
            a.cmp(r13, stopAfter);
            a.jb(keep);
            a.and(__qword_ptr[rsp + 24], ~0x100); // saved RFLAGS: TF off
            a.mov(eax, 0x400);
            a.mov(dr7, rax);
            a.Label(ref keep);
            a.pop(rax);
            a.iretq();
            handlers?.Invoke(a);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        var debugs = new List<(ulong, ulong)>();
        for (int i = 0; i < (int)m.Cpu.Registers[13]; i++)
        {
            debugs.Add((m.Memory.Read(0x7000 + (ulong)i * 8), m.Memory.Read(0x7800 + (ulong)i * 8)));
        }
        return (debugs, m);
    }

    /// <summary>DR7 for one breakpoint: Gn set, R/W and LEN as given (SDM Vol. 3B Figure 17-1).</summary>
    private static ulong Control(int n, int readWrite, int length) =>
        CpuState.DebugControlFixed | (2UL << (2 * n)) | ((ulong)readWrite << (16 + 4 * n)) | ((ulong)length << (18 + 4 * n));

    private static void Arm(Assembler a, int n, ulong address, ulong control)
    {
        a.mov(rax, address);
        switch (n)
        {
            case 0: a.mov(dr0, rax); break;
            case 1: a.mov(dr1, rax); break;
            case 2: a.mov(dr2, rax); break;
            default: a.mov(dr3, rax); break;
        }
        a.mov(rax, control);
        a.mov(dr7, rax);
    }

    private static void SetTrapFlag(Assembler a)
    {
        a.pushfq();
        a.or(__qword_ptr[rsp], 0x100);
        a.popfq();
    }

    private const ulong Active = CpuState.DebugStatusFixed; // DR6 with no condition bit: 0xFFFF0FF0
    private const ulong SingleStep = 1UL << 14;

    [Fact]
    public void The_machine_reports_de_and_lets_cr4_de_be_set()
    {
        Assert.True(ProcessorModel.Has(CpuFeature.DebuggingExtensions));
        Assert.NotEqual(0UL, ProcessorModel.Cr4Writable & Cr4.DebuggingExtensions);
    }

    [Fact]
    public void Dr4_is_dr6_without_cr4_de_and_invalid_opcode_with_it()
    {
        var m = new TestMachine(a =>
        {
            var ud = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 6, ud);
            a.mov(eax, 0x4002); // BS and B1
            a.mov(dr6, rax);
            a.mov(r8, dr4); // DR6 under another name
            a.mov(rax, cr4);
            a.or(eax, (1 << 3) | (1 << 5)); // DE, and PAE, which IA-32e mode needs
            a.mov(cr4, rax);
            a.mov(r9, 0);
            a.mov(r10, dr4); // #UD now
            a.jmp(done);
            a.Label(ref ud);
            a.mov(r9, 6);
            a.mov(rsp, 0x8000);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(Active | 0x4002, m.Cpu.Registers[8]);
        Assert.Equal(6UL, m.Cpu.Registers[9]);
    }

    [Fact]
    public void An_instruction_breakpoint_faults_before_the_instruction_and_rf_lets_it_run_once()
    {
        Label target = default;
        var (debugs, m) = Run(a =>
        {
            target = a.CreateLabel();
            var address = a.CreateLabel();
            a.lea(rbx, __[target]);
            a.mov(dr2, rbx);
            a.mov(rax, Control(2, 0, 0));
            a.mov(dr7, rax);
            a.xor(ecx, ecx);
            a.Label(ref target);
            a.inc(ecx); // the breakpoint: #DB before it, then (RF) it runs once
            a.Label(ref address);
        });
        Assert.Equal([(m.Address(target), Active | 0b100)], debugs);
        Assert.Equal(1UL, m.Cpu.Registers[1]); // INC ran once: not before the #DB, once after
        Assert.Equal(0UL, m.Cpu.Rflags & FlagBits.Resume); // and RF was cleared after it
    }

    [Fact]
    public void Rf_holds_an_instruction_breakpoint_off_for_one_instruction_only()
    {
        Label loop = default;
        var (debugs, m) = Run(a =>
        {
            loop = a.CreateLabel();
            a.lea(rbx, __[loop]);
            a.mov(dr0, rbx);
            a.mov(rax, Control(0, 0, 0));
            a.mov(dr7, rax);
            a.mov(ecx, 3);
            a.Label(ref loop);
            a.dec(ecx); // each pass takes the breakpoint again
            a.jnz(loop);
        });
        Assert.Equal(3, debugs.Count);
        Assert.All(debugs, d => Assert.Equal((m.Address(loop), Active | 1), d));
    }

    [Fact]
    public void A_write_watchpoint_traps_after_the_writing_instruction_and_not_on_a_read()
    {
        Label after = default;
        var (debugs, m) = Run(a =>
        {
            after = a.CreateLabel();
            Arm(a, 1, Variable, Control(1, 0b01, 0b11)); // 4-byte write
            a.mov(eax, __dword_ptr[Variable]); // a read: nothing
            a.mov(__dword_ptr[Variable], 42);
            a.Label(ref after);
            a.nop();
        });
        Assert.Equal([(m.Address(after), Active | 0b10)], debugs);
        Assert.Equal(42UL, m.Memory.Read(Variable) & 0xFFFF_FFFF); // a trap: the write was made
    }

    [Fact]
    public void A_read_write_watchpoint_traps_on_a_read()
    {
        Label after = default;
        var (debugs, m) = Run(a =>
        {
            after = a.CreateLabel();
            Arm(a, 3, Variable, Control(3, 0b11, 0b01)); // 2-byte read or write
            a.mov(al, __byte_ptr[Variable + 1]);
            a.Label(ref after);
            a.nop();
        });
        Assert.Equal([(m.Address(after), Active | 0b1000)], debugs);
    }

    [Theory]
    [InlineData(0x5002, 0b11, 0x5001, 1, true)]  // 4 bytes at 0x5002 covers 0x5000-0x5003 (the low bits ignored)
    [InlineData(0x5000, 0b01, 0x5002, 1, false)] // 2 bytes at 0x5000 does not cover 0x5002
    [InlineData(0x5000, 0b10, 0x5007, 1, true)]  // 8 bytes at 0x5000 covers 0x5007
    [InlineData(0x5004, 0b00, 0x5002, 4, true)]  // a 4-byte access at 0x5002 reaches the 1-byte breakpoint at 0x5004
    [InlineData(0x5004, 0b00, 0x5000, 4, false)]
    public void A_data_breakpoint_covers_its_aligned_length(ulong address, int length, ulong accessed, int size, bool hit)
    {
        var (debugs, _) = Run(a =>
        {
            Arm(a, 0, address, Control(0, 0b01, length));
            a.mov(rdi, accessed);
            if (size == 1)
            {
                a.mov(__byte_ptr[rdi], 1);
            }
            else
            {
                a.mov(__dword_ptr[rdi], 1);
            }
        });
        Assert.Equal(hit ? 1 : 0, debugs.Count);
    }

    [Fact]
    public void Arming_a_watchpoint_sees_a_page_the_data_fast_path_already_holds()
    {
        var (debugs, _) = Run(a =>
        {
            a.mov(ecx, 100);
            var warm = a.CreateLabel();
            a.Label(ref warm);
            a.add(__dword_ptr[Variable], 1); // the page's read and write translations are cached now
            a.dec(ecx);
            a.jnz(warm);
            Arm(a, 0, Variable, Control(0, 0b01, 0b11));
            a.add(__dword_ptr[Variable], 1);
        });
        Assert.Single(debugs);
    }

    [Fact]
    public void Without_a_data_breakpoint_the_fast_paths_serve_the_accesses()
    {
        // The cost when nothing is armed is none: the accesses of a loop are fast hits, not slow-path translations.
        static long SlowReads(bool armed)
        {
            var m = new TestMachine(a =>
            {
                if (armed)
                {
                    Arm(a, 0, 0x9000, Control(0, 0b11, 0)); // a page the loop never touches
                }
                a.mov(ecx, 1000);
                var loop = a.CreateLabel();
                a.Label(ref loop);
                a.mov(eax, __dword_ptr[Variable]);
                a.dec(ecx);
                a.jnz(loop);
            });
            Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
            return m.Cpu.SlowDataAccesses;
        }
        long unarmed = SlowReads(false), armed = SlowReads(true);
        Assert.True(unarmed < 50, $"{unarmed} slow-path accesses without a watchpoint");
        Assert.True(armed >= 1000, $"{armed} slow-path accesses with one armed");
    }

    [Fact]
    public void A_repeated_string_instruction_traps_after_the_iteration_with_rip_at_it()
    {
        Label rep = default;
        var (debugs, m) = Run(a =>
        {
            rep = a.CreateLabel();
            Arm(a, 0, Variable + 3, Control(0, 0b01, 0));
            a.mov(rdi, Variable);
            a.mov(ecx, 8);
            a.xor(eax, eax);
            a.mov(__qword_ptr[0x7F00], 0);
            a.Label(ref rep);
            a.rep.stosb();
            a.mov(__qword_ptr[0x7F00], rcx);
        }, handlers: null);
        Assert.Equal([(m.Address(rep), Active | 1)], debugs); // RIP still at the REP STOSB: it goes on after the #DB
        Assert.Equal(0UL, m.Cpu.Registers[1]); // and completed
        Assert.Equal(Variable + 8, m.Cpu.Registers[7]);
    }

    [Fact]
    public void A_repeated_string_instruction_reports_how_far_it_got_at_the_trap()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 1, handler);
            Arm(a, 0, Variable + 3, Control(0, 0b01, 0));
            a.mov(rdi, Variable);
            a.mov(ecx, 8);
            a.rep.stosb();
            a.jmp(done);
            a.Label(ref handler);
            a.mov(r8, rcx); // in the handler: 4 iterations done, 4 to go
            a.mov(r9, rdi);
            a.mov(eax, 0x400);
            a.mov(dr7, rax);
            a.iretq();
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal((4UL, Variable + 4), (m.Cpu.Registers[8], m.Cpu.Registers[9]));
    }

    [Fact]
    public void An_io_breakpoint_traps_after_out_with_cr4_de_and_means_nothing_without()
    {
        static int Debugs(bool debuggingExtensions) => Run(a =>
        {
            if (debuggingExtensions)
            {
                a.mov(rax, cr4);
                a.or(eax, (1 << 3) | (1 << 5)); // DE, and PAE, which IA-32e mode needs
                a.mov(cr4, rax);
            }
            Arm(a, 1, 0x80, Control(1, 0b10, 0));
            a.mov(al, 1);
            a.@out(0x80, al);
            a.@in(al, 0x81); // another port
        }).Debugs.Count;
        Assert.Equal(1, Debugs(true));
        Assert.Equal(0, Debugs(false));
    }

    [Fact]
    public void Dr6_bits_are_never_cleared_by_the_processor_and_b0_to_b3_are_replaced()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 1, handler);
            a.mov(eax, 0x4001); // BS and B0 set by software
            a.mov(dr6, rax);
            Arm(a, 2, Variable, Control(2, 0b01, 0));
            a.mov(__byte_ptr[Variable], 1);
            a.jmp(done);
            a.Label(ref handler);
            a.mov(r8, dr6);
            a.mov(eax, 0x400);
            a.mov(dr7, rax);
            a.iretq();
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal(Active | SingleStep | 0b100, m.Cpu.Registers[8]); // BS kept, B0 replaced by B2
    }

    [Fact]
    public void Icebp_is_a_trap_like_debug_exception_that_sets_no_dr6_bit()
    {
        Label after = default;
        var (debugs, m) = Run(a =>
        {
            after = a.CreateLabel();
            a.db(0xF1);
            a.Label(ref after);
            a.nop();
        });
        Assert.Equal([(m.Address(after), Active)], debugs);
    }

    [Fact]
    public void A_single_step_after_mov_ss_is_held_to_the_end_of_the_next_instruction()
    {
        Label after = default;
        var (debugs, m) = Run(a =>
        {
            after = a.CreateLabel();
            a.mov(eax, ss);
            SetTrapFlag(a);
            a.mov(ss, eax); // TF set: its trap is held
            a.mov(ebx, 1);  // one #DB after this one, for both
            a.Label(ref after);
            a.nop();
        }, stopAfter: 1);
        Assert.Equal([(m.Address(after), Active | SingleStep)], debugs);
    }

    [Fact]
    public void Mov_ss_then_popf_clearing_tf_still_delivers_the_held_single_step()
    {
        // MOV SS with TF set, then a POPF that clears TF: the POPF began with TF set, and the MOV SS's trap was held
        // to after it, so one #DB comes after the POPF.
        Label after = default;
        var (debugs, m) = Run(a =>
        {
            after = a.CreateLabel();
            a.pushfq(); // the flags without TF, for the POPF after MOV SS
            a.mov(eax, ss);
            SetTrapFlag(a);
            a.mov(ss, eax);
            a.popfq();
            a.Label(ref after);
            a.nop();
            a.nop();
        });
        Assert.Equal([(m.Address(after), Active | SingleStep)], debugs);
    }

    [Fact]
    public void A_watchpoint_on_the_mov_ss_load_and_icebp_after_it_are_one_debug_exception()
    {
        var (debugs, _) = Run(a =>
        {
            a.mov(eax, ss);
            a.mov(__dword_ptr[Variable], eax);
            Arm(a, 1, Variable, Control(1, 0b11, 0b11));
            a.mov(ss, __word_ptr[Variable]);
            a.db(0xF1);
        });
        Assert.Single(debugs);
    }

    [Fact]
    public void A_watchpoint_on_the_mov_ss_load_before_int3_traps_at_the_breakpoint_handlers_first_instruction()
    {
        Label breakpointHandler = default;
        var (debugs, m) = Run(a =>
        {
            breakpointHandler = a.CreateLabel();
            TestMachine.Gate(a, 3, breakpointHandler);
            a.mov(eax, ss);
            a.mov(__dword_ptr[Variable], eax);
            Arm(a, 1, Variable, Control(1, 0b11, 0b11));
            a.mov(ss, __word_ptr[Variable]);
            a.int3();
        }, handlers: a =>
        {
            a.Label(ref breakpointHandler);
            a.iretq();
        });
        Assert.Single(debugs);
        Assert.Equal((m.Address(breakpointHandler), Active | 0b10), debugs[0]);
    }

    [Fact]
    public void Mov_ss_opens_an_interrupt_shadow_for_one_instruction()
    {
        // MOV SS inhibits interrupts until the boundary after the next instruction (§6.8.3), as STI does.
        var m = new TestMachine(a =>
        {
            a.mov(eax, ss);
            a.mov(ss, eax);
        });
        m.Cpu.Run(1);
        Assert.False(m.Cpu.InterruptShadow); // the MOV EAX, SS: none
        m.Cpu.Run(1);
        Assert.True(m.Cpu.InterruptShadow); // after MOV SS: blocked until the next instruction completes
        m.Cpu.Run(1);
        Assert.False(m.Cpu.InterruptShadow);
    }

    [Fact]
    public void Debug_traps_held_by_mov_ss_survive_saving_and_loading_the_state()
    {
        Label after = default, afterMovSs = default;
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            after = a.CreateLabel();
            afterMovSs = a.CreateLabel();
            TestMachine.Gate(a, 1, handler);
            a.mov(eax, ss);
            SetTrapFlag(a);
            a.mov(ss, eax);
            a.Label(ref afterMovSs);
            a.nop();
            a.Label(ref after);
            a.nop();
            a.jmp(done);
            a.Label(ref handler);
            a.mov(r8, __qword_ptr[rsp]);
            a.mov(r9, dr6);
            a.and(__qword_ptr[rsp + 16], ~0x100);
            a.iretq();
            a.Label(ref done);
        });
        // Step to just past the MOV SS, one instruction at a time.
        while (m.Cpu.Rip != m.Address(afterMovSs))
        {
            Assert.Equal(StopReason.Budget, m.Cpu.Run(1));
        }
        var saved = m.Cpu.SaveState();
        Assert.Equal(SingleStep, saved.PendingDebugExceptions);
        m.Cpu.LoadState(CpuState.Reset);
        m.Cpu.LoadState(saved);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        Assert.Equal((m.Address(after), Active | SingleStep), (m.Cpu.Registers[8], m.Cpu.Registers[9]));
    }

    [Fact]
    public void General_detect_faults_at_the_mov_dr_and_clears_gd()
    {
        Label access = default;
        var (debugs, m) = Run(a =>
        {
            access = a.CreateLabel();
            a.mov(eax, 0x2400); // GD
            a.mov(dr7, rax);
            a.Label(ref access);
            a.mov(rbx, dr0); // #DB fault here; the handler's own MOV DR runs with GD clear
        });
        Assert.Equal([(m.Address(access), Active | (1UL << 13))], debugs);
    }

    private sealed class DebugRegisterMonitor : IVmExitHandler
    {
        public readonly List<(ExitReason Reason, ulong Qualification, ulong Rip)> Exits = [];

        public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
        {
            Exits.Add((exit.Reason, exit.Qualification, cpu.Rip));
            return VmExitAction.Complete; // carry the MOV out: the VMM has loaded the guest's debug registers
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Mov_dr_exiting_exits_on_each_mov_dr_with_its_qualification(bool movDrExiting)
    {
        Label toDr7 = default, fromDr6 = default;
        var m = new TestMachine(a =>
        {
            toDr7 = a.CreateLabel();
            fromDr6 = a.CreateLabel();
            a.mov(eax, 0x401);
            a.Label(ref toDr7);
            a.mov(dr7, rax);
            a.Label(ref fromDr6);
            a.mov(rbx, dr6);
        });
        var monitor = new DebugRegisterMonitor();
        m.Cpu.EnterNonRoot(new ExecutionControls { MovDrExiting = movDrExiting }, monitor);
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        if (!movDrExiting)
        {
            Assert.Empty(monitor.Exits);
            return;
        }
        // SDM Vol. 3C Table 28-4: DR number in bits 2:0, direction in bit 4 (1 = from DR), the GPR in bits 11:8;
        // RIP at the instruction when it exits.
        Assert.Equal([(ExitReason.DebugRegisterAccess, 7UL, m.Address(toDr7)),
                      (ExitReason.DebugRegisterAccess, 6UL | (1 << 4) | (3 << 8), m.Address(fromDr6))], monitor.Exits);
        Assert.Equal(0x401UL, m.Cpu.SaveState().Dr7); // Complete: the write was made after the exit
        Assert.Equal(CpuState.DebugStatusFixed, m.Cpu.Registers[3]);
    }
}
