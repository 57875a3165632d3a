using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Virtualization;

namespace Nestor.Integration.Tests;

/// <summary>NestorOS's default workload on the software machine without a VMM, once for the class.</summary>
public sealed class NativeWorkload
{
    public NativeWorkload()
    {
        var (outcome, serial, vm) = SimEngineTests.RunInProcess(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf));
        vm.Dispose();
        Outcome = outcome;
        Serial = serial;
    }

    public VmOutcome Outcome { get; }
    public string Serial { get; }
}

/// <summary>Hardware-assisted virtualization on the software machine: the same guest, the same results as on the bare
/// machine, with the VM exits the VMCS asks for.</summary>
public class HardwareAssistTests(NativeWorkload native) : IClassFixture<NativeWorkload>
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void NestorOS_under_hw_nested_prints_the_same_results_as_native(bool largeNestedPages)
    {
        Assert.True(native.Outcome.GuestStatus == 0, native.Outcome.Message);
        var engine = new SimEngine(new SimOptions
        {
            Technique = Technique.HardwareAssist,
            Memory = MemoryVirtualization.Nested,
            LargeNestedPages = largeNestedPages,
        });
        var (outcome, serial, vm) = SimEngineTests.RunInProcess(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf), engine: engine);
        vm.Dispose();

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Equal(SimEngineTests.ResultsWithoutTimings(native.Serial), SimEngineTests.ResultsWithoutTimings(serial));
        var vmcs = engine.Vmcs!;
        Assert.True(vmcs.Exits(ExitReason.EptViolation) > 0, "guest pages get host frames on first touch");
        Assert.True(vmcs.Exits(ExitReason.IoInstruction) > 0);
        Assert.True(vmcs.Exits(ExitReason.Cpuid) > 0);
        // Guest page faults go straight to the guest under nested paging: no exception exits.
        Assert.Equal(0, vmcs.Exits(ExitReason.ExceptionOrNmi));
        Assert.Equal(0, vmcs.Exits(ExitReason.ControlRegisterAccess));
        var counters = engine.Counters.ToDictionary(c => c.Name, c => c.Value);
        Assert.True(counters["nested_walk_references"] > 0);
        if (largeNestedPages)
        {
            // 64 MiB of guest RAM in 2 MiB nested pages: at most 32 violations for RAM (a few more for devices).
            Assert.True(vmcs.Exits(ExitReason.EptViolation) < 40, $"{vmcs.Exits(ExitReason.EptViolation)} EPT violations");
        }
    }

    [Fact]
    public void NestorOS_under_hw_shadow_prints_the_same_results_as_native()
    {
        Assert.True(native.Outcome.GuestStatus == 0, native.Outcome.Message);
        var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow });
        var (outcome, serial, vm) = SimEngineTests.RunInProcess(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf), engine: engine);
        vm.Dispose();

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit && outcome.GuestStatus == 0, outcome.Message + "\n" + serial);
        Assert.Equal(SimEngineTests.ResultsWithoutTimings(native.Serial), SimEngineTests.ResultsWithoutTimings(serial));
        var vmcs = engine.Vmcs!;
        var counters = engine.Counters.ToDictionary(c => c.Name, c => c.Value);
        // Page faults, CR3 loads and INVLPG reach the VMM; hidden faults fill the shadows, true faults (demand paging,
        // copy-on-write, the fault program) go on to the guest, and guest page-table writes trap.
        Assert.True(vmcs.Exits(ExitReason.ExceptionOrNmi) > 0);
        Assert.True(vmcs.Exits(ExitReason.ControlRegisterAccess) > 0);
        Assert.True(vmcs.Exits(ExitReason.Invlpg) > 0);
        Assert.Equal(0, vmcs.Exits(ExitReason.EptViolation));
        Assert.True(counters["shadow_hidden_faults"] > 0);
        Assert.True(counters["shadow_true_faults"] > 0);
        Assert.True(counters["shadow_page_table_writes"] > 0);
        Assert.False(counters.ContainsKey("nested_walk_references"));
    }
}
