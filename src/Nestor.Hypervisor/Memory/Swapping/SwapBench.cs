using System.Diagnostics;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Memory.Swapping;

/// <summary>One run of <see cref="SwapBench"/>.</summary>
/// <param name="Name">baseline, or the victim policy.</param>
/// <param name="TargetPages">The resident target (null: none).</param>
/// <param name="TouchedPages">Pages the baseline run gave a host frame.</param>
/// <param name="GuestCycles">The guest's own cycles (its clock).</param>
/// <param name="NestedFaults">EPT violations the VMM handled.</param>
/// <param name="Native">Whether its RESULT lines equal the baseline's.</param>
public sealed record SwapBenchRow(string Name, long? TargetPages, long TouchedPages, long PeakResident, long SwappedOut, long SwappedIn,
    long DoublePaging, long SecondChances, long GuestCycles, long NestedFaults, TimeSpan Wall, bool Native, string? Error);

/// <summary><c>nestor bench overcommit swap</c>: one NestorOS VM under nested paging, alone, then squeezed by host
/// swapping to a fraction of the pages it touched, with random and with clock victims.</summary>
public static class SwapBench
{
    public static IReadOnlyList<SwapBenchRow> Run(string workload, ulong memoryBytes, double fraction, string swapDirectory, long sliceInstructions = 50_000)
    {
        var rows = new List<SwapBenchRow>();
        RunOne("warm-up", workload, memoryBytes, null, null, null, sliceInstructions); // the JIT's first run is not the baseline
        var baseline = RunOne("baseline", workload, memoryBytes, null, null, null, sliceInstructions);
        rows.Add(baseline.Row with { Native = true });
        long target = Math.Max(1, (long)(baseline.Row.TouchedPages * fraction));
        foreach (var policy in new[] { SwapVictimPolicy.Random, SwapVictimPolicy.Clock })
        {
            string path = Path.Combine(swapDirectory, $"nestor-bench-{Environment.ProcessId}-{policy}.swap");
            using var file = new HostSwapFile(path, memoryBytes);
            var swap = new HostSwap(file, policy) { TargetResidentPages = target };
            var run = RunOne(policy.ToString().ToLowerInvariant(), workload, memoryBytes, swap, baseline.Results, target, sliceInstructions);
            rows.Add(run.Row);
        }
        return rows;
    }

    private static (SwapBenchRow Row, List<string> Results) RunOne(string name, string workload, ulong memoryBytes, HostSwap? swap,
        List<string>? expected, long? target, long slice)
    {
        var output = new MemoryStream();
        var sim = new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested };
        using var vm = Vm.Create(new VmConfig { Engine = EngineKind.Sim, Sim = sim, Kernel = BuiltIn.BuiltInGuests.Get("nestoros"), MemoryBytes = memoryBytes, CommandLine = workload, SerialOutput = output });
        SwapQuantum? quantum = swap is null ? null : new SwapQuantum(vm, swap, slice);
        using var engine = new SimEngine(sim) { Quantum = quantum };
        var wall = Stopwatch.StartNew();
        var run = vm.Run(engine);
        wall.Stop();
        vm.Serial.Flush();
        if (run.Outcome.Kind != VmOutcomeKind.DebugExit)
        {
            throw new Errors.WorkloadFailedException($"the {name} run did not finish: {run.Outcome.Message}", "Check the workload with nestor run --technique hw");
        }
        var map = vm.Host.PhysicalMapOf(vm)!;
        swap?.Enforce();
        var results = Encoding.UTF8.GetString(output.ToArray()).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal)).ToList();
        var state = vm.Vcpus[0].State;
        var row = new SwapBenchRow(name, target, swap is null ? map.TouchedPages : 0, swap?.PeakResidentPages ?? map.TouchedPages,
            swap?.PagesSwappedOut ?? 0, swap?.PagesSwappedIn ?? 0, swap?.DoublePaging ?? 0, swap?.SecondChances ?? 0,
            state.InstructionsRetired + state.IdleCycles, vm.Exits.Count(VmExitReason.NestedPageFault), wall.Elapsed,
            expected is null || expected.SequenceEqual(results), quantum?.Error?.Message);
        return (row, results);
    }
}
