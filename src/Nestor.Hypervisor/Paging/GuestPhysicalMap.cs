using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Paging;

/// <summary>The VMM's map of one VM's guest-physical memory onto host-physical frames (what Xen calls the P2M): a
/// guest page gets a host frame the first time the guest touches it, drawn from the <see cref="HostFramePool"/> and
/// backed by the VM's <see cref="GuestMemory"/>. Both nested and shadow paging translate through it.</summary>
public sealed partial class GuestPhysicalMap
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

// Snapshots (issue 11): which guest pages have host frames, and which 2 MiB runs were given one large run (so that the
// restored nested table can map them with large entries again). The host frames themselves are the restoring VMM's:
// host-physical addresses mean nothing to another process.
public sealed partial class GuestPhysicalMap
{
    /// <summary>Writes the touched guest pages as (guest-physical address, large) pairs.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        var touched = new List<(ulong Address, bool Large)>();
        for (ulong frame = 0; frame < (ulong)hostFrames.Length; frame++)
        {
            if (hostFrames[frame] == 0)
            {
                continue;
            }
            if (frame % LargeFrames == 0 && IsLargeRun(frame))
            {
                touched.Add((frame << FrameShift, true));
                frame += LargeFrames - 1;
                continue;
            }
            touched.Add((frame << FrameShift, false));
        }
        writer.WriteInt32(touched.Count);
        foreach (var (address, large) in touched)
        {
            writer.WriteUInt64(address);
            writer.WriteBoolean(large);
        }
    }

    /// <summary>Gives the saved pages host frames again (this map must be fresh).</summary>
    public void Restore(Persistence.SnapshotReader reader)
    {
        int count = reader.ReadInt32();
        for (int i = 0; i < count; i++)
        {
            ulong address = reader.ReadUInt64();
            bool large = reader.ReadBoolean();
            if ((address >> FrameShift) >= (ulong)hostFrames.Length || !IsRam(address))
            {
                throw reader.Invalid($"guest page 0x{address:x} is not RAM of this VM");
            }
            if (large ? !TouchLarge(address, out _) : TryHostPhysical(address, out _))
            {
                throw reader.Invalid($"guest page 0x{address:x} cannot be given its host frames again (listed twice, or not a free 2 MiB run)");
            }
            if (!large)
            {
                Touch(address);
            }
        }
    }

    // A 2 MiB run that TouchLarge gave one aligned run of host frames.
    private bool IsLargeRun(ulong firstFrame)
    {
        ulong host = hostFrames[firstFrame];
        if ((host & 0x1F_FFFF) != 0 || firstFrame + LargeFrames > (ulong)hostFrames.Length)
        {
            return false;
        }
        for (ulong i = 1; i < LargeFrames; i++)
        {
            if (hostFrames[firstFrame + i] != host + (i << FrameShift))
            {
                return false;
            }
        }
        return true;
    }
}
