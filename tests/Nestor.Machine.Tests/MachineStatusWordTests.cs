using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Tests.RealMode;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>LMSW, the 286's load of the machine status word (SDM Vol. 2A LMSW), which kvm-unit-tests' <c>emulator</c>
/// reaches after its SMSW checks (issue 18): it loads CR0 bits 3:0 (PE, MP, EM, TS) and nothing else, sets PE but
/// never clears it, is privileged, and exits in VMX non-root operation as a control-register access of type 3.</summary>
public class MachineStatusWordTests
{
    private const int NoFault = -1;
    private const ulong ProtectedCr0 = Cr0.ProtectionEnable | Cr0.ExtensionType;

    /// <summary>Runs <paramref name="body"/> in 64-bit code with CR0 = <paramref name="cr0"/> and a #GP gate that
    /// records the vector in R14 and the faulting RIP in R15; returns the vector (or <see cref="NoFault"/>).</summary>
    private static (int Vector, TestMachine Machine) Run(Action<Assembler> body, ulong cr0 = ProtectedCr0)
    {
        var m = new TestMachine(a =>
        {
            var done = a.CreateLabel();
            var fault = a.CreateLabel();
            TestMachine.Gate(a, 13, fault);
            a.mov(r14, NoFault);
            a.mov(__qword_ptr[0x5004], 0x7F00); // TSS.RSP0: a fault from ring 3 switches to this stack
            body(a);
            a.jmp(done);
            a.Label(ref fault);
            a.pop(rbx); // the error code
            a.pop(r15);
            a.mov(r14, 13);
            a.mov(rsp, 0x8000);
            a.Label(ref done);
        }, setup: c =>
        {
            c.Cr0 = cr0;
            c.Tr = new Segment { Selector = 0x28, Base = 0x5000, Limit = 0x67, Attributes = 0x8B };
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        return ((int)(long)m.Cpu.Registers[14], m);
    }

    [Fact]
    public void Lmsw_from_a_register_loads_cr0_bits_3_to_0_and_ignores_bits_15_to_4()
    {
        // 0xFFFE: MP, EM, TS and every bit of 15:4 (NE is bit 5); only MP, EM and TS may change.
        var (vector, m) = Run(a =>
        {
            a.mov(eax, 0xFFFE);
            a.lmsw(ax);
            a.mov(r8, cr0);
            a.mov(eax, 0xFFF1); // clears MP, EM and TS again; bits 15:4 still ignored
            a.lmsw(ax);
            a.mov(r9, cr0);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(ProtectedCr0 | Cr0.MonitorCoprocessor | Cr0.Emulation | Cr0.TaskSwitched, m.Cpu.Registers[8]);
        Assert.Equal(ProtectedCr0, m.Cpu.Registers[9]);
    }

    [Fact]
    public void Lmsw_from_memory_loads_the_word_there()
    {
        var (vector, m) = Run(a =>
        {
            a.mov(__word_ptr[0x7000], 0x0009); // PE and TS
            a.lmsw(__word_ptr[0x7000]);
            a.mov(r8, cr0);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(ProtectedCr0 | Cr0.TaskSwitched, m.Cpu.Registers[8]);
    }

    [Fact]
    public void Lmsw_cannot_clear_pe()
    {
        // kvm-unit-tests' "lmsw (3)": a source with PE clear changes EM and leaves PE set.
        var (vector, m) = Run(a =>
        {
            a.mov(eax, 0x0004);
            a.lmsw(ax);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(ProtectedCr0 | Cr0.Emulation, m.Cpu.Cr0);
    }

    [Fact]
    public void Lmsw_with_pe_enters_protected_mode_from_real_mode()
    {
        var m = new RealModeMachine(codeSelector: 0x100);
        m.Place(16, 0x1000, 0, a =>
        {
            a.mov(ax, 1);
            a.lmsw(ax);
            a.mov(dx, 0xF4);
            a.@out(dx, al);
        });
        Assert.True(m.Cpu.RealMode);
        m.RunToExit();
        Assert.False(m.Cpu.RealMode);
        Assert.Equal(Cr0.ProtectionEnable | Cr0.ExtensionType, m.Cpu.Cr0);
    }

    [Fact]
    public void Lmsw_at_cpl_3_raises_gp_and_leaves_cr0_alone()
    {
        // SYSEXITQ to ring 3 (SYSENTER_CS 0x10: CS 0x33), where LMSW faults.
        var user = default(Label);
        var (vector, m) = Run(a =>
        {
            user = a.CreateLabel();
            TestMachine.SysexitToRing3(a, user);
            a.Label(ref user);
            a.mov(eax, 0x000F);
            a.lmsw(ax);
        });
        Assert.Equal(13, vector);
        Assert.Equal(m.Address(user) + 5, m.Cpu.Registers[15]); // the LMSW, after the 5-byte MOV
        Assert.Equal(ProtectedCr0, m.Cpu.Cr0);
    }

    private sealed class ControlRegisterMonitor : IVmExitHandler
    {
        public readonly List<(ulong Qualification, ulong GuestLinear, ulong Cr0)> Exits = [];

        public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
        {
            if (exit.Reason == ExitReason.ControlRegisterAccess)
            {
                Exits.Add((exit.Qualification, exit.GuestLinear, cpu.Cr0));
            }
            return VmExitAction.Complete;
        }
    }

    [Fact]
    public void In_non_root_operation_lmsw_exits_with_access_type_3_and_its_source_then_completes()
    {
        var m = new TestMachine(a =>
        {
            a.mov(eax, 0x000B);
            a.lmsw(ax);                       // register form
            a.mov(__word_ptr[0x7000], 0x0003);
            a.lmsw(__word_ptr[0x7000]);       // memory form
        }, exit: false, setup: c => c.Cr0 = ProtectedCr0);
        var monitor = new ControlRegisterMonitor();
        m.Cpu.EnterNonRoot(new ExecutionControls { Cr0Cr4WriteExiting = true }, monitor);
        m.Cpu.Run(4);
        Assert.Equal(2, monitor.Exits.Count);
        // SDM Vol. 3C Table 28-3: bits 3:0 CR0, 5:4 access type 3 (LMSW), 6 the operand type, 31:16 the source.
        Assert.Equal(0x000B_0030UL, monitor.Exits[0].Qualification);
        Assert.Equal(ProtectedCr0, monitor.Exits[0].Cr0); // the exit comes before the load
        Assert.Equal(0x0003_0070UL, monitor.Exits[1].Qualification);
        Assert.Equal(0x7000UL, monitor.Exits[1].GuestLinear);
        Assert.Equal(ProtectedCr0 | Cr0.MonitorCoprocessor, m.Cpu.Cr0); // completed: MP set, TS cleared again
    }
}
