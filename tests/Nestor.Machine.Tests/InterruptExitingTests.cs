using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>External-interrupt exiting, interrupt-window exiting and external-interrupt injection in the CPU model
/// (SDM Vol. 3C §25.6.1, §26.7.5, §26.6), with a VMM that injects when the guest can take the interrupt.</summary>
public class InterruptExitingTests
{
    private const int Vector = 0x40;
    private const ulong Idt = 0x7000;

    private sealed class Monitor(ExecutionControls controls) : IVmExitHandler
    {
        public readonly List<(ExitReason Reason, bool InterruptsEnabled, ulong Rip)> Exits = [];

        public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
        {
            Exits.Add((exit.Reason, (cpu.Rflags & FlagBits.Interrupt) != 0, cpu.Rip));
            if (exit.Reason is not (ExitReason.ExternalInterrupt or ExitReason.InterruptWindow))
            {
                return VmExitAction.Complete;
            }
            controls.InterruptWindowExiting = false;
            if (!cpu.InterruptWindowOpen)
            {
                controls.InterruptWindowExiting = true;
                return VmExitAction.Resume;
            }
            exit.Vector = (ExceptionVector)cpu.Apic.Accept();
            exit.ExternalInterrupt = true;
            return VmExitAction.Inject;
        }
    }

    [Fact]
    public void An_interrupt_exits_whatever_the_guest_if_and_is_injected_in_the_window_after_sti()
    {
        var handler = new Label();
        var afterSti = new Label();
        var machine = new TestMachine(a =>
        {
            handler = a.CreateLabel();
            afterSti = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(rbx, 0xFEE0_0000UL);
            a.xor(r10d, r10d);
            a.nop();
            a.sti();
            a.nop();                                   // in STI's shadow
            a.Label(ref afterSti);
            a.nop();
            a.cli();
            a.jmp(done);
            a.Label(ref handler);
            a.inc(r10);
            a.mov(__dword_ptr[rbx + 0xB0], 0);         // EOI
            a.iretq();
            a.Label(ref done);
        });
        ulong target = machine.Address(handler);
        machine.Memory.Write(Idt + Vector * 16, (target & 0xFFFF) | (8UL << 16) | (0x8EUL << 40) | (((target >> 16) & 0xFFFF) << 48));
        machine.Memory.Write(Idt + Vector * 16 + 8, target >> 32);
        var cpu = machine.Cpu;
        cpu.IdtBase = Idt;
        cpu.IdtLimit = 0xFFF;
        cpu.Apic.Write(0xF0, 0x1FF, 0);
        var controls = new ExecutionControls { ExternalInterruptExiting = true };
        var monitor = new Monitor(controls);
        cpu.EnterNonRoot(controls, monitor);
        Assert.True(cpu.RequestInterrupt(Vector, levelTriggered: false));
        var (stop, _) = machine.RunToEnd();
        Assert.Equal(StopReason.PlatformStop, stop);
        Assert.Equal(1UL, cpu.Registers[10]);
        Assert.Equal(1, cpu.Counters.ExternalInterrupts);
        // The external-interrupt exit comes at once with IF clear; the window exit only once STI's shadow is over,
        // at the instruction after the one that followed STI, where the interrupt is then delivered.
        Assert.Equal(2, monitor.Exits.Count);
        Assert.Equal((ExitReason.ExternalInterrupt, false), (monitor.Exits[0].Reason, monitor.Exits[0].InterruptsEnabled));
        Assert.Equal((ExitReason.InterruptWindow, true, machine.Address(afterSti)), monitor.Exits[1]);
        Assert.Equal(-1, cpu.Apic.InServiceVector);
        Assert.False(controls.InterruptWindowExiting);
    }

    [Fact]
    public void Cr8_reads_and_writes_the_apic_task_priority()
    {
        var machine = new TestMachine(a =>
        {
            a.mov(eax, 6);
            a.mov(cr8, rax);
            a.mov(rcx, cr8);
        });
        machine.RunToEnd();
        Assert.Equal(6UL, machine.Cpu.Registers[1]);
        Assert.Equal(0x60u, machine.Cpu.Apic.TaskPriority);
    }
}
