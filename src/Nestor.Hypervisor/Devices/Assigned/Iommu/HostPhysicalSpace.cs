using Nestor.Host;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Memory;

namespace Nestor.Hypervisor.Devices.Assigned.Iommu;

/// <summary>Host-physical memory as a DMA-remapping unit and the device behind it see it: where the unit's tables are
/// (memory the VMM owns, which no guest-physical address reaches) and where translated DMA lands.</summary>
public abstract class HostPhysicalSpace : IDisposable
{
    /// <summary>The host-physical address space.</summary>
    public abstract PhysicalMemory Memory { get; }

    /// <summary>A zeroed 4 KiB frame for a table; its host-physical address.</summary>
    public abstract ulong AllocateTable();

    /// <summary>Gives back a frame from <see cref="AllocateTable"/>.</summary>
    public abstract void FreeTable(ulong hostPhysical);

    /// <summary>Table frames in use.</summary>
    public long TableFrames { get; protected set; }

    public virtual void Dispose()
    {
    }

    /// <summary>The host's frame pool under a VMM on the software machine: guest RAM is wherever the P2M put it, the
    /// tables are frames of the VMM's table budget (beside its nested or shadow tables).</summary>
    public static HostPhysicalSpace OfFramePool(HostFramePool pool) => new FramePoolSpace(pool);

    /// <summary>Without a VMM (the bare software machine, KVM): host-physical is guest-physical for RAM, and the
    /// tables are in memory of their own, above the top of RAM, that the guest has no address for.</summary>
    public static HostPhysicalSpace Identity(GuestMemory guest) => new IdentitySpace(guest);

    private sealed class FramePoolSpace(HostFramePool pool) : HostPhysicalSpace
    {
        public override PhysicalMemory Memory => pool.Memory;

        public override ulong AllocateTable()
        {
            ulong frame = pool.AllocateTable();
            TableFrames++;
            return frame;
        }

        public override void FreeTable(ulong hostPhysical)
        {
            pool.FreeTable(hostPhysical);
            TableFrames--;
        }
    }

    private sealed class IdentitySpace : HostPhysicalSpace
    {
        private const ulong FrameSize = 0x1000;
        private readonly PhysicalMemory memory;
        private readonly HostMemory store;
        private readonly ulong tableBase;
        private readonly ulong capacity;
        private readonly Stack<ulong> free = new();
        private ulong next;

        public IdentitySpace(GuestMemory guest)
        {
            var regions = guest.Regions.ToList();
            memory = new PhysicalMemory(regions.Select(r => (r.Region.Start.Value, r.Region.Length, r.Backing.Address)));
            ulong top = regions.Max(r => r.Region.End.Value);
            // A 4-level table over all of RAM: one last-level table per 2 MiB, one directory per GiB, one pointer
            // table per 512 GiB, the top table, the root and a context table, and slack for tables a test adds.
            ulong pages = guest.Size / FrameSize;
            capacity = pages / 512 + 2 * (pages / (512 * 512)) + 32;
            store = HostMemory.MapAnonymous(capacity * FrameSize);
            tableBase = (top + 0x1F_FFFF) & ~0x1F_FFFFUL;
        }

        public override PhysicalMemory Memory => memory;

        public override ulong AllocateTable()
        {
            if (!free.TryPop(out ulong address))
            {
                if (next >= capacity)
                {
                    throw new InvalidOperationException($"the remapping unit's table memory ({capacity} frames) is used up");
                }
                address = tableBase + next * FrameSize;
                memory.Map(address, store.Address + (nint)(next * FrameSize));
                next++;
            }
            TableFrames++;
            return address;
        }

        public override void FreeTable(ulong hostPhysical)
        {
            unsafe
            {
                new Span<byte>(memory.Pointer(hostPhysical, (int)FrameSize), (int)FrameSize).Clear();
            }
            free.Push(hostPhysical);
            TableFrames--;
        }

        public override void Dispose() => store.Dispose();
    }
}
