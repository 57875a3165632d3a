using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Paging;

/// <summary>The VMM's map of one VM's guest-physical memory onto host-physical frames (what Xen calls the P2M): a
/// guest page gets a host frame the first time the guest touches it, drawn from the <see cref="HostFramePool"/> and
/// backed by the VM's <see cref="GuestMemory"/>. Both nested and shadow paging translate through it.</summary>
public sealed class GuestPhysicalMap
{
    private const int FrameShift = 12;
    private const int LargeFrames = 512;
    private readonly GuestMemory guest;
    private readonly HostFramePool pool;
    private readonly ulong[] hostFrames; // by guest frame: host-physical address, 0 = not yet touched

    public GuestPhysicalMap(GuestMemory guest, HostFramePool pool)
    {
        this.guest = guest;
        this.pool = pool;
        ulong top = guest.Regions.Max(r => r.Region.End.Value);
        hostFrames = new ulong[top >> FrameShift];
    }

    /// <summary>Guest pages that have a host frame.</summary>
    public long TouchedPages { get; private set; }

    /// <summary>Whether <paramref name="guestPhysical"/> is guest RAM (else it is a device, or nothing).</summary>
    public bool IsRam(ulong guestPhysical) => guest.IsRam(new GuestPhysical(guestPhysical & ~0xFFFUL), 0x1000);

    /// <summary>The host-physical address of <paramref name="guestPhysical"/> if its page has a host frame.</summary>
    public bool TryHostPhysical(ulong guestPhysical, out ulong hostPhysical)
    {
        ulong frame = guestPhysical >> FrameShift;
        hostPhysical = frame < (ulong)hostFrames.Length ? hostFrames[frame] : 0;
        if (hostPhysical == 0)
        {
            return false;
        }
        hostPhysical |= guestPhysical & 0xFFF;
        return true;
    }

    /// <summary>The host-physical address of guest RAM at <paramref name="guestPhysical"/>, giving its page a host frame
    /// on first touch.</summary>
    public ulong Touch(ulong guestPhysical)
    {
        if (TryHostPhysical(guestPhysical, out ulong host))
        {
            return host;
        }
        ulong page = guestPhysical & ~0xFFFUL;
        host = pool.Adopt(Backing(page), 1, 1);
        hostFrames[page >> FrameShift] = host;
        TouchedPages++;
        return host | (guestPhysical & 0xFFF);
    }

    /// <summary>Gives the whole 2 MiB guest page around <paramref name="guestPhysical"/> a 2 MiB-aligned run of host
    /// frames, so that one large nested entry can map it. False when that cannot be done: part of it is not RAM, or
    /// some page of it already has a frame of its own.</summary>
    public bool TouchLarge(ulong guestPhysical, out ulong hostLarge)
    {
        hostLarge = 0;
        ulong first = guestPhysical & ~0x1F_FFFFUL;
        if (!guest.IsRam(new GuestPhysical(first), LargeFrames * 0x1000UL))
        {
            return false;
        }
        ulong frame = first >> FrameShift;
        for (int i = 0; i < LargeFrames; i++)
        {
            if (hostFrames[frame + (ulong)i] != 0)
            {
                return false;
            }
        }
        hostLarge = pool.Adopt(Backing(first), LargeFrames, LargeFrames);
        for (int i = 0; i < LargeFrames; i++)
        {
            hostFrames[frame + (ulong)i] = hostLarge + (ulong)i * 0x1000;
        }
        TouchedPages += LargeFrames;
        return true;
    }

    /// <summary>The host memory behind a guest page (a region's backing is contiguous, so a run of pages is too).</summary>
    private unsafe nint Backing(ulong guestPage)
    {
        fixed (byte* p = guest.Span(new GuestPhysical(guestPage), 1))
        {
            return (nint)p;
        }
    }
}
