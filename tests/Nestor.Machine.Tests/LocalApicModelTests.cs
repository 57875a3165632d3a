using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The local APIC as kvm-unit-tests' library and tests use it (issue 18), each by a guest: a hardware-disabled
/// APIC (IA32_APIC_BASE.EN clear) is gone and comes back reset (SDM Vol. 3A §10.4.3), a software-disabled one keeps
/// its LVT masked (§10.4.7.2), the LVT is masked at reset (§10.4.7.1), a self-IPI through the ICR is delivered
/// (§10.6.1), and the timer's TSC-deadline mode fires at the IA32_TSC_DEADLINE value and clears it (§10.5.4.1).</summary>
public class LocalApicModelTests
{
    private const uint Apic = 0xFEE0_0000;

    internal static void EnableApic(Assembler a)
    {
        a.mov(eax, Apic + 0xF0);
        a.mov(__dword_ptr[rax], 0x1FF); // SVR: software enable, spurious vector 0xFF
    }

    /// <summary>An interrupt gate for <paramref name="vector"/> whose handler adds 1 to R13, writes EOI and returns.</summary>
    internal static void CountingHandler(Assembler a, int vector)
    {
        var handler = a.CreateLabel();
        var over = a.CreateLabel();
        TestMachine.Gate(a, vector, handler);
        a.jmp(over);
        a.Label(ref handler);
        a.inc(r13);
        a.mov(r11d, Apic + 0xB0);
        a.mov(__dword_ptr[r11], 0);
        a.iretq();
        a.Label(ref over);
    }

    [Fact]
    public void The_lvt_is_masked_at_reset_and_stays_masked_while_the_apic_is_software_disabled()
    {
        var m = new TestMachine(a =>
        {
            a.mov(eax, Apic + 0x350);
            a.mov(r8d, __dword_ptr[rax]);          // LINT0 at reset
            a.mov(__dword_ptr[rax], 0x0000_0700);  // unmask it while software-disabled: ignored
            a.mov(r9d, __dword_ptr[rax]);
            EnableApic(a);
            a.mov(eax, Apic + 0x350);
            a.mov(__dword_ptr[rax], 0x0000_0700);
            a.mov(r10d, __dword_ptr[rax]);         // enabled: unmasked
            a.mov(eax, Apic + 0xF0);
            a.mov(__dword_ptr[rax], 0xFF);         // software disable masks the LVT again
            a.mov(eax, Apic + 0x350);
            a.mov(r12d, __dword_ptr[rax]);
        });
        m.RunToEnd();
        Assert.Equal(LocalApic.Masked, m.Cpu.Registers[8]);
        Assert.Equal(LocalApic.Masked | 0x700, m.Cpu.Registers[9]);
        Assert.Equal(0x700UL, m.Cpu.Registers[10]);
        Assert.Equal(LocalApic.Masked | 0x700, m.Cpu.Registers[12]);
    }

    [Fact]
    public void A_hardware_disabled_apic_is_gone_refuses_interrupts_and_comes_back_reset()
    {
        bool refused = false;
        var m = new TestMachine(a =>
        {
            EnableApic(a);
            a.mov(eax, Apic + 0x30);
            a.mov(r8d, __dword_ptr[rax]);          // the version register
            a.mov(ecx, Msr.ApicBase);
            a.rdmsr();
            a.and(eax, ~(1 << 11));                // EN off
            a.wrmsr();
            a.mov(eax, Apic + 0x30);
            a.mov(r9d, __dword_ptr[rax]);          // no APIC there now: the open bus
            a.mov(dx, 0x80);
            a.@out(dx, al);                        // the host tries an interrupt here
            a.mov(ecx, Msr.ApicBase);
            a.rdmsr();
            a.or(eax, 1 << 11);
            a.wrmsr();
            a.mov(eax, Apic + 0xF0);
            a.mov(r10d, __dword_ptr[rax]);         // SVR after re-enable: the reset value
        });
        m.Host.PortSource = null;
        var cpu = m.Cpu;
        while (true)
        {
            var stop = cpu.Run(1);
            if (m.Host.PortAccesses.Count == 1 && !refused)
            {
                refused = !cpu.RequestInterrupt(0x40, levelTriggered: false);
                Assert.False(cpu.Apic.CanDeliver);
            }
            if (stop != StopReason.Budget)
            {
                break;
            }
        }
        Assert.Equal(0x0005_0014UL, m.Cpu.Registers[8]);
        Assert.Equal(0xFFFF_FFFFUL, m.Cpu.Registers[9]);
        Assert.True(refused, "a hardware-disabled APIC accepted an interrupt");
        Assert.Equal(0xFFUL, m.Cpu.Registers[10]);
        Assert.Equal(-1, m.Cpu.Apic.PendingVector);
    }

    [Fact]
    public void Apic_base_reserved_bits_raise_gp()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var done = a.CreateLabel();
            TestMachine.Gate(a, 13, handler);
            a.mov(ecx, Msr.ApicBase);
            a.rdmsr();
            a.or(eax, 1 << 9); // reserved (bit 10 is x2APIC mode: Smp/X2ApicTests)
            a.wrmsr();
            a.jmp(done);
            a.Label(ref handler);
            a.mov(r14d, 13);
            a.mov(rsp, 0x8000);
            a.Label(ref done);
        });
        m.RunToEnd();
        Assert.Equal(13UL, m.Cpu.Registers[14]);
        Assert.Equal(0xFEE0_0900UL, m.Cpu.ApicBase);
    }

    [Fact]
    public void A_self_ipi_through_the_icr_is_delivered()
    {
        var m = new TestMachine(a =>
        {
            CountingHandler(a, 0x40);
            EnableApic(a);
            a.xor(r13d, r13d);
            a.sti();
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], (1 << 18) | 0x40); // shorthand self, fixed, vector 0x40
            a.nop();
            a.mov(eax, Apic + 0x310);
            a.mov(__dword_ptr[rax], 0);                 // destination APIC 0
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x40);              // no shorthand, physical destination 0: this APIC
            a.nop();
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], (3 << 18) | 0x40);  // all excluding self: nobody
            a.nop();
            a.cli();
        });
        m.RunToEnd();
        Assert.Equal(2UL, m.Cpu.Registers[13]);
        Assert.Equal(2, m.Cpu.Apic.SelfInterrupts);
        Assert.Equal(1, m.Cpu.Apic.UndeliveredCommands);
    }

    [Fact]
    public void The_tsc_deadline_timer_fires_at_the_deadline_and_clears_it()
    {
        var m = new TestMachine(a =>
        {
            CountingHandler(a, 0x41);
            EnableApic(a);
            a.xor(r13d, r13d);
            a.mov(eax, Apic + 0x320);
            a.mov(__dword_ptr[rax], (2 << 17) | 0x41); // LVT timer: TSC-deadline mode, vector 0x41
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.add(rax, 500);
            a.mov(r8, rax);                            // the deadline
            a.mov(rdx, rax);
            a.shr(rdx, 32);
            a.mov(ecx, Msr.TscDeadline);
            a.wrmsr();
            a.mov(ecx, Msr.TscDeadline);
            a.rdmsr();
            a.mov(r9d, eax);                           // armed: reads the deadline
            a.sti();
            a.hlt();                                   // woken by the timer
            a.cli();
            a.rdtsc();
            a.mov(r10d, eax);                          // when it woke
            a.mov(ecx, Msr.TscDeadline);
            a.rdmsr();
            a.mov(r12d, eax);                          // fired: 0
        });
        m.RunToEnd();
        Assert.Equal(1UL, m.Cpu.Registers[13]);
        Assert.Equal((uint)m.Cpu.Registers[8], (uint)m.Cpu.Registers[9]);
        Assert.True(m.Cpu.Registers[10] >= (uint)m.Cpu.Registers[8], "woke before the deadline");
        Assert.Equal(0UL, m.Cpu.Registers[12]);
        Assert.Equal(1, m.Cpu.Apic.TimerInterrupts);
    }

    [Fact]
    public void A_self_nmi_is_taken_with_interrupts_off_and_a_second_one_waits_for_iret()
    {
        var m = new TestMachine(a =>
        {
            var handler = a.CreateLabel();
            var over = a.CreateLabel();
            var second = a.CreateLabel();
            TestMachine.Gate(a, 2, handler);
            a.jmp(over);
            a.Label(ref handler);
            a.inc(r13);
            a.cmp(r13, 1);
            a.jne(second);
            a.mov(r11d, Apic + 0x300);
            a.mov(__dword_ptr[r11], 4 << 8); // another NMI to this APIC, from inside the handler
            a.nop();
            a.mov(r12, r13);                 // still 1: NMIs are blocked until IRET
            a.Label(ref second);
            a.iretq();
            a.Label(ref over);
            EnableApic(a);
            a.xor(r13d, r13d);
            a.cli();
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 4 << 8); // delivery mode NMI, destination APIC 0
            a.nop();
            a.mov(r14, r13);                 // both taken before this, with IF clear: the second right after IRET
        });
        m.RunToEnd();
        Assert.Equal(2UL, m.Cpu.Registers[14]);
        Assert.Equal(1UL, m.Cpu.Registers[12]);
        Assert.Equal(2UL, m.Cpu.Registers[13]);
        Assert.False(m.Cpu.SaveState().NmiBlocked);
    }
}
