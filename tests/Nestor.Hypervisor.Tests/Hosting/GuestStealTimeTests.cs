using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>NestorOS's <c>steal</c> program (guest/user/steal.c, kernel/steal.c) reading the steal-time port of
/// <see cref="StealTimeDevice"/> through its kernel: the steal it reports over its loop is real descheduling, so a VM
/// sharing one host CPU with a spinner sees plenty and a VM alone on the host sees none.</summary>
public class GuestStealTimeTests
{
    private const string Program = "steal 1000000";

    private static (string Line, ulong StealNs) StealLine(HostedVm vm)
    {
        Assert.True(vm.GuestStatus == 0, $"{vm.Name}: {vm.Outcome}");
        string line = Assert.Single(vm.ResultLines, l => l.StartsWith("RESULT steal ", StringComparison.Ordinal));
        Assert.StartsWith("RESULT steal n=1000000 x=", line);
        return (line[..line.LastIndexOf(' ')], ulong.Parse(line[(line.LastIndexOf('=') + 1)..]));
    }

    [Fact]
    public void A_vm_sharing_a_cpu_with_a_spinner_reads_steal_time_and_a_solo_vm_reads_none()
    {
        using var shared = Run(SchedulerKind.ProportionalShare, 1, null,
            Vm("steal", "nestoros", cmdline: Program), Vm("spinner", "spin") with { RunLimitMilliseconds = 400 });
        using var solo = Run(SchedulerKind.ProportionalShare, 1, null, Vm("steal", "nestoros", cmdline: Program));
        var (sharedLine, sharedSteal) = StealLine(shared.Vms[0]);
        var (soloLine, soloSteal) = StealLine(solo.Vms[0]);
        // The same work gives the same result either way: the guest's time is its own.
        Assert.Equal(soloLine, sharedLine);
        Assert.Equal(0UL, soloSteal);
        // Equal shares on one CPU: over its loop the spinner had the CPU about as long as it did, so the steal is a
        // large part of the loop's length (a million iterations of five instructions, 50 ms at the tests' 100 MHz),
        // and never more than the VM's whole ready time as the host counted it.
        ulong counted = (ulong)(shared.Vms[0].Vcpu.ReadyCycles * (1_000_000.0 / SlowClock.CyclesPerMillisecond));
        Assert.InRange(sharedSteal, 10_000_000UL, counted);
    }
}
