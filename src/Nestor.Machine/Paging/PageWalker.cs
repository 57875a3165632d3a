using Nestor.Machine.Addresses;
using Nestor.Machine.Memory;

namespace Nestor.Machine.Paging;

/// <summary>The outcome of a page walk.</summary>
public struct WalkResult
{
    /// <summary>Physical address of the page (aligned to its size).</summary>
    public ulong PhysicalPage;
    /// <summary>log2 of the page size: 12, 21 or 30.</summary>
    public int PageShift;
    public TranslationRights Rights;
    /// <summary>Paging-structure entries read by this walk (both dimensions of a 2-D walk).</summary>
    public int References;
}

/// <summary>Which table a step of a page walk read.</summary>
public enum WalkDimension : byte
{
    /// <summary>The guest's own page table (the only one without nesting).</summary>
    Guest,
    /// <summary>The nested (extended) page table, translating a guest-physical address.</summary>
    Nested,
}

/// <summary>One memory reference of a page walk, for explaining a walk step by step (<c>nestor walk</c>).</summary>
/// <param name="Dimension">Which table was read.</param>
/// <param name="Level">0 = the top level (PML4 or EPT PML4) … 3 = the page table.</param>
/// <param name="Input">The address being translated: a linear address (guest) or a guest-physical one (nested).</param>
/// <param name="TableAddress">The table's address: guest-physical for a guest table under nesting, else physical.</param>
/// <param name="EntryAddress">Where the entry was read: a (host-)physical address.</param>
/// <param name="Entry">The entry's value.</param>
public readonly record struct WalkStep(WalkDimension Dimension, int Level, ulong Input, ulong TableAddress, ulong EntryAddress, ulong Entry);

/// <summary>The nested dimension of a 2-D walk, as the guest-dimension walker sees it: guest-physical to
/// host-physical.</summary>
public interface IGuestPhysicalTranslator
{
    /// <summary>The host-physical address of <paramref name="guestPhysical"/> for an access of
    /// <paramref name="kind"/>; <paramref name="finalTranslation"/> is false for reads of the guest's paging
    /// structures. Throws <see cref="Virtualization.NestedPageFault"/> when the nested table does not allow it.</summary>
    HostPhysical ToHost(GuestPhysical guestPhysical, AccessKind kind, bool finalTranslation, GuestVirtual linear, out int pageShift, List<WalkStep>? trace);

    /// <summary>Whether the nested entries of the last <see cref="ToHost"/> allow writing: a walk that must set an
    /// accessed or dirty bit in the guest entry it read through that translation may write it only then (else it asks
    /// <see cref="ToHost"/> again for a write, which raises the EPT violation or makes the page writable).</summary>
    bool LastTranslationWritable => true;
}

/// <summary>The one-dimensional walk of 4-level paging (Intel SDM Vol. 3A §4.5, Figure 4-8): CR3 → PML4E → PDPTE →
/// PDE → PTE, with 1 GiB and 2 MiB pages ending the walk early, rights combined over the levels, reserved bits
/// checked, and accessed/dirty bits written back once the access is known to be allowed (as QEMU's TCG does).
///
/// <para>With a <see cref="IGuestPhysicalTranslator"/> it is the guest dimension of a 2-D walk (Bhargava et al.,
/// ASPLOS 2008): CR3 and every entry's next-table address are guest-physical, so each entry's address is translated
/// through the nested dimension before it is read, and the result's page is guest-physical.</para></summary>
public sealed class PageWalker(PhysicalMemory memory, PageWalkCache walkCache, MmuCounters counters, IGuestPhysicalTranslator? nested = null)
{
    private const ulong Present = 1, Writable = 1 << 1, User = 1 << 2, Accessed = 1 << 5, Dirty = 1 << 6,
        LargePage = 1 << 7, GlobalBit = 1 << 8, ExecuteDisable = 1UL << 63;

    /// <summary>Bits 51:12 of an entry: the next table or the page.</summary>
    public const ulong AddressMask = 0x000F_FFFF_FFFF_F000;

    /// <summary>Walks <paramref name="linear"/> under <paramref name="controls"/>. Returns null and fills
    /// <paramref name="result"/> when the access is allowed; otherwise the page-fault error code.</summary>
    /// <param name="trace">When given, the walk is explained instead of performed: every reference is recorded, and
    /// no cache is used or filled and no accessed or dirty bit is written.</param>
    public PageFaultError? Walk(GuestVirtual linear, AccessKind kind, bool user, bool alignmentCheck, in PagingControls controls,
        out WalkResult result, List<WalkStep>? trace = null) =>
        Walk(linear.Value, kind, user, alignmentCheck, controls, out result, trace);

    // The MMU's and the 2-D walker's own entry: their translation paths keep linear addresses as ulong.
    internal PageFaultError? Walk(ulong linear, AccessKind kind, bool user, bool alignmentCheck, in PagingControls controls,
        out WalkResult result, List<WalkStep>? trace = null)
    {
        counters.Walks++;
        result = default;
        Span<ulong> entryAddresses = stackalloc ulong[4];
        Span<ulong> guestEntryAddresses = stackalloc ulong[4]; // under nesting: the guest-physical ones…
        Span<bool> entryWritable = stackalloc bool[4];         // …and whether their nested entries allow writing
        int used = 0;
        var rights = TranslationRights.Writable | TranslationRights.User | TranslationRights.Executable;
        ulong table = controls.Cr3 & AddressMask;
        int level = 0; // 0 = PML4, 1 = PDPT, 2 = PD, 3 = PT
        ulong next = 0;
        var cachedRights = TranslationRights.None;
        int cached = trace is null && walkCache.EntriesPerLevel > 0 ? walkCache.Lookup(linear, out next, out cachedRights) : -1;
        int firstLevel = cached + 1;
        Span<ulong> nextTables = stackalloc ulong[4];
        Span<TranslationRights> levelRights = stackalloc TranslationRights[4];
        if (cached >= 0)
        {
            counters.WalkCacheHits[cached]++;
            table = next;
            rights = cachedRights;
            level = cached + 1;
        }
        while (true)
        {
            int shift = 39 - 9 * level;
            ulong entryAddress = table + ((linear >> shift) & 511) * 8;
            guestEntryAddresses[used] = entryAddress;
            if (nested is not null)
            {
                entryAddress = nested.ToHost(new GuestPhysical(entryAddress), AccessKind.Read, finalTranslation: false, new GuestVirtual(linear), out _, trace).Value;
                entryWritable[used] = nested.LastTranslationWritable;
            }
            ulong entry = memory.ReadUInt64(entryAddress);
            counters.WalkReferences++;
            result.References++;
            trace?.Add(new WalkStep(WalkDimension.Guest, level, linear, table, entryAddress, entry));
            entryAddresses[used++] = entryAddress;
            if ((entry & Present) == 0)
            {
                return Fault(PageFaultError.None, kind, user, controls);
            }
            if (ReservedBitsSet(entry, level, controls))
            {
                return Fault(PageFaultError.Present | PageFaultError.ReservedBit, kind, user, controls);
            }
            rights = CombineRights(rights, entry, controls);
            bool leaf = level == 3 || (level >= 1 && (entry & LargePage) != 0);
            if (!leaf)
            {
                table = entry & AddressMask;
                nextTables[level] = table;
                levelRights[level] = rights;
                level++;
                continue;
            }
            if ((entry & Dirty) != 0)
            {
                rights |= TranslationRights.Dirty;
            }
            if (controls.GlobalPages && (entry & GlobalBit) != 0)
            {
                rights |= TranslationRights.Global;
            }
            if (AccessRights.Check(rights, kind, user, alignmentCheck, controls) is { } denied)
            {
                counters.PageFaults++;
                return denied;
            }
            // The access is allowed: set A on every entry used and D on the leaf for a write (§4.8). Under nesting that
            // update is a write to the guest's paging structure through the translation the read used, so its nested
            // entries must allow writing: a read-only one (a guest page table shared copy-on-write) makes it an EPT
            // violation for a write, not a final translation, before anything is written to that entry (SDM Vol. 3C
            // §29.3.3.2; §29.3.5, "Accessed and Dirty Flags for EPT": accesses to guest paging structures to update
            // A/D are writes).
            for (int i = 0; i < used && trace is null; i++)
            {
                ulong value = memory.ReadUInt64(entryAddresses[i]);
                ulong wanted = value | Accessed | (i == used - 1 && kind == AccessKind.Write ? Dirty : 0);
                if (wanted != value)
                {
                    ulong target = nested is null || entryWritable[i] ? entryAddresses[i]
                        : nested.ToHost(new GuestPhysical(guestEntryAddresses[i]), AccessKind.Write, finalTranslation: false, new GuestVirtual(linear), out _, null).Value;
                    memory.WriteUInt64(target, wanted);
                    counters.AccessedDirtyWrites++;
                }
            }
            if (kind == AccessKind.Write)
            {
                rights |= TranslationRights.Dirty;
            }
            // Cache the upper levels just used, now that their accessed bits are set (a cached entry is never one
            // whose A bit still needs writing).
            for (int l = firstLevel; l < level && trace is null; l++)
            {
                walkCache.Insert(l, linear, nextTables[l], levelRights[l]);
            }
            result.PageShift = shift;
            result.PhysicalPage = entry & AddressMask & ~((1UL << shift) - 1);
            result.Rights = rights;
            return null;
        }
    }

    private PageFaultError Fault(PageFaultError basis, AccessKind kind, bool user, in PagingControls controls)
    {
        counters.PageFaults++;
        return AccessRights.ErrorCode(basis, kind, user, controls);
    }

    /// <summary>Reserved bits (§4.5.4, Tables 4-14 to 4-20, with a 52-bit physical-address width): PS in a PML4E, XD
    /// when EFER.NXE is off, and the bits below a large page's frame.</summary>
    /// <summary>The rights left after one more paging-structure entry (§4.6.1: a right is granted only if every level
    /// grants it): R/W, U/S, and XD when EFER.NXE is on.</summary>
    public static TranslationRights CombineRights(TranslationRights rights, ulong entry, in PagingControls controls)
    {
        if ((entry & Writable) == 0)
        {
            rights &= ~TranslationRights.Writable;
        }
        if ((entry & User) == 0)
        {
            rights &= ~TranslationRights.User;
        }
        if (controls.NoExecute && (entry & ExecuteDisable) != 0)
        {
            rights &= ~TranslationRights.Executable;
        }
        return rights;
    }

    internal static bool ReservedBitsSet(ulong entry, int level, in PagingControls controls)
    {
        if (!controls.NoExecute && (entry & ExecuteDisable) != 0)
        {
            return true;
        }
        if ((entry & LargePage) != 0)
        {
            return level switch
            {
                0 => true,
                1 => (entry & 0x3FFF_E000) != 0,   // 1 GiB page: bits 29:13
                2 => (entry & 0x001F_E000) != 0,   // 2 MiB page: bits 20:13
                _ => false,                        // bit 7 of a PTE is PAT
            };
        }
        return false;
    }
}
