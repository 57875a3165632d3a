using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests.Smp;

/// <summary>The multiprocessor start-up of Intel SDM Vol. 3A §8.4 through the ICR (§10.6.1): an application processor
/// waits for a start-up IPI (it runs nothing), INIT puts a running one back in that state, a SIPI starts it in real
/// mode at CS = vector &lt;&lt; 8, IP 0, a second SIPI is ignored, and the ICR reads idle after each message.</summary>
public class StartUpTests
{
    private const uint Apic = 0xFEE0_0000;

    [Fact]
    public void An_application_processor_waiting_for_sipi_runs_nothing()
    {
        var m = new SmpMachine(2);
        Assert.True(m.Cpus[1].WaitingForStartup);
        Assert.Equal(StopReason.Halted, m.Cpus[1].Run(1000));
        Assert.Equal(0, m.Cpus[1].Counters.InstructionsRetired);
        Assert.False(m.Cpus[1].Runnable);
    }

    [Fact]
    public void Init_sipi_sipi_starts_the_named_processor_in_real_mode_at_the_vector()
    {
        var m = new SmpMachine(3);
        m.Load(0, 0x20000, a =>
        {
            a.mov(eax, Apic + 0xF0);
            a.mov(__dword_ptr[rax], 0x1FF);
            a.mov(eax, Apic + 0x310);
            a.mov(__dword_ptr[rax], 1 << 24);          // destination: APIC 1
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x0000_4500);      // INIT, level assert
            a.mov(__dword_ptr[rax], 0x0000_8500);      // INIT level de-assert: no effect
            a.mov(__dword_ptr[rax], 0x0000_4608);      // start-up, vector 8: CS 0x0800
            a.mov(r8d, __dword_ptr[rax]);              // delivery status
            a.mov(__dword_ptr[rax], 0x0000_4609);      // a second SIPI: ignored, it is running now
        }, stack: 0x9000);
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        var ap = m.Cpus[1];
        Assert.False(ap.WaitingForStartup);
        Assert.Equal((ushort)0x0800, ap.Cs.Selector);
        Assert.Equal(0x8000UL, ap.Cs.Base);
        Assert.Equal(0UL, ap.Rip);
        Assert.Equal(0x6000_0010UL, ap.Cr0);
        Assert.Equal(0UL, ap.ApicBase & Cpu.ApicBaseBootstrap);
        Assert.True(ap.Runnable);
        Assert.Equal(0UL, m.Cpus[0].Registers[8] & (1 << 12)); // idle: the message was accepted
        Assert.Equal(3, m.Cpus[0].Apic.InterprocessorInterruptsSent); // INIT and two SIPIs; the de-assert is no message
        Assert.Equal(2, ap.Apic.InterprocessorInterruptsReceived);    // INIT and the first SIPI
        Assert.True(m.Cpus[2].WaitingForStartup);                     // not named
    }

    [Fact]
    public void Init_puts_a_running_application_processor_back_in_wait_for_sipi_and_the_bsp_ignores_it()
    {
        var m = new SmpMachine(2);
        m.Load(1, 0x30000, a => a.nop(), stack: 0xA000);
        m.Load(0, 0x20000, a =>
        {
            a.mov(eax, Apic + 0x300);
            a.mov(__dword_ptr[rax], 0x0008_4500);      // INIT to all including self
        }, stack: 0x9000);
        Assert.False(m.Cpus[1].WaitingForStartup);
        Assert.Equal(StopReason.PlatformStop, m.Run(0));
        Assert.True(m.Cpus[1].WaitingForStartup);
        Assert.Equal(0xFFF0UL, m.Cpus[1].Rip);
        Assert.Equal((ushort)0xF000, m.Cpus[1].Cs.Selector);
        Assert.Equal(1u, m.Cpus[1].Apic.Id); // INIT keeps the APIC ID (§10.4.7.3)
        Assert.False(m.Cpus[0].WaitingForStartup);
        Assert.True((m.Cpus[0].Efer & 0x400) != 0); // the BSP went on in long mode
    }

    [Fact]
    public void Cpuid_reports_each_processors_initial_apic_id_and_the_apic_while_enabled()
    {
        var m = new SmpMachine(3);
        m.Host.CpuidSource = (leaf, _) => leaf == 1 ? (0u, 0u, 0u, 1u << 9) : (0u, 0u, 0u, 0u);
        m.Load(2, 0x30000, a =>
        {
            a.mov(eax, 1);
            a.cpuid();
            a.mov(r8, rbx);
            a.mov(r9, rdx);
            a.mov(ecx, 0x1B);
            a.rdmsr();
            a.and(eax, ~(1 << 11));                    // IA32_APIC_BASE.EN off
            a.wrmsr();
            a.mov(eax, 1);
            a.cpuid();
        }, stack: 0xA000);
        Assert.Equal(StopReason.PlatformStop, m.Run(2));
        Assert.Equal(2UL, m.Cpus[2].Registers[8] >> 24);
        Assert.Equal(1UL << 9, m.Cpus[2].Registers[9] & (1 << 9));
        Assert.Equal(0UL, m.Cpus[2].Registers[2] & (1 << 9)); // EDX.APIC reads 0 once the APIC is disabled (§10.4.3)
    }
}
