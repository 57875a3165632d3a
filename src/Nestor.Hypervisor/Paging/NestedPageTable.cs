using Nestor.Hypervisor.Memory;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Paging;

/// <summary>A VM's nested page table in the EPT format (Intel SDM Vol. 3C §29.3): four levels mapping guest-physical
/// to host-physical addresses with 4 KiB or 2 MiB pages, built by the VMM in frames of the host pool. The CPU model's
/// <see cref="NestedWalker"/> walks it in hardware; the VMM only adds entries, on EPT violations.</summary>
public sealed class NestedPageTable
{
    private readonly HostFramePool pool;
    private readonly PhysicalMemory host;

    public NestedPageTable(HostFramePool pool)
    {
        this.pool = pool;
        host = pool.Memory;
        Root = pool.AllocateTable();
        Tables = 1;
    }

    /// <summary>Host-physical address of the top-level table (the EPTP's address).</summary>
    public ulong Root { get; }

    /// <summary>Table pages in use.</summary>
    public int Tables { get; private set; }

    /// <summary>Leaf entries written, by page size.</summary>
    public long SmallMappings { get; private set; }
    public long LargeMappings { get; private set; }

    /// <summary>Maps the guest page at <paramref name="guestPhysical"/> (4 KiB when <paramref name="pageShift"/> is
    /// 12, 2 MiB when 21) to <paramref name="hostPhysical"/> with <paramref name="permissions"/> (EPT R/W/X bits).</summary>
    public void Map(ulong guestPhysical, ulong hostPhysical, int pageShift, ulong permissions = NestedEntry.ReadWriteExecute)
    {
        int leafLevel = pageShift == 21 ? 2 : 3;
        ulong table = Root;
        for (int level = 0; level < leafLevel; level++)
        {
            ulong entryAddress = table + ((guestPhysical >> (39 - 9 * level)) & 511) * 8;
            ulong entry = host.ReadUInt64(entryAddress);
            if ((entry & NestedEntry.ReadWriteExecute) == 0)
            {
                ulong next = pool.AllocateTable();
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
    public bool CanMapLarge(ulong guestPhysical)
    {
        ulong table = Root;
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
