using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Smp;

/// <summary><c>--cpus N</c> on the software machine (issue 18), by booting <see cref="SmpGuest"/>: the APs start by
/// INIT-SIPI-SIPI through real mode into long mode, each counts itself with LOCK XADD and sends the BSP an IPI, a
/// broadcast reaches every AP and a self-IPI the BSP; two runs interleave the same way; and what cannot run several
/// vCPUs says so.</summary>
public class SmpRunTests
{
    private static (VmOutcome Outcome, Vm Vm) Boot(int cpus, bool deterministic = false)
    {
        var vm = Vm.Create(SmpGuest.Config(cpus, deterministic));
        SmpGuest.Install(vm);
        using var engine = new SimEngine();
        var result = vm.Run(engine);
        return (result.Outcome, vm);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void The_aps_start_count_themselves_and_answer_with_ipis(int cpus)
    {
        var (outcome, vm) = Boot(cpus);
        using (vm)
        {
            Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
            Assert.Equal(0u, vm.GuestStatus);
            Assert.Equal((ulong)(cpus - 1), vm.Memory.ReadUInt64(new(SmpGuest.Started)));
            Assert.Equal((ulong)(cpus - 1), vm.Memory.ReadUInt64(new(SmpGuest.IpisToBsp)));
            Assert.Equal((ulong)(cpus - 1), vm.Memory.ReadUInt64(new(SmpGuest.Broadcasts)));
            Assert.Equal(1UL, vm.Memory.ReadUInt64(new(SmpGuest.SelfIpis)));
            // Every AP came in once: the start order is a permutation of the APIC IDs 1..N-1.
            var order = Enumerable.Range(0, cpus - 1).Select(i => vm.Memory.ReadUInt32(new(SmpGuest.StartOrder + (ulong)i)) & 0xFF).Order();
            Assert.Equal(Enumerable.Range(1, cpus - 1).Select(i => (uint)i), order);
            for (int i = 1; i < cpus; i++)
            {
                var state = vm.Vcpus[i].State;
                Assert.False(state.WaitingForStartup);
                Assert.Equal((uint)i, state.Apic.Id);
                Assert.True((state.Efer & 0x400) != 0, $"vCPU {i} is in long mode");
                Assert.Equal(3, state.Apic.InterprocessorInterruptsReceived); // INIT, SIPI (the second ignored), the broadcast
            }
            Assert.Equal(cpus - 1, vm.Vcpus[0].State.Apic.InterprocessorInterruptsReceived);
        }
    }

    [Fact]
    public void Two_deterministic_runs_interleave_the_same_way()
    {
        var (first, a) = Boot(4, deterministic: true);
        var (second, b) = Boot(4, deterministic: true);
        using (a)
        using (b)
        {
            Assert.Equal(VmOutcomeKind.DebugExit, first.Kind);
            Assert.Equal(VmOutcomeKind.DebugExit, second.Kind);
            for (int i = 0; i < 4; i++)
            {
                Assert.Equal(a.Vcpus[i].State.InstructionsRetired, b.Vcpus[i].State.InstructionsRetired);
                Assert.Equal(a.Vcpus[i].State.Rip, b.Vcpus[i].State.Rip);
                Assert.Equal(a.Vcpus[i].State.IdleCycles, b.Vcpus[i].State.IdleCycles);
            }
            Assert.Equal(a.Memory.ReadUInt64(new(SmpGuest.StartOrder)), b.Memory.ReadUInt64(new(SmpGuest.StartOrder)));
        }
    }

    [Fact]
    public void A_vm_has_one_to_sixteen_vcpus_and_several_only_where_they_can_run()
    {
        var kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat);
        var tooMany = Assert.Throws<BadInputException>(() => new VmConfig { Kernel = kernel, Cpus = 17 }.Validate());
        Assert.Contains("17 vCPUs", tooMany.Message);
        Assert.Contains("--cpus", tooMany.Advice);
        Assert.Throws<BadInputException>(() => new VmConfig { Kernel = kernel, Cpus = 0 }.Validate());
        var kvm = Assert.Throws<BadInputException>(() => new VmConfig { Kernel = kernel, Cpus = 2, Engine = EngineKind.Kvm }.Validate());
        Assert.Contains("software machine", kvm.Message);
        var trap = Assert.Throws<BadInputException>(() =>
            new VmConfig { Kernel = kernel, Cpus = 2, Sim = new SimOptions { Technique = Technique.TrapAndEmulate } }.Validate());
        Assert.Contains("--technique trap", trap.Message);
        Assert.Throws<BadInputException>(() => new VmConfig { Kernel = kernel, Deterministic = true, Engine = EngineKind.Kvm }.Validate());
        new VmConfig { Kernel = kernel, Cpus = 16 }.Validate();
    }

    [Fact]
    public void The_platform_counts_every_vcpu_and_the_aps_wait_for_sipi()
    {
        using var vm = Vm.Create(SmpGuest.Config(3));
        Assert.Equal(3, vm.Vcpus.Count);
        Assert.False(vm.Vcpus[0].State.WaitingForStartup);
        Assert.True(vm.Vcpus[1].State.WaitingForStartup);
        Assert.Equal(2u, vm.Vcpus[2].State.Apic.Id);
        Assert.Equal(["CPU0", "CPU1", "CPU2"], vm.Vcpus.Select(v => v.SectionTag));
    }
}
