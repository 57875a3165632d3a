using Nestor.Host;

namespace Nestor.Hypervisor.Paging;

// Reclaiming a guest frame for the host (issue 15, ballooning): the guest gave the page up (virtio-balloon's inflateq,
// virtio 1.2 §5.5.6.1), so the VMM takes its host frame away and gives the memory behind it back to the host kernel,
// as ESX does with the pages a balloon driver pins (Waldspurger, OSDI 2002, §3.2).
public sealed partial class GuestPhysicalMap
{
    /// <summary>Guest pages taken away with <see cref="Reclaim(ulong)"/>.</summary>
    public long PagesReclaimed { get; private set; }

    /// <summary>Takes the guest page at <paramref name="guestPhysical"/> away from the guest and discards its memory:
    /// the nested or shadow entries mapping it go (with their shootdown), the host frame loses this guest frame's
    /// reference with <see cref="Memory.HostFramePool.Release"/>'s <c>discardBacking</c> (so an adopted frame's page of
    /// guest RAM is given back with <c>madvise(MADV_DONTNEED)</c> when no one else maps it), and the page's home is
    /// discarded too (a shared frame's home holds a copy of its bytes; a page never touched may hold the loader's).
    /// The guest's next access faults into the VMM, which maps the home again: a zero page, which is what a deflated
    /// balloon page may hold (§5.5.6.1: the driver must not assume the contents survive).</summary>
    /// <returns>Whether the page had a host frame.</returns>
    /// <exception cref="ArgumentOutOfRangeException">The page is not guest RAM.</exception>
    internal bool Reclaim(ulong guestPhysical)
    {
        if (!IsRam(guestPhysical))
        {
            throw new ArgumentOutOfRangeException(nameof(guestPhysical), $"guest-physical 0x{guestPhysical:x} is not RAM");
        }
        ulong page = guestPhysical & ~0xFFFUL;
        ulong frame = page >> FrameShift;
        bool mapped = TryHostPhysical(page, out ulong host);
        if (mapped)
        {
            hostFrames[frame] = 0;
            TouchedPages--;
            BackingChanged(frame);
            pool.RemoveMapping(host & ~0xFFFUL, this, frame, discardBacking: true);
        }
        if (swapSlots is not null && swapSlots[frame] != 0)
        {
            // Given up while in the host swap file: its slot goes, unread (the page's bytes do not matter any more).
            swapFile!.Free(swapSlots[frame] - 1);
            swapSlots[frame] = 0;
            SwappedOutPages--;
        }
        HomeBack(frame); // its home is discarded: the page reads as zeros, shared or not
        MemoryCalls.Discard(Home(page), 0x1000);
        PagesReclaimed++;
        return mapped;
    }

    /// <summary>The typed form of <see cref="Reclaim(ulong)"/>.</summary>
    public bool Reclaim(Machine.Addresses.GuestPhysical address) => Reclaim(address.Value);
}
