using Nestor.Hypervisor.Devices.DmaRemapping;

namespace Nestor.Hypervisor.Devices.Assigned.Iommu;

/// <summary>An IOMMU in the shape of Intel VT-d's DMA remapping (VT-d specification rev. 4, §3, "DMA Remapping"), in
/// legacy mode: a root table of 256 entries, one per PCI bus, each pointing at a context table of 256 entries, one per
/// device and function, whose entry names the device's domain and its second-level page table — 4 levels, 48-bit input
/// addresses, the same entry format as the nested (EPT) table's: read and write bits, a page-size bit, the next table
/// or the page in bits 51:12. Every table is in host memory the VMM owns (<see cref="HostPhysicalSpace"/>), which no
/// guest-physical address reaches. A device's DMA address goes in (for an assigned device, a guest-physical address:
/// that is all its guest driver knows), a host-physical address comes out, or the request is blocked and recorded
/// (<see cref="Faults"/>).</summary>
/// <remarks>There is no IOTLB: every translation walks the tables, which <see cref="Walks"/> and
/// <see cref="WalkReferences"/> count (a VT-d unit caches context entries and translations and is told to drop them
/// with invalidation descriptors, §6.5; the cost of a walk is what such caches save). Not thread-safe, like the rest of a
/// VM's devices.</remarks>
public sealed class DmaRemappingUnit : IDisposable
{
    /// <summary>Second-level entry bits (VT-d §9.8, as EPT's, SDM Vol. 3C §29.3.2): read, write, page size.</summary>
    public const ulong Read = SecondLevelWalk.Read, Write = SecondLevelWalk.Write, PageSize = SecondLevelWalk.PageSize;

    /// <summary>Bits 51:12 of an entry: the next table or the page.</summary>
    public const ulong AddressMask = SecondLevelWalk.AddressMask;

    /// <summary>Input address width of a 4-level second-level table (the context entry's AW = 010b).</summary>
    public const int AddressWidth = 48;

    // Root entry (§9.1): bit 0 present, bits 63:12 the context table. Context entry (§9.3), low quadword: bit 0
    // present, bits 3:2 translation type (00b: untranslated requests through the second-level table), bits 63:12 the
    // second-level table; high quadword: bits 2:0 address width, bits 23:8 the domain identifier.
    private const ulong Present = 1;
    private const ulong AddressWidth48 = 0b010;
    private const int EntrySize = 16;

    private readonly HostPhysicalSpace space;
    private readonly List<ulong> tables = [];
    private bool disposed;

    /// <param name="space">Where the tables are and where translated addresses point.</param>
    /// <param name="faults">Where faults are recorded (a log that may outlive this unit, when a VMM reprograms the
    /// device's translation on a new unit).</param>
    public DmaRemappingUnit(HostPhysicalSpace space, DmaFaultLog faults)
    {
        this.space = space;
        Faults = faults;
        RootTable = NewTable();
    }

    /// <summary>The root table's host-physical address (what VT-d's root table address register holds).</summary>
    public ulong RootTable { get; }

    /// <summary>The host-physical memory translated addresses point into.</summary>
    public HostPhysicalSpace Space => space;

    /// <summary>The faults recorded so far.</summary>
    public DmaFaultLog Faults { get; }

    /// <summary>Translations asked for (one per page of every DMA access).</summary>
    public long Translations { get; private set; }

    /// <summary>Table walks made (every translation is one: there is no IOTLB).</summary>
    public long Walks { get; private set; }

    /// <summary>Table entries read by the walks (root, context, and up to four second-level entries each).</summary>
    public long WalkReferences { get; private set; }

    /// <summary>Pages mapped now, over every device.</summary>
    public long MappedPages { get; private set; }

    /// <summary>Table frames the unit holds.</summary>
    public int TableFrames => tables.Count;

    /// <summary>Gives <paramref name="source"/> a context entry in <paramref name="domain"/> with an empty second-level
    /// table (every access blocked until pages are mapped); the bus's context table is made on first use.</summary>
    public void AttachDevice(SourceId source, ushort domain)
    {
        ulong root = RootTable + (ulong)source.Bus * EntrySize;
        ulong rootEntry = Memory.ReadUInt64(root);
        if ((rootEntry & Present) == 0)
        {
            rootEntry = NewTable() | Present;
            Memory.WriteUInt64(root, rootEntry);
        }
        ulong context = (rootEntry & AddressMask) + (ulong)source.DeviceFunction * EntrySize;
        if ((Memory.ReadUInt64(context) & Present) != 0)
        {
            throw new InvalidOperationException($"device {source} already has a context entry");
        }
        Memory.WriteUInt64(context + 8, AddressWidth48 | ((ulong)domain << 8));
        Memory.WriteUInt64(context, NewTable() | Present); // translation type 00b
    }

    /// <summary>Clears <paramref name="source"/>'s context entry: its requests fault with
    /// <see cref="DmaFaultReason.ContextEntryNotPresent"/>. Its tables stay the unit's until it is disposed.</summary>
    public void DetachDevice(SourceId source)
    {
        if (ContextEntry(source) is { } context)
        {
            Memory.WriteUInt64(context, Memory.ReadUInt64(context) & ~Present);
        }
    }

    /// <summary>The domain identifier of <paramref name="source"/>'s context entry, or null when it has none.</summary>
    public ushort? DomainOf(SourceId source) =>
        ContextEntry(source) is { } context && (Memory.ReadUInt64(context) & Present) != 0
            ? (ushort)(Memory.ReadUInt64(context + 8) >> 8)
            : null;

    /// <summary>Maps the 4 KiB page at DMA address <paramref name="address"/> of <paramref name="source"/> to the host
    /// frame at <paramref name="hostPhysical"/>, readable, and writable when <paramref name="writable"/>.</summary>
    public void Map(SourceId source, ulong address, ulong hostPhysical, bool writable)
    {
        ulong leaf = LeafSlot(source, address, create: true)!.Value;
        if ((Memory.ReadUInt64(leaf) & (Read | Write)) == 0)
        {
            MappedPages++;
        }
        Memory.WriteUInt64(leaf, (hostPhysical & AddressMask) | Read | (writable ? Write : 0));
    }

    /// <summary>Removes the mapping of the page at <paramref name="address"/> of <paramref name="source"/>: the device's
    /// accesses there fault with <see cref="DmaFaultReason.ReadNotPermitted"/> or <see cref="DmaFaultReason.WriteNotPermitted"/>. False when it was not mapped.</summary>
    public bool Unmap(SourceId source, ulong address)
    {
        if (LeafSlot(source, address, create: false) is not { } leaf || (Memory.ReadUInt64(leaf) & (Read | Write)) == 0)
        {
            return false;
        }
        Memory.WriteUInt64(leaf, 0);
        MappedPages--;
        return true;
    }

    /// <summary>Translates a DMA access of <paramref name="source"/> at <paramref name="address"/>: the host-physical
    /// address, or false when the unit blocks it, in which case the fault is recorded.</summary>
    public bool TryTranslate(SourceId source, ulong address, bool write, out ulong hostPhysical)
    {
        if (Walk(source, address, write, out hostPhysical) is { } reason)
        {
            Faults.Record(new DmaFault(source, address, write, reason));
            return false;
        }
        return true;
    }

    /// <summary>The walk of §3.4 without recording: null and the host-physical address, or why it faults. The walk
    /// is the one the emulated VT-d unit makes (<see cref="SecondLevelWalk"/>), over the tables in host memory.</summary>
    public DmaFaultReason? Walk(SourceId source, ulong address, bool write, out ulong hostPhysical)
    {
        Translations++;
        Walks++;
        var result = SecondLevelWalk.Translate(new HostTables(space), RootTable, source.Value, address, write, out _, out int references);
        WalkReferences += references;
        hostPhysical = result.Address;
        return result.Translated ? null : (DmaFaultReason)result.Reason;
    }

    // The VMM's tables, in the host-physical memory no guest-physical address reaches.
    private readonly struct HostTables(HostPhysicalSpace space) : IRemappingTables
    {
        public ulong ReadEntry(ulong address) => space.Memory.ReadUInt64(address);
    }

    /// <summary>Gives every table frame back.</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }
        disposed = true;
        foreach (ulong table in tables)
        {
            space.FreeTable(table);
        }
        tables.Clear();
    }

    private Nestor.Machine.Memory.PhysicalMemory Memory => space.Memory;

    private ulong? ContextEntry(SourceId source)
    {
        ulong rootEntry = Memory.ReadUInt64(RootTable + (ulong)source.Bus * EntrySize);
        return (rootEntry & Present) == 0 ? null : (rootEntry & AddressMask) + (ulong)source.DeviceFunction * EntrySize;
    }

    // The host-physical address of the last-level entry for address, making the intermediate tables when asked.
    private ulong? LeafSlot(SourceId source, ulong address, bool create)
    {
        if ((address >> AddressWidth) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"0x{address:x} is beyond the {AddressWidth}-bit address width");
        }
        if (ContextEntry(source) is not { } context || (Memory.ReadUInt64(context) & Present) == 0)
        {
            if (!create)
            {
                return null;
            }
            throw new InvalidOperationException($"device {source} has no context entry");
        }
        ulong table = Memory.ReadUInt64(context) & AddressMask;
        for (int level = 0; level < 3; level++)
        {
            ulong slot = table + ((address >> (39 - 9 * level)) & 511) * 8;
            ulong entry = Memory.ReadUInt64(slot);
            if ((entry & (Read | Write)) == 0)
            {
                if (!create)
                {
                    return null;
                }
                entry = NewTable() | Read | Write;
                Memory.WriteUInt64(slot, entry);
            }
            table = entry & AddressMask;
        }
        return table + ((address >> 12) & 511) * 8;
    }

    private ulong NewTable()
    {
        ulong table = space.AllocateTable();
        tables.Add(table);
        return table;
    }
}
