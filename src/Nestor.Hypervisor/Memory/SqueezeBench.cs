using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory.Swapping;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Memory;

/// <summary>How a <see cref="SqueezeBench"/> run takes the memory away.</summary>
public enum SqueezeKind
{
    /// <summary>The VM is configured with the small size: nothing to take.</summary>
    Small,
    /// <summary>Configured with the full size, ballooned down to the small one at boot (virtio-balloon's first target).</summary>
    Balloon,
    /// <summary>Configured with the full size, host swapping keeps it to the small size resident, random victims.</summary>
    SwapRandom,
    /// <summary>The same with the clock's victims.</summary>
    SwapClock,
    /// <summary>Ballooned to the small size and host-swapped to three quarters of it, random victims: both the guest
    /// and the host page, so the guest can write out pages the host had swapped (double paging, §3.1).</summary>
    BalloonAndSwap,
}

/// <summary>One run of <see cref="SqueezeBench"/>: measured counts, and the guest's own swap counters (its
/// <c>RESULT swap</c> line; zero when it did not page).</summary>
/// <param name="ConfiguredBytes">The VM's configured RAM.</param>
/// <param name="ResidentTarget">The host's resident target in pages (host swapping), or null.</param>
/// <param name="BalloonPages">Pages in the balloon at the end.</param>
/// <param name="GuestCycles">The guest's own clock: instructions retired plus idle cycles.</param>
/// <param name="HostSwapIns">Pages the host read back from its swap file.</param>
/// <param name="DoublePaging">Host swap-ins caused by the guest's disk DMA reading a host-swapped page.</param>
/// <param name="GuestPagesOut">Pages the guest wrote to its own swap disk.</param>
/// <param name="Results">The RESULT lines, cycle fields blanked, to compare runs.</param>
public sealed record SqueezeRow(SqueezeKind Kind, ulong ConfiguredBytes, long? ResidentTarget, long BalloonPages, long GuestCycles,
    long HostSwapOuts, long HostSwapIns, long DoublePaging, long GuestPagesOut, long GuestPagesIn, TimeSpan Wall, string Results)
{
    /// <summary>Modelled time: the guest's cycles at <paramref name="cyclesPerMicrosecond"/>, plus one disk access of
    /// <paramref name="diskMicroseconds"/> for every page moved by the host's swap or the guest's own (the time a VM
    /// would wait for them without overlapping; the disk latency is the caller's stated assumption).</summary>
    public double ModelledMicroseconds(double cyclesPerMicrosecond, double diskMicroseconds) =>
        GuestCycles / cyclesPerMicrosecond + (HostSwapOuts + HostSwapIns + GuestPagesOut + GuestPagesIn) * diskMicroseconds;
}

/// <summary><c>nestor bench overcommit balloon|squeeze</c>: a NestorOS VM configured with <i>full</i> memory and
/// squeezed to <i>small</i> (ballooned at boot, or by host swapping to that many resident pages), against a VM
/// configured with <i>small</i>, the same workload and a swap disk of its own (virtio-blk, <c>swap=vda</c>) each, on
/// sim under hardware assist with nested paging. Waldspurger (OSDI 2002, §3.2, Fig. 2) measured a ballooned VM within
/// 1.4–4.4% of one configured small; host swapping has no such guest knowledge (§3.3) and pays for it.</summary>
public static class SqueezeBench
{
    /// <param name="workload">NestorOS programs run by each VM (after <c>swap=vda</c>).</param>
    /// <param name="fullBytes">The configured size of the squeezed VMs.</param>
    /// <param name="smallBytes">What they are squeezed to, and the small VM's size.</param>
    /// <param name="kinds">The runs to make, in order.</param>
    /// <param name="swapDirectory">Where the host swap files go (removed after).</param>
    public static IReadOnlyList<SqueezeRow> Run(string workload, ulong fullBytes, ulong smallBytes, IEnumerable<SqueezeKind> kinds,
        string swapDirectory, long sliceInstructions = 50_000)
    {
        if (smallBytes >= fullBytes || smallBytes % 4096 != 0)
        {
            throw new Errors.BadInputException($"the small size ({Size.Format(smallBytes)}) must be a multiple of 4 KiB below the full size ({Size.Format(fullBytes)})",
                "Give e.g. --memory 32M --small 16M");
        }
        Once(SqueezeKind.Small, workload, fullBytes, smallBytes, swapDirectory, sliceInstructions); // warm-up: the JIT's first run is not measured
        return [.. kinds.Select(kind => Once(kind, workload, fullBytes, smallBytes, swapDirectory, sliceInstructions))];
    }

    private static SqueezeRow Once(SqueezeKind kind, string workload, ulong fullBytes, ulong smallBytes, string swapDirectory, long slice)
    {
        ulong configured = kind == SqueezeKind.Small ? smallBytes : fullBytes;
        long smallPages = (long)(smallBytes / 4096);
        var output = new MemoryStream();
        var sim = new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested };
        // The guest's swap disk: as large as the full size, in memory (a scratch disk: the bench measures paging, not the host's file system).
        var disk = new DiskConfig("swap", DiskInterface.Virtio) { Backend = new MemoryBlockBackend((long)(fullBytes / IBlockBackend.SectorSize)) };
        using var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Sim = sim,
            Kernel = BuiltIn.BuiltInGuests.Get("nestoros"),
            MemoryBytes = configured,
            CommandLine = $"swap=vda {workload}",
            SerialOutput = output,
            Disks = [disk],
            Balloon = kind is SqueezeKind.Balloon or SqueezeKind.BalloonAndSwap,
            BalloonTargetPages = kind is SqueezeKind.Balloon or SqueezeKind.BalloonAndSwap ? (uint)((fullBytes - smallBytes) / 4096) : 0,
            Timeout = TimeSpan.FromMinutes(30),
        });
        string? swapPath = null;
        HostSwapFile? file = null;
        HostSwap? swap = null;
        SwapQuantum? quantum = null;
        try
        {
            if (kind is SqueezeKind.SwapRandom or SqueezeKind.SwapClock or SqueezeKind.BalloonAndSwap)
            {
                swapPath = Path.Combine(swapDirectory, $"nestor-squeeze-{Environment.ProcessId}-{kind}.swap");
                file = new HostSwapFile(swapPath, fullBytes);
                swap = new HostSwap(file, kind == SqueezeKind.SwapClock ? SwapVictimPolicy.Clock : SwapVictimPolicy.Random)
                {
                    TargetResidentPages = kind == SqueezeKind.BalloonAndSwap ? smallPages * 3 / 4 : smallPages,
                };
                quantum = new SwapQuantum(vm, swap, slice);
            }
            using var engine = new SimEngine(sim) { Quantum = quantum };
            var wall = Stopwatch.StartNew();
            var run = vm.Run(engine);
            wall.Stop();
            vm.Serial.Flush();
            if (run.Outcome.Kind != VmOutcomeKind.DebugExit || run.Outcome.GuestStatus != 0)
            {
                throw new Errors.WorkloadFailedException($"the {kind} run did not finish: {run.Outcome.Message}",
                    "Check the workload with nestor run --technique hw --disk FILE --cmdline 'swap=vda ...'");
            }
            if (quantum?.Error is { } error)
            {
                throw new Errors.WorkloadFailedException($"host swapping stopped in the {kind} run: {error.Message}", error.Advice);
            }
            string serial = Encoding.UTF8.GetString(output.ToArray());
            var lines = serial.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal)).ToList();
            var guestSwap = lines.FirstOrDefault(l => l.StartsWith("RESULT swap ", StringComparison.Ordinal));
            var state = vm.Vcpus[0].State;
            // What the programs computed: their lines without the cycle counts and without the paging reports, which
            // differ by design between the runs.
            string results = Regex.Replace(string.Join("\n", lines.Where(l => !l.StartsWith("RESULT swap ", StringComparison.Ordinal) && !l.StartsWith("RESULT balloon", StringComparison.Ordinal))),
                @"(\w*cycles\w*|free_at_start)=\d+", "$1=*");
            return new SqueezeRow(kind, configured, swap?.TargetResidentPages, Devices.Virtio.Balloon.VirtioBalloon.Of(vm)?.InflatedPages ?? 0, state.InstructionsRetired + state.IdleCycles,
                swap?.PagesSwappedOut ?? 0, swap?.PagesSwappedIn ?? 0, swap?.DoublePaging ?? 0,
                Field(guestSwap, "pages_out"), Field(guestSwap, "pages_in"), wall.Elapsed, results);
        }
        finally
        {
            file?.Dispose();
            if (swapPath is not null && File.Exists(swapPath))
            {
                File.Delete(swapPath);
            }
        }
    }

    private static long Field(string? line, string key)
    {
        if (line is null)
        {
            return 0;
        }
        var m = Regex.Match(line, $@"\b{key}=(\d+)");
        return m.Success ? long.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
    }
}
