using Nestor.Machine.Addresses;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Paging;

/// <summary>A VM's nested page table in the EPT format (Intel SDM Vol. 3C §29.3): four levels mapping guest-physical
/// to host-physical addresses with 4 KiB or 2 MiB pages, built by the VMM in frames of the host pool. The CPU model's
/// <see cref="NestedWalker"/> walks it in hardware. The VMM adds entries on EPT violations, and unmaps or
/// write-protects a page when its backing changes (<see cref="GuestPhysicalMap"/>), shooting down what the processors
/// using the table cached for it, as a VMM follows such a change with INVEPT (SDM Vol. 3C §29.4.3).</summary>
public sealed partial class NestedPageTable : IDisposable
{
    private readonly HostFramePool pool;
    private readonly PhysicalMemory host;
    private readonly List<ulong> tableFrames = [];
    private readonly List<Mmu> processors = [];

    public NestedPageTable(HostFramePool pool)
    {
        this.pool = pool;
        host = pool.Memory;
        RootAddress = pool.AllocateTable();
        tableFrames.Add(RootAddress);
        Tables = 1;
    }

    /// <summary>A processor that walks this table: unmapping and write protection shoot down its nested TLB.</summary>
    public void AttachProcessor(Mmu processor)
    {
        if (!processors.Contains(processor))
        {
            processors.Add(processor);
        }
    }

    /// <summary>Entries removed or write-protected since the table was built.</summary>
    public long Invalidations { get; private set; }

    /// <summary>The leaf entry mapping <paramref name="guestPhysical"/> (a 4 KiB or a 2 MiB one) and its page shift, or
    /// 0 when the page is not mapped.</summary>
    internal ulong LeafEntry(ulong guestPhysical, out int pageShift)
    {
        pageShift = 0;
        return FindLeaf(guestPhysical, out ulong address, out pageShift) ? host.ReadUInt64(address) : 0;
    }

    /// <summary>Removes the entry mapping <paramref name="guestPhysical"/> (the whole 2 MiB when a large entry maps it:
    /// its other pages fault in again at 4 KiB) and shoots down the processors' cached translations of it. False when
    /// nothing mapped it.</summary>
    internal bool Unmap(ulong guestPhysical)
    {
        if (!FindLeaf(guestPhysical, out ulong address, out _))
        {
            return false;
        }
        host.WriteUInt64(address, 0);
        Shootdown(guestPhysical);
        return true;
    }

    /// <summary>Takes write access from the entry mapping <paramref name="guestPhysical"/>, so that a guest write to it
    /// is an EPT violation (a large entry is removed instead, as in <see cref="Unmap(GuestPhysical)"/>, so that only this page becomes
    /// read-only when it faults in again), and shoots down the processors' cached translations. False when nothing
    /// mapped it.</summary>
    internal bool WriteProtect(ulong guestPhysical)
    {
        if (!FindLeaf(guestPhysical, out ulong address, out int pageShift))
        {
            return false;
        }
        host.WriteUInt64(address, pageShift == 21 ? 0 : host.ReadUInt64(address) & ~NestedEntry.Write);
        Shootdown(guestPhysical);
        return true;
    }

    private void Shootdown(ulong guestPhysical)
    {
        Invalidations++;
        foreach (var processor in processors)
        {
            processor.InvalidateGuestPhysical(new GuestPhysical(guestPhysical));
        }
    }

    /// <summary>The address of the present leaf entry mapping <paramref name="guestPhysical"/>.</summary>
    private bool FindLeaf(ulong guestPhysical, out ulong entryAddress, out int pageShift)
    {
        ulong table = RootAddress;
        for (int level = 0; level < 4; level++)
        {
            entryAddress = table + ((guestPhysical >> (39 - 9 * level)) & 511) * 8;
            ulong entry = host.ReadUInt64(entryAddress);
            if ((entry & NestedEntry.ReadWriteExecute) == 0)
            {
                break;
            }
            if (level == 3 || (level == 2 && (entry & NestedEntry.LargePage) != 0))
            {
                pageShift = level == 3 ? 12 : 21;
                return true;
            }
            table = entry & NestedEntry.AddressMask;
        }
        entryAddress = 0;
        pageShift = 0;
        return false;
    }

    /// <summary>Gives the table's frames back to the pool.</summary>
    public void Dispose()
    {
        foreach (ulong frame in tableFrames)
        {
            pool.FreeTable(frame);
        }
        tableFrames.Clear();
        processors.Clear();
    }

    /// <summary>Host-physical address of the top-level table (the EPTP's address).</summary>
    internal ulong RootAddress { get; }

    /// <summary>Table pages in use.</summary>
    public int Tables { get; private set; }

    /// <summary>Leaf entries written, by page size.</summary>
    public long SmallMappings { get; private set; }
    public long LargeMappings { get; private set; }

    /// <summary>Maps the guest page at <paramref name="guestPhysical"/> (4 KiB when <paramref name="pageShift"/> is
    /// 12, 2 MiB when 21) to <paramref name="hostPhysical"/> with <paramref name="permissions"/> (EPT R/W/X bits).</summary>
    internal void Map(ulong guestPhysical, ulong hostPhysical, int pageShift, ulong permissions = NestedEntry.ReadWriteExecute)
    {
        int leafLevel = pageShift == 21 ? 2 : 3;
        ulong table = RootAddress;
        for (int level = 0; level < leafLevel; level++)
        {
            ulong entryAddress = table + ((guestPhysical >> (39 - 9 * level)) & 511) * 8;
            ulong entry = host.ReadUInt64(entryAddress);
            if ((entry & NestedEntry.ReadWriteExecute) == 0)
            {
                ulong next = pool.AllocateTable();
                tableFrames.Add(next);
                Tables++;
                entry = next | NestedEntry.ReadWriteExecute;
                host.WriteUInt64(entryAddress, entry);
            }
            else if ((entry & NestedEntry.LargePage) != 0)
            {
                throw new InvalidOperationException($"guest-physical 0x{guestPhysical:x} is already mapped by a large page");
            }
            table = entry & NestedEntry.AddressMask;
        }
        ulong leafAddress = table + ((guestPhysical >> pageShift) & 511) * 8;
        ulong page = hostPhysical & ~((1UL << pageShift) - 1);
        host.WriteUInt64(leafAddress, page | permissions | (pageShift == 21 ? NestedEntry.LargePage : 0));
        if (pageShift == 21)
        {
            LargeMappings++;
        }
        else
        {
            SmallMappings++;
        }
    }

    /// <summary>Whether the 2 MiB guest page around <paramref name="guestPhysical"/> has no small mappings yet, so a
    /// large entry can still map it.</summary>
    internal bool CanMapLarge(ulong guestPhysical)
    {
        ulong table = RootAddress;
        for (int level = 0; level < 2; level++)
        {
            ulong entry = host.ReadUInt64(table + ((guestPhysical >> (39 - 9 * level)) & 511) * 8);
            if ((entry & NestedEntry.ReadWriteExecute) == 0)
            {
                return true;
            }
            table = entry & NestedEntry.AddressMask;
        }
        return (host.ReadUInt64(table + ((guestPhysical >> 21) & 511) * 8) & NestedEntry.ReadWriteExecute) == 0;
    }
}

// Snapshots (issue 11): the nested table as its leaf mappings (guest page, size, EPT permissions). Restoring maps
// them again onto the host frames the restored GuestPhysicalMap gave those pages.
public sealed partial class NestedPageTable
{
    /// <summary>Writes every leaf mapping, in guest-physical order.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        var leaves = new List<(ulong Guest, int Shift, ulong Entry)>();
        Collect(RootAddress, 0, 0, leaves);
        writer.WriteInt32(leaves.Count);
        foreach (var (guest, shift, entry) in leaves)
        {
            writer.WriteUInt64(guest);
            writer.WriteByte((byte)shift);
            writer.WriteByte((byte)(entry & NestedEntry.ReadWriteExecute));
            // A device page maps into the host's device window at its own guest-physical address, not onto a frame.
            writer.WriteBoolean((entry & NestedEntry.AddressMask & PhysicalMemory.DeviceWindow) != 0);
        }
    }

    /// <summary>Maps the saved pages again (this table must be fresh, <paramref name="map"/> restored).</summary>
    public void Restore(Persistence.SnapshotReader reader, GuestPhysicalMap map)
    {
        int count = reader.ReadInt32();
        for (int i = 0; i < count; i++)
        {
            ulong guest = reader.ReadUInt64();
            int shift = reader.ReadByte();
            ulong permissions = reader.ReadByte();
            bool device = reader.ReadBoolean();
            if (shift is not (12 or 21) || (permissions & ~NestedEntry.ReadWriteExecute) != 0 || (guest & ((1UL << shift) - 1)) != 0)
            {
                throw reader.Invalid($"a nested mapping of 0x{guest:x} with page shift {shift} and permissions 0x{permissions:x}");
            }
            ulong host = PhysicalMemory.DeviceWindow | guest;
            if (!device && shift == 12 && map.ReceivesPostCopy && !map.TryHostPhysical(guest, out _))
            {
                continue; // post-copy: it was still at the source as the map was restored; its first access maps it
            }
            if (!device && !map.TryHostPhysical(guest, out host))
            {
                throw reader.Invalid($"the nested table maps guest page 0x{guest:x}, which has no host frame");
            }
            Map(guest, host, shift, permissions);
        }
    }

    private void Collect(ulong table, int level, ulong guestBase, List<(ulong, int, ulong)> leaves)
    {
        int shift = 39 - 9 * level;
        for (ulong index = 0; index < 512; index++)
        {
            ulong entry = host.ReadUInt64(table + index * 8);
            if ((entry & NestedEntry.ReadWriteExecute) == 0)
            {
                continue;
            }
            ulong guest = guestBase | (index << shift);
            if (level == 3 || (level == 2 && (entry & NestedEntry.LargePage) != 0))
            {
                leaves.Add((guest, shift, entry));
            }
            else
            {
                Collect(entry & NestedEntry.AddressMask, level + 1, guest, leaves);
            }
        }
    }
}
