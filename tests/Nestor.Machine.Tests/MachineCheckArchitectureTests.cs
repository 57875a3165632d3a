using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Machine.Tests;

/// <summary>The machine-check architecture the model reports (CPUID.1:EDX.MCE and MCA; SDM Vol. 3B ch. 16), which
/// kvm-unit-tests' <c>msr</c> reaches by reading IA32_MCG_CAP (issue 18): MCG_CAP says no error-reporting bank and
/// no IA32_MCG_CTL, IA32_MCG_STATUS holds RIPV, EIPV and MCIP, and everything MCG_CAP does not announce raises
/// #GP(0): IA32_MCG_CTL, every bank MSR from IA32_MC0_CTL to 0x47F, a write of MCG_CAP, a reserved MCG_STATUS bit.</summary>
public class MachineCheckArchitectureTests
{
    private const int NoFault = -1;

    /// <summary>Runs <paramref name="body"/> with a #GP gate that records the vector in R14 and ends the run.</summary>
    private static (int Vector, TestMachine Machine) Run(Action<Assembler> body)
    {
        var m = new TestMachine(a =>
        {
            var done = a.CreateLabel();
            var fault = a.CreateLabel();
            TestMachine.Gate(a, 13, fault);
            a.mov(r14, NoFault);
            body(a);
            a.jmp(done);
            a.Label(ref fault);
            a.mov(r14, 13);
            a.mov(rsp, 0x8000);
            a.Label(ref done);
        });
        Assert.Equal(StopReason.PlatformStop, m.RunToEnd().Stop);
        return ((int)(long)m.Cpu.Registers[14], m);
    }

    private static void Write(Assembler a, uint msr, ulong value)
    {
        a.mov(ecx, msr);
        a.mov(eax, (uint)value);
        a.mov(edx, (uint)(value >> 32));
        a.wrmsr();
    }

    [Fact]
    public void The_machine_reports_mce_and_mca_together()
    {
        // MCA without MCE (or the reverse) would tell software to expect one half of the architecture only.
        Assert.True(ProcessorModel.Has(CpuFeature.MachineCheckException));
        Assert.True(ProcessorModel.Has(CpuFeature.MachineCheckArchitecture));
        Assert.NotEqual(0UL, ProcessorModel.Cr4Writable & Cr4.MachineCheckEnable);
    }

    [Fact]
    public void Mcg_cap_reports_no_banks_and_no_mcg_ctl()
    {
        var (vector, m) = Run(a =>
        {
            a.mov(ecx, Msr.MachineCheckCapabilities);
            a.mov(eax, 0xDEAD);
            a.mov(edx, 0xBEEF);
            a.rdmsr();
            a.mov(r8, rax);
            a.mov(r9, rdx);
        });
        Assert.Equal(NoFault, vector);
        Assert.Equal(0UL, m.Cpu.Registers[8]); // count 0, MCG_CTL_P clear
        Assert.Equal(0UL, m.Cpu.Registers[9]);
    }

    [Fact]
    public void Mcg_status_keeps_ripv_eipv_and_mcip_and_refuses_a_reserved_bit()
    {
        var (vector, m) = Run(a =>
        {
            Write(a, Msr.MachineCheckStatus, 0b111);
            a.mov(ecx, Msr.MachineCheckStatus);
            a.rdmsr();
            a.mov(r8, rax);
            Write(a, Msr.MachineCheckStatus, 0b010);
            a.rdmsr();
            a.mov(r9, rax);
            Write(a, Msr.MachineCheckStatus, 0b1000); // LMCE_S: reserved without MCG_LMCE_P
        });
        Assert.Equal(13, vector);
        Assert.Equal(0b111UL, m.Cpu.Registers[8]);
        Assert.Equal(0b010UL, m.Cpu.Registers[9]);
        Assert.Equal(0b010UL, m.Cpu.SaveState().MachineCheckStatus); // the refused write changed nothing
    }

    public static TheoryData<uint, bool> Absent() => new()
    {
        { Msr.MachineCheckControl, false },          // no MCG_CTL_P
        { Msr.MachineCheckControl, true },
        { Msr.MachineCheckBank0Control, false },     // IA32_MC0_CTL: no bank 0
        { Msr.MachineCheckBank0Control + 1, true },  // IA32_MC0_STATUS
        { Msr.MachineCheckBank0Control + 4 * 31 + 3, false }, // IA32_MC31_MISC, 0x47F: the last bank the SDM numbers
        { Msr.MachineCheckCapabilities, true },      // MCG_CAP is read-only
    };

    [Theory]
    [MemberData(nameof(Absent))]
    public void What_mcg_cap_does_not_announce_raises_gp(uint msr, bool write)
    {
        var (vector, _) = Run(a =>
        {
            if (write)
            {
                Write(a, msr, 0);
            }
            else
            {
                a.mov(ecx, msr);
                a.rdmsr();
            }
        });
        Assert.Equal(13, vector);
    }
}
