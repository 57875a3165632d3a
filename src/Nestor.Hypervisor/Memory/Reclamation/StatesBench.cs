using System.Diagnostics;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>One row of <see cref="StatesBench"/>: the host at the end of a round.</summary>
/// <param name="Milliseconds">Virtual time.</param>
/// <param name="FreePages">Free host memory (host memory less the frames held).</param>
/// <param name="FreePercent">The same in percent of host memory.</param>
/// <param name="State">The free-memory state after the round.</param>
/// <param name="BalloonTargetPages">The balloon targets, summed over the VMs.</param>
/// <param name="BalloonPages">Pages in the balloons now.</param>
/// <param name="SwappedPages">Guest pages in the host swap files now.</param>
/// <param name="SwappedOutTotal">Pages swapped out so far.</param>
/// <param name="BlockedVms">VMs the low state blocks now.</param>
/// <param name="RunningVms">VMs still running.</param>
public sealed record StatesBenchRow(double Milliseconds, long FreePages, double FreePercent, MemoryState State, long BalloonTargetPages,
    long BalloonPages, long SwappedPages, long SwappedOutTotal, int BlockedVms, int RunningVms);

/// <summary>The outcome of <see cref="StatesBench.Run"/>: the rows, the state machine's books and whether every VM
/// ended with the RESULT lines it gives alone (cycle counts aside).</summary>
public sealed record StatesBenchResult(IReadOnlyList<StatesBenchRow> Rows, ReclamationStateMachine States, HostSpec Spec, bool AllNative,
    IReadOnlyList<string> Outcomes, TimeSpan Wall);

/// <summary><c>nestor bench overcommit states</c>: a host deliberately short of memory driven through the free-memory
/// states (Waldspurger, OSDI'02 §6.1). NestorOS VMs under nested paging with balloons, each touching more memory than
/// its share (<c>memtouch</c>) and then computing, start together: free memory falls through the soft, hard and low
/// thresholds, the balloons and host swapping take memory back and the low state blocks the VMs above target; as the
/// VMs finish, their frames return and the host climbs back to high, passing each threshold upwards. A row is kept
/// at every state change and every <c>stepMs</c> of virtual time.</summary>
public static class StatesBench
{
    /// <param name="vms">How many VMs.</param>
    /// <param name="vmBytes">Each VM's memory (max); its min is a quarter of it.</param>
    /// <param name="hostBytes">Host memory.</param>
    /// <param name="workload">Each VM's command line; VM <i>i</i> gets <paramref name="tail"/> repeated <i>i</i> times
    /// after it, so that the VMs finish one after another and memory comes back in steps.</param>
    /// <param name="stepMs">Virtual milliseconds between rows.</param>
    /// <param name="swapDirectory">Where the host swap files go.</param>
    /// <param name="nativeResults">The RESULT lines of each VM alone, by VM index, or null not to check.</param>
    public static StatesBenchResult Run(int vms, ulong vmBytes, ulong hostBytes, string workload, string tail, double stepMs, string swapDirectory,
        Func<int, IReadOnlyList<string>>? nativeResults = null, ReclamationThresholds? thresholds = null)
    {
        var sim = new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested };
        var specs = Enumerable.Range(0, vms).Select(i => new HostedVmSpec($"vm{i}", BuiltIn.BuiltInGuests.Get("nestoros"), CommandLine(workload, tail, i), sim,
            new MemoryControls(vmBytes / 4, vmBytes, 1000), new CpuControls(1000, 0, null))
        { Balloon = true }).ToArray();
        var spec = new HostSpec(hostBytes, (ulong)vms * vmBytes, 2, SchedulerKind.ProportionalShare, specs)
        {
            Overcommit = OvercommitOptions.On with { Sharing = null, HostSwap = new HostSwapOptions(swapDirectory), Thresholds = thresholds ?? ReclamationThresholds.Default },
            WallTimeout = TimeSpan.FromMinutes(30),
            // 100 MHz: rounds of 10,000 instructions, so that the manager, acting between rounds, sees memory move
            // in small steps (a NestorOS VM faulting in fresh pages takes one every ~50 instructions).
            Clock = new HostClock(100_000),
        };
        var rows = new List<StatesBenchRow>();
        var wall = Stopwatch.StartNew();
        using var host = new VirtualMachineHost(spec, console: null);
        double nextRow = 0;
        MemoryState last = MemoryState.High;
        host.AfterReclaim = (h, round) =>
        {
            var m = h.MemoryManager;
            double ms = spec.Clock.Milliseconds(h.Now + round);
            if (ms + 1e-9 < nextRow && m.States.State == last)
            {
                return;
            }
            last = m.States.State;
            nextRow = (Math.Floor(ms / stepMs) + 1) * stepMs;
            // The balloons and swap of the VMs still running (an ended VM's frames and swap slots went back).
            var running = h.Vms.Where(v => v.State == HostedVmState.Running && !v.Quantum.Finished).ToList();
            rows.Add(new StatesBenchRow(ms, m.FreePages, m.FreePercent, m.States.State,
                running.Sum(v => v.Memory.BalloonTargetPages), running.Sum(v => v.Memory.BalloonPages), running.Sum(v => v.Memory.SwappedPages),
                h.Vms.Sum(v => v.Memory.PagesSwappedOut), h.Vms.Count(v => v.Memory.Blocked), running.Count));
        };
        host.Run();
        wall.Stop();
        bool native = nativeResults is null || host.Vms.Select((v, i) => v.GuestStatus == 0 &&
            Sharing.SharingBench.Masked(v.ResultLines) == Sharing.SharingBench.Masked(nativeResults(i))).All(ok => ok);
        // A copy of the books: the host's manager goes with the host.
        var books = host.MemoryManager.States;
        return new StatesBenchResult(rows, books, spec, native, [.. host.Vms.Select(v => $"{v.Name}: {v.Outcome}")], wall.Elapsed);
    }

    /// <summary>VM <paramref name="index"/>'s command line.</summary>
    public static string CommandLine(string workload, string tail, int index) =>
        string.Join(" ; ", new[] { workload }.Concat(Enumerable.Repeat(tail, index)));
}
