using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Memory.Sharing;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>Page sharing under a running host changes no guest's time: identical NestorOS VMs whose pages the scanner
/// merges between rounds (their kernel stacks among them) give, cycle counts included, the RESULT lines of a VM alone.
/// It once did not: a user-mode program interrupted by the timer while its kernel stack page was shared took an EPT
/// violation on the first push of the interrupt frame; the CPU had already loaded the handler's CS, and the retried
/// delivery, seeing CPL 0, neither switched stacks nor saved the user's CS, so the guest's handler took its
/// kernel-mode path and the program went on in ring 0, 1,047 instructions short (Cpu.Delivery's DeliverOnce now
/// restores CS for an EPT violation as for a fault).</summary>
public class SharedPagesGuestTimeTests
{
    private const string Workload = "compute 20000 ; syscall 500";

    private static (List<List<string>> Results, long Merges) Run(int count, bool share)
    {
        var specs = Enumerable.Range(0, count).Select(i => new HostedVmSpec($"vm{i}", BuiltInGuests.Get("nestoros"), Workload,
            new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested }, new MemoryControls(32UL << 20, 32UL << 20, 640),
            new CpuControls(1000, 0, null))).ToArray();
        var spec = new HostSpec(4UL << 30, 4UL << 30, 1, SchedulerKind.ProportionalShare, specs) { Clock = new HostClock(100_000), WallTimeout = TimeSpan.FromMinutes(5) };
        using var host = new VirtualMachineHost(spec, console: null);
        PageSharingScanner? scanner = null;
        if (share)
        {
            host.BetweenRounds = (h, round) =>
            {
                scanner ??= new PageSharingScanner(h, new ScanRates(PagesPerSecond: 2_000_000));
                scanner.Advance(spec.Clock.Milliseconds(round) / 1000.0);
            };
        }
        try
        {
            host.Run();
            var results = host.Vms.Select(v =>
            {
                Assert.True(v.GuestStatus == 0, $"{v.Name}: {v.Outcome}");
                return v.ResultLines.Append($"guest_clock={v.Vcpu.GuestClock}").ToList();
            }).ToList();
            return (results, scanner?.Counters().Merges ?? 0);
        }
        finally
        {
            scanner?.Dispose();
        }
    }

    [Fact]
    public void Vms_whose_pages_are_shared_keep_their_solo_cycle_counts()
    {
        var (solo, _) = Run(1, share: false);
        Assert.Contains(solo[0], l => l.StartsWith("RESULT compute", StringComparison.Ordinal) && l.Contains("total_cycles=", StringComparison.Ordinal));
        var (shared, merges) = Run(3, share: true);
        Assert.True(merges > 0, "the scanner merged pages while the VMs ran");
        Assert.All(shared, r => Assert.Equal(solo[0], r));
    }
}
