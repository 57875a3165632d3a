using Nestor.Hypervisor.Memory.Swapping;

namespace Nestor.Hypervisor.Hosting;

/// <summary>What the host's memory manager (<see cref="Memory.Reclamation.HostMemoryManager"/>) knows and decided
/// about one VM, as of the last round: written on the dispatch thread between rounds, read by the report, the
/// control API and <c>nestor host top</c> from any thread (each field is one 64-bit value).</summary>
public sealed class HostedVmMemory
{
    /// <summary>Guest pages with a host frame (shared ones included).</summary>
    public long HeldPages { get; internal set; }

    /// <summary>The active fraction f the allocation policy was last given for it (1 when not sampled: only the idle
    /// memory tax samples, Waldspurger OSDI'02 §5.3).</summary>
    public double ActiveFraction { get; internal set; } = 1;

    /// <summary>The most it held at the end of a round.</summary>
    public long PeakHeldPages { get; internal set; }

    /// <summary>The allocation policy's target, in pages (its max until the first round with reclamation on).</summary>
    public long TargetPages { get; internal set; } = -1;

    /// <summary>The balloon target the host set last (pages the guest is asked to give up).</summary>
    public long BalloonTargetPages { get; internal set; }

    /// <summary>A balloon target the operator set by hand (<c>nestor host ctl balloon</c>), or -1: the host's
    /// own target is never below it.</summary>
    public long OperatorBalloonPages { get; internal set; } = -1;

    /// <summary>Pages in its balloon now, as the device counted the PFNs.</summary>
    public long BalloonPages { get; internal set; }

    /// <summary>Its pages in the host swap file now.</summary>
    public long SwappedPages { get; internal set; }

    /// <summary>Pages swapped out by the host so far.</summary>
    public long PagesSwappedOut { get; internal set; }

    /// <summary>Pages swapped back in so far.</summary>
    public long PagesSwappedIn { get; internal set; }

    /// <summary>Swap-ins a device's DMA read caused: double paging (docs/overcommit.md).</summary>
    public long DoublePaging { get; internal set; }

    /// <summary>Its guest pages mapping a shared (write-protected) host frame, the zero frame among them (counted
    /// every few rounds).</summary>
    public long SharedPages { get; internal set; }

    /// <summary>Whether the low state blocks it now (above its target while memory is short).</summary>
    public bool Blocked { get; internal set; }

    /// <summary>Virtual time it spent blocked, in cycles.</summary>
    public long BlockedCycles { get; internal set; }

    /// <summary>Times it was blocked.</summary>
    public long Blocks { get; internal set; }

    /// <summary>Why host swapping stopped for it (a full or failing swap file), or null.</summary>
    public string? SwapError { get; internal set; }

    /// <summary>Its host swapper once attached (nested paging, and room in swap: max &gt; min).</summary>
    internal HostSwap? Swap { get; set; }

    internal HostSwapFile? SwapFile { get; set; }

    /// <summary>False once it is known it cannot be host-swapped (shadow paging, no P2M).</summary>
    internal bool Swappable { get; set; } = true;
}
