using Nestor.Hypervisor.Paging;

namespace Nestor.Hypervisor.Memory.Swapping;

/// <summary>How the host picks the guest pages it swaps out.</summary>
public enum SwapVictimPolicy
{
    /// <summary>Uniformly random private pages, as ESX does: the VMM knows nothing of the guest's own use of its pages,
    /// and a random choice cannot fall into the guest's own replacement pattern (Waldspurger, OSDI 2002, §3.3).</summary>
    Random,
    /// <summary>A clock (second chance) over the guest frames, its reference bits sampled by dropping nested entries
    /// (<see cref="GuestPhysicalMap"/>'s clock bits): an approximation of least recently used.</summary>
    Clock,
}

/// <summary>Host swapping for one VM (issue 15): keeps the VM's resident pages (guest pages with a host frame) at or
/// below <see cref="TargetResidentPages"/> by paging the excess out to a <see cref="HostSwapFile"/>; a paged-out page
/// comes back on the guest's next access to it, through the EPT violation that access causes
/// (<see cref="GuestPhysicalMap"/>'s <c>Touch</c>). Shared (copy-on-write) frames are not swapped. Call
/// <see cref="Enforce"/> between the VM's slices (<see cref="SwapQuantum"/>), never while it runs.</summary>
public sealed class HostSwap
{
    private readonly HostSwapFile file;
    private readonly Random random;
    private GuestPhysicalMap? map;
    private ulong hand;

    /// <param name="file">Where the pages go.</param>
    /// <param name="policy">How victims are picked.</param>
    /// <param name="seed">Seed of the random victim choice (a run is reproducible).</param>
    public HostSwap(HostSwapFile file, SwapVictimPolicy policy, int seed = 15)
    {
        this.file = file;
        Policy = policy;
        random = new Random(seed);
    }

    /// <summary>How victims are picked.</summary>
    public SwapVictimPolicy Policy { get; }

    /// <summary>The most guest pages the VM may have resident after <see cref="Enforce"/>.</summary>
    public long TargetResidentPages { get; set; } = long.MaxValue;

    /// <summary>The map being managed (the VM's current run), or null before the first <see cref="Attach"/>.</summary>
    public GuestPhysicalMap? Map => map;

    /// <summary>Clock reference bits found set and cleared (second chances given).</summary>
    public long SecondChances { get; private set; }

    /// <summary>The most pages found resident when <see cref="Enforce"/> was called.</summary>
    public long PeakResidentPages { get; private set; }

    /// <summary>Pages paged out by this swapper, over all the maps it managed.</summary>
    public long PagesSwappedOut => previousOut + (map?.PagesSwappedOut ?? 0);

    /// <summary>Pages read back, over all the maps it managed.</summary>
    public long PagesSwappedIn => previousIn + (map?.PagesSwappedIn ?? 0);

    /// <summary>Swap-ins caused by device DMA reads: the double-paging count (<see cref="GuestPhysicalMap.DeviceSwapIns"/>).</summary>
    public long DoublePaging => previousDevice + (map?.DeviceSwapIns ?? 0);

    private long previousOut, previousIn, previousDevice;

    /// <summary>Manages <paramref name="physicalMap"/> from now on (a VM's run gets a new map each time).</summary>
    public void Attach(GuestPhysicalMap physicalMap)
    {
        if (physicalMap == map)
        {
            return;
        }
        if (map is not null)
        {
            (previousOut, previousIn, previousDevice) = (PagesSwappedOut, PagesSwappedIn, DoublePaging);
        }
        physicalMap.AttachSwap(file);
        map = physicalMap;
        hand = 0;
    }

    /// <summary>Pages out until the VM has at most <see cref="TargetResidentPages"/> resident (or no private page is
    /// left to page out); how many it paged out.</summary>
    /// <exception cref="HostSwapException">The swap file is full or failed; the pages not yet paged out stay resident.</exception>
    public int Enforce()
    {
        if (map is null || map.IsDisposed)
        {
            return 0;
        }
        PeakResidentPages = Math.Max(PeakResidentPages, map.TouchedPages);
        int done = 0;
        while (map.TouchedPages > TargetResidentPages)
        {
            if (NextVictim() is not { } victim || !map.SwapOut(victim))
            {
                break;
            }
            done++;
        }
        return done;
    }

    private ulong? NextVictim() => Policy == SwapVictimPolicy.Random ? RandomVictim() : ClockVictim();

    private ulong? RandomVictim()
    {
        ulong frames = map!.FrameCount;
        for (int attempt = 0; attempt < 64; attempt++)
        {
            ulong frame = (ulong)random.NextInt64((long)frames);
            if (map.IsPrivate(frame, out _))
            {
                return frame;
            }
        }
        // Few private pages left among many frames: the first one from a random place on.
        ulong start = (ulong)random.NextInt64((long)frames);
        for (ulong i = 0; i < frames; i++)
        {
            ulong frame = (start + i) % frames;
            if (map.IsPrivate(frame, out _))
            {
                return frame;
            }
        }
        return null;
    }

    private ulong? ClockVictim()
    {
        ulong frames = map!.FrameCount;
        // Two turns of the hand: the first may only clear reference bits.
        for (ulong step = 0; step < 2 * frames; step++)
        {
            ulong frame = hand;
            hand = (hand + 1) % frames;
            if (!map.IsPrivate(frame, out _))
            {
                continue;
            }
            if (map.TestAndClearReferenced(frame))
            {
                SecondChances++;
                continue;
            }
            return frame;
        }
        return null;
    }
}

/// <summary>Runs a VM's host swapping between its slices: before each slice it enforces the swapper's target on the
/// VM's current map (<see cref="Engines.SimEngine.Quantum"/>), and gives the slice <see cref="SliceInstructions"/>.
/// A swap-file error stops the swapping (the VM goes on with its pages resident, nothing lost) and is kept in
/// <see cref="Error"/>.</summary>
public sealed class SwapQuantum(Vm vm, HostSwap swap, long sliceInstructions = 100_000) : Scheduling.IVcpuQuantum
{
    /// <summary>Instructions per slice: how often the target is enforced.</summary>
    public long SliceInstructions { get; } = sliceInstructions > 0 ? sliceInstructions
        : throw new ArgumentOutOfRangeException(nameof(sliceInstructions), "a slice must retire at least one instruction");

    /// <summary>The swap-file error that stopped the swapping, or null.</summary>
    public HostSwapException? Error { get; private set; }

    /// <summary>Slices run.</summary>
    public long Slices { get; private set; }

    public long NextBudget(long clock, long instructionsRetired)
    {
        Slices++;
        if (Error is null && vm.Host.PhysicalMapOf(vm) is { } map)
        {
            try
            {
                swap.Attach(map);
                swap.Enforce();
            }
            catch (HostSwapException e)
            {
                Error = e;
            }
        }
        return SliceInstructions;
    }
}
