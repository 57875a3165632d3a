using System.Globalization;
using Nestor.Hypervisor.Devices.Virtio.Balloon;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Memory.Sharing;
using Nestor.Hypervisor.Memory.Swapping;
using Nestor.Hypervisor.Paging;

namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>Memory overcommitment on a host of many VMs (issue 15; Waldspurger, "Memory Resource Management in VMware
/// ESX Server", OSDI'02): run by <see cref="VirtualMachineHost"/> after every round, while every vCPU is stopped (a
/// merge, a balloon target or a swap-out changes P2Ms, which no vCPU may be using). Each round it
/// <list type="number">
/// <item>advances the page-sharing scanner by its rate (§4);</item>
/// <item>measures free host memory: host memory (<see cref="HostSpec.MemoryBytes"/>) less the host frames held, guest
/// frames and the VMM's table frames of the one frame pool (a VM run natively maps its RAM directly and holds none);</item>
/// <item>moves the free-memory state (high, soft, hard, low, with hysteresis: <see cref="ReclamationStateMachine"/>,
/// §6.1);</item>
/// <item>asks the allocation policy (<see cref="HostSpec.AllocationPolicy"/>: proportional share, or the idle memory
/// tax of §5.3) for each VM's target, dividing what would leave the high threshold free (§6.1: "the system computes
/// target allocations for VMs to drive the aggregate amount of free space above the high threshold");</item>
/// <item>reclaims by the state: soft balloons the VMs above their targets (and host-swaps those without a balloon),
/// hard also host-swaps the VMs still above target down to it, low also blocks them until memory is back; in the high
/// state balloons only deflate.</item>
/// </list>
/// A VM's balloon target is its max less its target (what the guest may keep), never below what the operator set by
/// hand; a VM at or below its target never has its balloon inflated, only deflated, so it keeps room to grow.</summary>
public sealed class HostMemoryManager : IDisposable
{
    private const long PageBytes = 4096;
    private const int SharedCountEvery = 16; // rounds between the per-VM counts of shared pages (a walk of each P2M)
    private readonly HostSpec spec;
    private readonly OvercommitOptions options;
    private readonly List<HostedVm> live = [];
    private readonly List<HostedVm> waiting = [];
    private VmMemoryDemand[] demands = [];
    private long[] targets = [];
    private PageSharingScanner? scanner;
    private long rounds;

    /// <param name="spec">The host: its memory, its overcommitment switches and allocation policy.</param>
    public HostMemoryManager(HostSpec spec)
    {
        this.spec = spec;
        options = spec.Overcommit;
        options.Thresholds.Validate("the reclamation thresholds");
        States = new ReclamationStateMachine(options.Thresholds);
        HostPages = (long)(spec.MemoryBytes / PageBytes);
    }

    /// <summary>Host memory in pages.</summary>
    public long HostPages { get; }

    /// <summary>The free-memory state and its books.</summary>
    public ReclamationStateMachine States { get; }

    /// <summary>The switches.</summary>
    public OvercommitOptions Options => options;

    /// <summary>The page-sharing scanner, once sharing ran (null when sharing is off).</summary>
    public PageSharingScanner? Scanner => scanner;

    /// <summary>Host frames held at the end of the last round (guest and table frames).</summary>
    public long HeldPages { get; private set; }

    /// <summary>The most frames held at the end of a round.</summary>
    public long PeakHeldPages { get; private set; }

    /// <summary>Free host memory at the end of the last round, in pages (negative: more held than the host has, as
    /// when reclamation is off).</summary>
    public long FreePages => HostPages - HeldPages;

    /// <summary>Free memory in percent of host memory.</summary>
    public double FreePercent => HostPages == 0 ? 0 : 100.0 * FreePages / HostPages;

    /// <summary>The lowest free memory seen at the end of a round, in pages.</summary>
    public long LowestFreePages { get; private set; } = long.MaxValue;

    /// <summary>Guest pages mapping a shared frame beyond one per frame (Σ held − guest frames): what sharing saves now.</summary>
    public long SharingSavedPages { get; private set; }

    /// <summary>The most that sharing saved at the end of a round.</summary>
    public long PeakSharingSavedPages { get; private set; }

    /// <summary>Balloon targets changed.</summary>
    public long BalloonTargetsSet { get; private set; }

    /// <summary>Rounds in which some VM was blocked.</summary>
    public long BlockingRounds { get; private set; }

    /// <summary>How active each VM's memory is (0…1) for the policy, e.g. from an active-memory sampler; null: all
    /// of it (1), which proportional share ignores anyway.</summary>
    public Func<HostedVm, double>? ActiveFraction { get; set; }

    /// <summary>One round ended: scan, measure, move the state, set targets and reclaim. Called on the dispatch thread
    /// with every vCPU stopped. Returns the VMs to block (the low state) in <paramref name="block"/>.</summary>
    internal void Run(Host host, IReadOnlyList<HostedVm> vms, long roundCycles, List<HostedVm> block)
    {
        rounds++;
        block.Clear();
        if (options.Sharing is { } sharing)
        {
            scanner ??= new PageSharingScanner(host, new ScanRates(0, null, sharing.Seed));
            scanner.Step(sharing.PagesPerRound, sharing.PagesPerVmPerRound);
        }
        live.Clear();
        waiting.Clear();
        long touched = 0, bootReserve = 0;
        foreach (var vm in vms)
        {
            if (vm.Vm is not { } machine || vm.State is not (HostedVmState.Running or HostedVmState.Paused) || vm.StopCause is not null ||
                vm.Quantum.Finished)
            {
                vm.Memory.Blocked = false;
                if (options.Reclaim && vm.Quantum.Finished && vm.Engine is { } engine)
                {
                    // Its run is over (its thread reported the end): its host frames and tables go back to the host now,
                    // as a powered-off VM's memory does, not when the host ends.
                    engine.Dispose();
                }
                continue;
            }
            var map = host.PhysicalMapOf(machine);
            if (vm.Vcpu.RunCycles == 0 && (map is null || map.TouchedPages == 0) && vm.Spec.Sim.Technique != Techniques.Technique.Native)
            {
                waiting.Add(vm); // not booted yet (its P2M, made as its thread starts, has no frame): the boot gate decides
                continue;
            }
            if (map is null)
            {
                // Run natively: its RAM is mapped directly, no host frame to count or swap; only the operator's
                // balloon target applies (the balloon then discards with madvise).
                if (vm.Balloon is { } own)
                {
                    vm.Memory.BalloonPages = own.InflatedPages;
                    if (vm.Memory.OperatorBalloonPages >= 0)
                    {
                        ApplyBalloon(vm, vm.Memory.OperatorBalloonPages);
                    }
                }
                continue;
            }
            live.Add(vm);
            if (Booting(vm))
            {
                bootReserve += Math.Max(0, (long)(vm.Spec.Memory.MaxBytes / PageBytes) - map.TouchedPages);
            }
            var account = vm.Memory;
            account.HeldPages = map.TouchedPages;
            account.PeakHeldPages = Math.Max(account.PeakHeldPages, map.TouchedPages);
            account.SwappedPages = map.SwappedOutPages;
            if (account.Swap is { } swap)
            {
                account.PagesSwappedOut = swap.PagesSwappedOut;
                account.PagesSwappedIn = swap.PagesSwappedIn;
                account.DoublePaging = swap.DoublePaging;
            }
            if (vm.Balloon is { } balloon)
            {
                account.BalloonPages = balloon.InflatedPages;
            }
            if (account.Blocked)
            {
                account.BlockedCycles += roundCycles;
            }
            if (rounds % SharedCountEvery == 1 && options.Sharing is not null)
            {
                account.SharedPages = CountShared(map);
            }
            touched += map.TouchedPages;
        }
        var pool = host.FramePool;
        HeldPages = pool.GuestFrames + pool.TableFrames;
        PeakHeldPages = Math.Max(PeakHeldPages, HeldPages);
        LowestFreePages = Math.Min(LowestFreePages, FreePages);
        SharingSavedPages = Math.Max(0, touched - pool.GuestFrames);
        PeakSharingSavedPages = Math.Max(PeakSharingSavedPages, SharingSavedPages);
        var state = States.Update(FreePercent, roundCycles);
        if (!options.Reclaim)
        {
            foreach (var vm in live)
            {
                ApplyBalloon(vm, vm.Memory.OperatorBalloonPages < 0 ? vm.Memory.BalloonTargetPages : vm.Memory.OperatorBalloonPages);
            }
            return;
        }
        Allocate(pool);
        // VMs waiting to boot want memory too: while there are any, a high host reclaims as a soft one does (by the
        // balloons), so that the running VMs make room for them.
        var pressure = waiting.Count > 0 && state == MemoryState.High ? MemoryState.Soft : state;
        for (int i = 0; i < live.Count; i++)
        {
            Reclaim(live[i], targets[i], pressure, block);
        }
        // The boot gate: a guest may touch all its RAM as it boots (NestorOS links every free frame into its free
        // list), faster than the balloon can answer, so a VM boots only when its max fits in what is free above the
        // high threshold, less what the VMs still booting may yet touch (the rest of their max) and the maxes of the
        // VMs let boot before it in this round.
        long room = FreePages - (long)(HostPages * options.Thresholds.High / 100) - bootReserve;
        foreach (var vm in waiting)
        {
            long max = (long)(vm.Spec.Memory.MaxBytes / PageBytes);
            if (max <= room)
            {
                room -= max; // not listed: the host unblocks it if the gate held it
                continue;
            }
            block.Add(vm);
        }
        if (block.Count > 0 && block.Count >= live.Count(v => v.State == HostedVmState.Running) + waiting.Count)
        {
            // Never block every VM: the one closest to its target goes on, so that rounds (and this manager) still run
            // and memory comes back as VMs finish.
            var least = block.MinBy(v => v.Memory.HeldPages - v.Memory.TargetPages)!;
            block.Remove(least);
        }
        if (block.Count > 0)
        {
            BlockingRounds++;
        }
    }

    /// <summary>The balloons' first targets, at power-on: each VM's max less the target the policy gives it when every
    /// VM demands its max (what the guest's driver inflates to as it boots, before the first round); none when
    /// reclamation or balloons are off, or when the maxes fit.</summary>
    internal Dictionary<HostedVm, long> InitialBalloons(IReadOnlyList<HostedVm> admitted)
    {
        var result = new Dictionary<HostedVm, long>();
        if (!options.Reclaim || !options.Balloon || admitted.Count == 0)
        {
            return result;
        }
        var first = new VmMemoryDemand[admitted.Count];
        var firstTargets = new long[admitted.Count];
        for (int i = 0; i < admitted.Count; i++)
        {
            var spec = admitted[i].Spec.Memory;
            long max = (long)(spec.MaxBytes / PageBytes);
            first[i] = new VmMemoryDemand(admitted[i].Name, (long)(spec.MinBytes / PageBytes), max, spec.Shares, max, 1.0);
        }
        spec.AllocationPolicy.Allocate(first, (long)(HostPages * (1 - options.Thresholds.High / 100)), firstTargets);
        for (int i = 0; i < admitted.Count; i++)
        {
            long wanted = Math.Max(0, first[i].MaxPages - firstTargets[i]);
            result[admitted[i]] = wanted;
            admitted[i].Memory.BalloonTargetPages = wanted;
            admitted[i].Memory.TargetPages = firstTargets[i];
        }
        return result;
    }

    /// <summary>Virtual cycles a VM without a balloon counts as booting (a stated allowance: NestorOS boots in about
    /// a million instructions).</summary>
    public const long BootCycles = 2_000_000;

    // Still booting: its balloon's driver has not started (NestorOS starts it after its frame allocator, which is what
    // touches every frame), or, without a balloon, it has run less than BootCycles.
    private static bool Booting(HostedVm vm) => vm.Balloon is { } balloon ? balloon.Negotiated == 0 : vm.Vcpu.RunCycles < BootCycles;

    private void Allocate(HostFramePool pool)
    {
        int count = live.Count + waiting.Count;
        if (demands.Length < count)
        {
            demands = new VmMemoryDemand[count * 2];
            targets = new long[count * 2];
        }
        for (int i = 0; i < count; i++)
        {
            // The running VMs first (their targets are targets[0..live.Count)), then those waiting to boot, which
            // demand their max.
            var vm = i < live.Count ? live[i] : waiting[i - live.Count];
            long max = (long)(vm.Spec.Memory.MaxBytes / PageBytes);
            double active = ActiveFraction?.Invoke(vm) ?? 1.0;
            vm.Memory.ActiveFraction = Math.Clamp(active, 0, 1);
            demands[i] = new VmMemoryDemand(vm.Name, (long)(vm.Spec.Memory.MinBytes / PageBytes), max,
                vm.Spec.Memory.Shares, i < live.Count ? vm.Memory.HeldPages : max, Math.Clamp(active, 0, 1));
        }
        // What the VMs may hold so that the high threshold stays free: host memory less the threshold and the VMM's
        // tables, plus what sharing saves (held counts a shared frame once per guest page mapping it).
        long available = (long)(HostPages * (1 - options.Thresholds.High / 100)) - pool.TableFrames + SharingSavedPages;
        spec.AllocationPolicy.Allocate(demands.AsSpan(0, count), Math.Max(0, available), targets.AsSpan(0, count));
    }

    private void Reclaim(HostedVm vm, long target, MemoryState state, List<HostedVm> block)
    {
        var account = vm.Memory;
        long max = (long)(vm.Spec.Memory.MaxBytes / PageBytes);
        target = Math.Clamp(target, 0, max);
        account.TargetPages = target;
        bool above = account.HeldPages > target;
        var balloon = vm.Balloon;
        if (balloon is not null && !Booting(vm)) // while it boots, its first target (set at power-on) stands
        {
            long wanted = max - target;
            if (state == MemoryState.High || !above)
            {
                wanted = Math.Min(wanted, account.BalloonTargetPages); // deflate only
            }
            ApplyBalloon(vm, Math.Max(wanted, account.OperatorBalloonPages));
        }
        bool swapNow = above && (state >= MemoryState.Hard || (state == MemoryState.Soft && (balloon is null || balloon.Negotiated == 0)));
        if (swapNow && Swapper(vm) is { } swap)
        {
            swap.TargetResidentPages = target;
            try
            {
                swap.Enforce();
            }
            catch (HostSwapException e)
            {
                account.SwapError = e.Message;
                account.Swappable = false;
            }
            var map = swap.Map!;
            account.HeldPages = map.TouchedPages;
            account.SwappedPages = map.SwappedOutPages;
            account.PagesSwappedOut = swap.PagesSwappedOut;
            above = account.HeldPages > target;
        }
        if (state == MemoryState.Low && above && vm.State == HostedVmState.Running)
        {
            block.Add(vm);
        }
    }

    private void ApplyBalloon(HostedVm vm, long pages)
    {
        if (vm.Balloon is not { } balloon)
        {
            return;
        }
        long ram = (long)(vm.Spec.Memory.MaxBytes / PageBytes);
        uint clamped = (uint)Math.Clamp(pages, 0, ram);
        if (clamped != balloon.Target)
        {
            balloon.SetTarget(clamped);
            BalloonTargetsSet++;
        }
        vm.Memory.BalloonTargetPages = clamped;
    }

    // The VM's host swapper, made on first need: one swap file per VM of its max − min (ESX's .vswp, §6.1), under
    // nested paging only (GuestPhysicalMap.AttachSwap says why).
    private HostSwap? Swapper(HostedVm vm)
    {
        var account = vm.Memory;
        if (options.HostSwap is not { } swapOptions || !account.Swappable)
        {
            return null;
        }
        if (account.Swap is { } existing)
        {
            return existing.Map is { IsDisposed: false } ? existing : null;
        }
        ulong capacity = vm.Spec.Memory.MaxBytes - vm.Spec.Memory.MinBytes;
        if (capacity < (ulong)PageBytes || vm.Vm is not { } machine || machine.Host.PhysicalMapOf(machine) is not { } map)
        {
            account.Swappable = false;
            return null;
        }
        string directory = swapOptions.Directory ?? Path.GetTempPath();
        string path = Path.Combine(directory, string.Create(CultureInfo.InvariantCulture, $"nestor-{Environment.ProcessId}-{vm.Name}.vswp"));
        HostSwapFile file;
        try
        {
            file = new HostSwapFile(path, capacity);
        }
        catch (Errors.NestorException e)
        {
            account.SwapError = e.Message;
            account.Swappable = false;
            return null;
        }
        var swap = new HostSwap(file, swapOptions.Policy, seed: 15 + vm.Vcpu.Order);
        try
        {
            swap.Attach(map);
        }
        catch (InvalidOperationException e)
        {
            account.SwapError = e.Message;
            account.Swappable = false;
            file.Dispose();
            return null;
        }
        account.SwapFile = file;
        account.Swap = swap;
        return swap;
    }

    private static long CountShared(GuestPhysicalMap map)
    {
        long shared = 0;
        for (ulong frame = 0; frame < map.FrameCount; frame++)
        {
            if (map.TryHostPhysical(frame << 12, out ulong host) && map.Pool.IsWriteProtected(host))
            {
                shared++;
            }
        }
        return shared;
    }

    /// <summary>The host's memory counters, for the control API and the report.</summary>
    public IReadOnlyList<EngineCounter> Counters()
    {
        var list = new List<EngineCounter>
        {
            new("memory_state", (ulong)States.State, "0 high, 1 soft, 2 hard, 3 low"),
            new("memory_free", (ulong)Math.Max(0, FreePages) * PageBytes, "bytes"),
            new("memory_held", (ulong)HeldPages * PageBytes, "bytes"),
            new("memory_held_peak", (ulong)PeakHeldPages * PageBytes, "bytes"),
            new("memory_transitions", (ulong)States.Transitions, ""),
            new("sharing_saved", (ulong)SharingSavedPages * PageBytes, "bytes"),
            new("balloon_targets_set", (ulong)BalloonTargetsSet, ""),
            new("blocking_rounds", (ulong)BlockingRounds, ""),
        };
        foreach (var state in Enum.GetValues<MemoryState>())
        {
            string name = state.ToString().ToLowerInvariant();
            list.Add(new($"state_{name}_time", (ulong)(States.CyclesIn(state) / (spec.Clock.CyclesPerMillisecond / 1000.0)), "us"));
            list.Add(new($"state_{name}_entries", (ulong)States.Entries(state), ""));
        }
        return list;
    }

    /// <summary>Gives back the scanner's zero frame and removes the swap files (after the VMs are gone).</summary>
    public void Dispose()
    {
        scanner?.Dispose();
        scanner = null;
    }
}
