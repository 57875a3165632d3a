using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Tests.Smp;

/// <summary><c>--clock host</c> on the software machine (issue 18: kvm-unit-tests' vmexit benchmarks time themselves
/// against 2^30 TSC ticks): every vCPU's clock follows one host-time base, the engine reports what it added, and the
/// combinations that cannot hold are refused.</summary>
public class HostClockTests
{
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void Under_host_time_the_vcpus_boot_as_under_virtual_time_and_their_clocks_follow_the_host(int cpus)
    {
        var vm = Vm.Create(SmpGuest.Config(cpus, clock: GuestClock.Host));
        using (vm)
        {
            SmpGuest.Install(vm);
            using var engine = new SimEngine();
            var result = vm.Run(engine);
            Assert.True(result.Outcome.Kind == VmOutcomeKind.DebugExit, result.Outcome.Message);
            Assert.Equal(0u, vm.GuestStatus);
            Assert.Equal((ulong)(vm.Vcpus.Count - 1), vm.Memory.ReadUInt64(new(SmpGuest.IpisToBsp)));
            // The interpreter runs far below 1 instruction per nanosecond: the clock gained cycles from host time.
            var added = result.Counters.Single(c => c.Name == "clock_host_time_cycles");
            Assert.True(added.Value > 0, "the bootstrap processor's clock never followed the host's time");
        }
    }

    [Fact]
    public void The_virtual_clock_adds_nothing_and_reports_no_host_time()
    {
        var vm = Vm.Create(SmpGuest.Config(2, deterministic: true));
        using (vm)
        {
            SmpGuest.Install(vm);
            using var engine = new SimEngine();
            var result = vm.Run(engine);
            Assert.Equal(VmOutcomeKind.DebugExit, result.Outcome.Kind);
            Assert.DoesNotContain(result.Counters, c => c.Name.StartsWith("clock_", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void Host_time_is_refused_with_deterministic_and_virtual_time_on_kvm()
    {
        var kernel = new KernelImageSource("k", [0xF4], KernelFormat.Flat);
        var both = Assert.Throws<BadInputException>(() => new VmConfig { Kernel = kernel, Deterministic = true, Clock = GuestClock.Host }.Validate());
        Assert.Contains("--clock host", both.Message);
        Assert.Contains("--deterministic", both.Advice);
        var kvm = Assert.Throws<BadInputException>(() => new VmConfig { Kernel = kernel, Engine = EngineKind.Kvm, Clock = GuestClock.Virtual }.Validate());
        Assert.Contains("--clock virtual", kvm.Message);
        new VmConfig { Kernel = kernel, Clock = GuestClock.Host }.Validate();
        new VmConfig { Kernel = kernel, Engine = EngineKind.Kvm, Clock = GuestClock.Host }.Validate();
    }
}
