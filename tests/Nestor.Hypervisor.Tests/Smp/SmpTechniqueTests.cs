using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Tests.Smp;

/// <summary>Several vCPUs under a VMM (issue 18): hardware assistance with nested paging keeps a VMCS per vCPU (Intel
/// SDM Vol. 3C §25.1) over one nested page table, by booting <see cref="SmpGuest"/> as natively: the same counts and
/// IPIs, exits counted per vCPU, two deterministic runs alike, and a change of the nested mapping seen by every vCPU
/// (the nested-TLB shootdown reaches each vCPU's MMU). What is not done yet is refused, saying so.</summary>
public class SmpTechniqueTests
{
    private static SimOptions Options(Technique technique) =>
        technique == Technique.Native ? new SimOptions() : new SimOptions { Technique = technique, Memory = MemoryVirtualization.Nested };

    private static (RunResult Result, Vm Vm, SmpGuest.RemapDevice Remap) Boot(int cpus, Technique technique, bool deterministic = false)
    {
        var config = SmpGuest.Config(cpus, deterministic, Options(technique));
        var vm = Vm.Create(config);
        SmpGuest.Install(vm);
        var remap = new SmpGuest.RemapDevice(vm);
        if (technique != Technique.Native)
        {
            vm.Bus.Claim(remap, SmpGuest.RemapPort, 1);
        }
        using var engine = new SimEngine(config.Sim);
        return (vm.Run(engine), vm, remap);
    }

    private static ulong Read(Vm vm, ulong address) => vm.Memory.ReadUInt64(new(address));

    [Theory]
    [InlineData(2, Technique.Native)]
    [InlineData(2, Technique.HardwareAssist)]
    [InlineData(4, Technique.HardwareAssist)]
    public void The_smp_guest_gives_the_native_results_under_hardware_assist(int cpus, Technique technique)
    {
        var (result, vm, _) = Boot(cpus, technique);
        using (vm)
        {
            Assert.True(result.Outcome.Kind == VmOutcomeKind.DebugExit, result.Outcome.Message);
            Assert.Equal(0u, vm.GuestStatus);
            Assert.Equal((ulong)(cpus - 1), Read(vm, SmpGuest.Started));
            Assert.Equal((ulong)(cpus - 1), Read(vm, SmpGuest.IpisToBsp));
            Assert.Equal((ulong)(cpus - 1), Read(vm, SmpGuest.Broadcasts));
            Assert.Equal(1UL, Read(vm, SmpGuest.SelfIpis));
            Assert.Equal((ulong)(cpus - 1), Read(vm, SmpGuest.Done));
            for (int i = 1; i < cpus; i++)
            {
                var state = vm.Vcpus[i].State;
                Assert.Equal((uint)i, state.Apic.Id);
                Assert.True((state.Efer & 0x400) != 0, $"vCPU {i} is in long mode");
                Assert.Equal(3, state.Apic.InterprocessorInterruptsReceived); // INIT, SIPI (the second ignored), the broadcast
            }
            Assert.Equal(cpus - 1, vm.Vcpus[0].State.Apic.InterprocessorInterruptsReceived);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void Each_vcpu_has_its_own_vmcs_and_its_exits_are_counted_per_vcpu_and_in_total(int cpus)
    {
        var (result, vm, _) = Boot(cpus, Technique.HardwareAssist);
        using (vm)
        {
            Assert.Equal(VmOutcomeKind.DebugExit, result.Outcome.Kind);
            var monitor = result.Machine!.Monitor!;
            Assert.Equal(cpus, monitor.VcpuCount);
            var vmcss = monitor.ControlStructures;
            Assert.Equal(cpus, vmcss.Distinct().Count());
            Assert.Same(result.Machine.Vmcs, vmcss[0]);
            Assert.Equal(cpus, vmcss.Select(v => v.Controls).Distinct().Count());
            Assert.All(vmcss, v => Assert.Equal(monitor.Memory.NestedTable!.Root.Value, v.Controls.NestedRoot)); // one EPT for the VM
            // Every AP's APIC accesses and HLTs are its own exits, on its own VMCS.
            for (int i = 1; i < cpus; i++)
            {
                Assert.True(vmcss[i].Exits(ExitReason.EptViolation) + vmcss[i].Exits(ExitReason.Hlt) > 0, $"vCPU {i}: {vmcss[i].TotalExits} exits");
                Assert.Equal(Technique.HardwareAssist, monitor.TechniqueOf(i).Kind);
                Assert.NotSame(monitor.TechniqueOf(0), monitor.TechniqueOf(i));
            }
            Assert.Equal(2, vmcss[0].Exits(ExitReason.IoInstruction)); // the remap request and the debug exit: the BSP's only
            Assert.All(vmcss.Skip(1), v => Assert.Equal(0, v.Exits(ExitReason.IoInstruction)));
            long total = vmcss.Sum(v => v.TotalExits);
            Assert.Equal(total, monitor.TotalExits);
            ulong Counter(string name) => result.Counters.Single(c => c.Name == name).Value;
            Assert.Equal((ulong)total, Counter("vm_exits"));
            for (int i = 0; i < cpus; i++)
            {
                Assert.Equal((ulong)vmcss[i].TotalExits, Counter($"vm_exits_vcpu{i}"));
            }
            foreach (var (reason, count) in monitor.ExitsByReason)
            {
                Assert.Equal(vmcss.Sum(v => v.Exits(reason)), count);
            }
        }
    }

    [Fact]
    public void Two_deterministic_runs_under_hardware_assist_repeat_exit_for_exit()
    {
        var (first, a, _) = Boot(4, Technique.HardwareAssist, deterministic: true);
        var (second, b, _) = Boot(4, Technique.HardwareAssist, deterministic: true);
        using (a)
        using (b)
        {
            Assert.Equal(VmOutcomeKind.DebugExit, first.Outcome.Kind);
            Assert.Equal(VmOutcomeKind.DebugExit, second.Outcome.Kind);
            for (int i = 0; i < 4; i++)
            {
                Assert.Equal(a.Vcpus[i].State.InstructionsRetired, b.Vcpus[i].State.InstructionsRetired);
                Assert.Equal(a.Vcpus[i].State.Rip, b.Vcpus[i].State.Rip);
                Assert.Equal(first.Machine!.Monitor!.ControlStructure(i).ExitsByReason, second.Machine!.Monitor!.ControlStructure(i).ExitsByReason);
            }
            Assert.Equal(Read(a, SmpGuest.StartOrder), Read(b, SmpGuest.StartOrder));
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void A_change_of_the_nested_mapping_reaches_every_vcpu(int cpus)
    {
        var (result, vm, remap) = Boot(cpus, Technique.HardwareAssist);
        using (vm)
        {
            Assert.True(result.Outcome.Kind == VmOutcomeKind.DebugExit, result.Outcome.Message);
            Assert.Equal(1, remap.Remaps);
            for (int i = 1; i < cpus; i++)
            {
                // The AP had the old translation cached (it read the page before); the shootdown took it away.
                Assert.Equal(SmpGuest.ProbeValue, Read(vm, SmpGuest.ProbeBefore + 8 * (ulong)i));
                Assert.Equal(SmpGuest.ReplacementValue, Read(vm, SmpGuest.ProbeAfter + 8 * (ulong)i));
            }
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void A_snapshot_keeps_every_vcpus_vmcs(int cpus)
    {
        long total;
        using (var whole = Boot(cpus, Technique.HardwareAssist, deterministic: true).Vm)
        {
            total = whole.Vcpus[0].State.InstructionsRetired;
        }
        var options = Options(Technique.HardwareAssist);
        byte[] snapshot;
        long[] exitsThen;
        {
            var config = SmpGuest.Config(cpus, deterministic: true, options);
            using var vm = Vm.Create(config);
            SmpGuest.Install(vm);
            vm.Bus.Claim(new SmpGuest.RemapDevice(vm), SmpGuest.RemapPort, 1);
            using var engine = new SimEngine(options with { StopAtInstruction = total * 3 / 4 });
            var first = vm.Run(engine);
            Assert.Equal(VmOutcomeKind.Breakpoint, first.Outcome.Kind);
            exitsThen = [.. first.Machine!.Monitor!.ControlStructures.Select(v => v.TotalExits)];
            Assert.All(exitsThen, e => Assert.True(e > 0));
            snapshot = Persistence.VmSnapshot.Capture(vm, engine);
        }
        {
            var config = SmpGuest.Config(cpus, deterministic: true, options);
            using var vm = Vm.Create(config);
            vm.Bus.Claim(new SmpGuest.RemapDevice(vm), SmpGuest.RemapPort, 1);
            using var engine = new SimEngine(options);
            Persistence.VmSnapshot.Restore(vm, snapshot, engine);
            var rest = vm.Run(engine);
            Assert.True(rest.Outcome.Kind == VmOutcomeKind.DebugExit, rest.Outcome.Message);
            Assert.Equal(0u, vm.GuestStatus);
            Assert.Equal((ulong)(cpus - 1), Read(vm, SmpGuest.Done));
            var vmcss = rest.Machine!.Monitor!.ControlStructures;
            for (int i = 0; i < cpus; i++)
            {
                // The exit counters go on from the snapshot's (section version 2 holds every vCPU's VMCS).
                Assert.True(vmcss[i].TotalExits >= exitsThen[i], $"vCPU {i}: {vmcss[i].TotalExits} exits after the restore, {exitsThen[i]} at the snapshot");
            }
        }
    }

    [Fact]
    public void Without_a_remap_the_aps_read_the_probe_page_unchanged()
    {
        var (result, vm, _) = Boot(2, Technique.Native);
        using (vm)
        {
            Assert.Equal(VmOutcomeKind.DebugExit, result.Outcome.Kind);
            Assert.Equal(SmpGuest.ProbeValue, Read(vm, SmpGuest.ProbeAfter + 8));
        }
    }

    [Theory]
    [InlineData(Technique.HardwareAssist, MemoryVirtualization.Shadow)]
    [InlineData(Technique.TrapAndEmulate, null)]
    [InlineData(Technique.BinaryTranslation, null)]
    [InlineData(Technique.Paravirtual, null)]
    public void What_cannot_run_several_vcpus_yet_is_refused_with_what_to_do(Technique technique, MemoryVirtualization? memory)
    {
        var kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat);
        VmConfig Config(int cpus) => new() { Kernel = kernel, Cpus = cpus, Sim = new SimOptions { Technique = technique, Memory = memory } };
        var refused = Assert.Throws<BadInputException>(Config(2).Validate);
        Assert.Contains("--cpus 2", refused.Message);
        Assert.Contains("shadow paging", refused.Message);
        Assert.Contains("--mmu nested", refused.Advice);
        Assert.False(TechniqueRules.AllowsSeveralVcpus(technique, memory));
        Config(1).Validate();
    }

    [Fact]
    public void The_one_rule_allows_native_and_hardware_assist_with_nested_paging()
    {
        Assert.True(TechniqueRules.AllowsSeveralVcpus(Technique.Native, null));
        Assert.True(TechniqueRules.AllowsSeveralVcpus(Technique.HardwareAssist, null)); // its default is nested paging
        Assert.True(TechniqueRules.AllowsSeveralVcpus(Technique.HardwareAssist, MemoryVirtualization.Nested));
        Assert.False(TechniqueRules.AllowsSeveralVcpus(Technique.HardwareAssist, MemoryVirtualization.Shadow));
        Assert.False(TechniqueRules.AllowsSeveralVcpus(Technique.TrapAndEmulate, null));
        var kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat);
        new VmConfig { Kernel = kernel, Cpus = 4, Sim = new SimOptions { Technique = Technique.HardwareAssist } }.Validate();
    }
}
