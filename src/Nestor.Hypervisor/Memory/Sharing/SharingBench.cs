using System.Diagnostics;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Memory.Sharing;

/// <summary>One row of <see cref="SharingBench"/>: <paramref name="Vms"/> identical VMs on one host.</summary>
/// <param name="GuestPages">Guest pages with a host frame, over all the VMs, at the end.</param>
/// <param name="HostFrames">Host frames behind them.</param>
/// <param name="AllNative">Whether every VM gave the RESULT lines of a VM alone (its cycle counts aside, see the tests).</param>
/// <param name="ResidentBefore">Bytes of the VMs' RAM and the frame pool resident in the host (mincore) before the final scans.</param>
/// <param name="ResidentAfter">The same after them.</param>
/// <param name="RssBefore">The process's VmRSS before the final scans.</param>
/// <param name="RssAfter">And after them.</param>
public sealed record SharingBenchRow(int Vms, long GuestPages, long HostFrames, SharingCounters Counters, bool AllNative, TimeSpan Wall,
    long ResidentBefore, long ResidentAfter, long RssBefore, long RssAfter)
{
    /// <summary>Host memory saved, in percent of the guest pages' memory.</summary>
    public double SavedPercent => GuestPages == 0 ? 0 : 100.0 * Counters.PagesSharing / GuestPages;
}

/// <summary><c>nestor bench overcommit sharing</c>: 1…N identical NestorOS VMs on one host with the page-sharing scanner
/// running between rounds, then two more full scans; the memory saved against the number of VMs, the shape of
/// Waldspurger's Fig. 4 (OSDI 2002, §4.3).</summary>
public static class SharingBench
{
    /// <param name="counts">The numbers of VMs to run.</param>
    /// <param name="workload">The NestorOS command line of each.</param>
    /// <param name="memoryBytes">Each VM's RAM.</param>
    /// <param name="pagesPerSecond">The scanner's system-wide rate in pages per second of virtual time.</param>
    /// <param name="nativeResults">The RESULT lines of one VM alone, to check each VM against (cycle fields aside).</param>
    public static IEnumerable<SharingBenchRow> Run(IEnumerable<int> counts, string workload, ulong memoryBytes, double pagesPerSecond,
        IReadOnlyList<string> nativeResults, MemoryVirtualization memory = MemoryVirtualization.Nested)
    {
        foreach (int count in counts)
        {
            var wall = Stopwatch.StartNew();
            var specs = Enumerable.Range(0, count).Select(i => new HostedVmSpec($"vm{i}", BuiltIn.BuiltInGuests.Get("nestoros"), workload,
                new SimOptions { Technique = Technique.HardwareAssist, Memory = memory }, new MemoryControls(memoryBytes, memoryBytes, 1000),
                new CpuControls(1000, 0, null))).ToArray();
            var spec = new HostSpec(64UL << 30, 64UL << 30, 1, SchedulerKind.ProportionalShare, specs) { Clock = new HostClock(100_000) };
            using var vmHost = new VirtualMachineHost(spec, console: null);
            PageSharingScanner? scanner = null;
            Host? host = null;
            vmHost.BetweenRounds = (h, round) =>
            {
                host = h;
                scanner ??= new PageSharingScanner(h, new ScanRates(pagesPerSecond));
                scanner.Advance(spec.Clock.Milliseconds(round) / 1000.0);
            };
            vmHost.Run();
            if (scanner is null || host is null)
            {
                throw new Errors.WorkloadFailedException($"the host of {count} VMs ran no round", "Check the VMs' outcomes with nestor host run");
            }
            // The final scans, with the host's real memory measured around them: merged pages' homes go back to the
            // host kernel, so the VMs' resident RAM falls by what sharing saves (Waldspurger, OSDI 2002, §4.1).
            GC.Collect();
            long residentBefore = ResidentBytes(host), rssBefore = ProcessMemory.ResidentSetBytes();
            scanner.ScanAll(2);
            GC.Collect();
            long residentAfter = ResidentBytes(host), rssAfter = ProcessMemory.ResidentSetBytes();
            var counters = scanner.Counters();
            long pages = host.Vms.Sum(vm => host.PhysicalMapOf(vm)?.TouchedPages ?? 0);
            bool native = vmHost.Vms.All(v => v.GuestStatus == 0 && Masked(v.ResultLines) == Masked(nativeResults));
            var row = new SharingBenchRow(count, pages, host.FramePool.GuestFrames, counters, native, wall.Elapsed, residentBefore, residentAfter, rssBefore, rssAfter);
            scanner.Dispose();
            yield return row;
        }
    }

    /// <summary>Bytes of the host's VMs' RAM and of its frame pool resident now (mincore).</summary>
    public static long ResidentBytes(Host host) =>
        (long)host.FramePool.StoreResidentBytes() + host.Vms.Sum(vm => vm.Memory.Regions.Sum(r => (long)r.Backing.ResidentBytes()));

    /// <summary>RESULT lines with their cycle counts blanked.</summary>
    public static string Masked(IEnumerable<string> lines) =>
        System.Text.RegularExpressions.Regex.Replace(string.Join("\n", lines), @"(\w*cycles\w*)=\d+", "$1=*");
}
