using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.CpuModel;

/// <summary>What kvm-unit-tests' <c>msr</c> does first with the machine-check architecture (issue 18), done by a
/// guest of the software machine on bare metal and under hardware assist: CPUID.1:EDX reports MCE (bit 7) and MCA
/// (bit 14), IA32_MCG_CAP (0x179) reads and names its bank count, CR4.MCE can be set, and IA32_MCG_STATUS keeps
/// what the guest writes.</summary>
public sealed class MachineCheckGuestTests
{
    [Theory]
    [InlineData(Technique.Native)]
    [InlineData(Technique.HardwareAssist)]
    public void A_guest_finds_mca_in_cpuid_and_reads_mcg_cap_and_mcg_status(Technique technique)
    {
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("mca", GuestAssembler.Assemble(a =>
            {
                a.mov(eax, 1);
                a.cpuid();
                a.mov(r8d, edx);
                a.mov(ecx, 0x179); // IA32_MCG_CAP
                a.rdmsr();
                a.mov(r9, rax);
                a.shl(rdx, 32);
                a.or(r9, rdx);
                a.mov(rax, cr4);
                a.or(eax, 1 << 6); // CR4.MCE
                a.mov(cr4, rax);
                a.mov(rax, cr4);
                a.mov(r10, rax);
                a.mov(ecx, 0x17A); // IA32_MCG_STATUS
                a.mov(eax, 0b100); // MCIP, which "software can set or clear" (SDM Vol. 3B §16.3.1.2)
                a.xor(edx, edx);
                a.wrmsr();
                a.xor(eax, eax);
                a.rdmsr();
                a.mov(r11, rax);
                a.mov(dx, 0xF4);
                a.@out(dx, al);
                a.hlt();
            })),
            MemoryBytes = 32UL << 20,
            SerialOutput = Stream.Null,
            Timeout = TimeSpan.FromSeconds(60),
        });
        var outcome = vm.Run(new SimEngine(new SimOptions { Technique = technique })).Outcome;
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        var s = outcome.FinalState!;
        Assert.True((s.R8 & (1u << 7)) != 0, "CPUID.1:EDX.MCE");
        Assert.True((s.R8 & (1u << 14)) != 0, "CPUID.1:EDX.MCA");
        Assert.Equal(0UL, s.R9);          // no error-reporting banks, no IA32_MCG_CTL
        Assert.Equal(1UL << 6, s.R10 & (1UL << 6));
        Assert.Equal(0b100UL, s.R11);
        Assert.Equal(0b100UL, vm.Vcpus[0].State.MachineCheckStatus); // the vCPU's state value holds it after the run
    }
}
