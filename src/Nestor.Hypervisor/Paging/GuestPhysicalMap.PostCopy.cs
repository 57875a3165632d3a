using System.Runtime.CompilerServices;
using Nestor.Hypervisor.Memory;

namespace Nestor.Hypervisor.Paging;

/// <summary>Guest pages that are still at the source of a post-copy migration (Migration/PostCopyDestination): the
/// destination runs the VM before they arrive, and a touch of one asks the source for it and waits (Hines and Gopalan,
/// "Post-Copy Based Live Virtual Machine Migration Using Adaptive Pre-Paging and Dynamic Self-Ballooning", VEE'09,
/// §3: "demand paging": the faulting page is fetched over the network).</summary>
internal interface IRemotePages
{
    /// <summary>Whether guest frame <paramref name="guestFrame"/> has not arrived yet (its home holds zeros).</summary>
    bool IsAwaited(ulong guestFrame);

    /// <summary>Pages not arrived yet.</summary>
    long Awaited { get; }

    /// <summary>Asks the source for guest frame <paramref name="guestFrame"/> and waits until its bytes are in its
    /// home.</summary>
    /// <exception cref="PostCopySourceLostException">The source is gone: the page will never arrive.</exception>
    void Fetch(ulong guestFrame);
}

/// <summary>The source of a post-copy migration is gone while pages of the VM were still there: the VM cannot run on
/// (its memory exists only in halves, and one half is lost). An <see cref="InvalidOperationException"/>, so that the
/// VMM's exit handler stops the run with this message (<see cref="Techniques.VirtualMachineMonitor"/>).</summary>
public sealed class PostCopySourceLostException(string message) : InvalidOperationException(message);

// The P2M's side of post-copy: a page still at the source is an away page whose source is the network, as a
// host-swapped page's is the swap file (Memory/IGuestPageSource). It has no host frame, so the guest's first access
// faults into the VMM (an EPT violation, or a shadow fault), whose Touch fetches it before adopting its home; the VMM's
// own accesses (devices' DMA, GuestMemory reads and writes, shadow paging's software walks) fetch it the same way. A
// map built while a VM's pages are awaited (each run under a VMM gets a fresh one) takes them from the VM's memory.
public sealed partial class GuestPhysicalMap
{
    private static readonly ConditionalWeakTable<GuestMemory, IRemotePages> RemoteByMemory = [];
    private IRemotePages? remote;

    /// <summary>From now on the maps of <paramref name="memory"/>'s VM fetch the pages <paramref name="pages"/>
    /// awaits before any access to them.</summary>
    internal static void AwaitPages(GuestMemory memory, IRemotePages pages) => RemoteByMemory.AddOrUpdate(memory, pages);

    /// <summary>Whether <paramref name="memory"/>'s VM awaits pages of a post-copy migration now.</summary>
    internal static bool AwaitsPages(GuestMemory memory) => RemoteByMemory.TryGetValue(memory, out var pages) && pages.Awaited > 0;

    // Called by the constructor: a VM that awaits pages makes this map the page source of its memory.
    private void AttachRemote()
    {
        if (RemoteByMemory.TryGetValue(guest, out var pages))
        {
            remote = pages;
            guest.PageSource = this;
        }
    }

    private bool RemoteAwaiting => remote is { Awaited: > 0 };

    /// <summary>Whether this map was made while its VM awaited post-copy pages (a page it restored without a frame was
    /// one of them then, though it may have arrived since).</summary>
    internal bool ReceivesPostCopy => remote is not null;

    /// <summary>Whether the page at <paramref name="guestPhysical"/> is still at the source of a post-copy migration.</summary>
    internal bool IsAwaitedRemote(ulong guestPhysical) => remote is not null && remote.IsAwaited(guestPhysical >> FrameShift);

    // A touch of a page that has not arrived: fetch it (the demand fault), then the caller maps its home as for a first touch.
    private void FetchIfRemote(ulong guestFrame)
    {
        if (remote is not null && remote.IsAwaited(guestFrame))
        {
            remote.Fetch(guestFrame);
        }
    }

    private void FetchRangeIfRemote(ulong address, int length)
    {
        if (remote is null || length <= 0)
        {
            return;
        }
        for (ulong page = address & ~0xFFFUL; page < address + (ulong)length; page += 0x1000)
        {
            FetchIfRemote(page >> FrameShift);
        }
    }
}
