using Nestor.Machine.Addresses;
using Nestor.Machine.Memory;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Paging;

/// <summary>Entry bits of the nested page table in the EPT format (Intel SDM Vol. 3C §29.3.2, Tables 29-1 to 29-6).</summary>
public static class NestedEntry
{
    public const ulong Read = 1, Write = 1 << 1, Execute = 1 << 2, LargePage = 1 << 7;
    /// <summary>Bits 51:12: the next table or the page.</summary>
    public const ulong AddressMask = 0x000F_FFFF_FFFF_F000;
    public const ulong ReadWriteExecute = Read | Write | Execute;
}

/// <summary>Shape of the caches of nested paging (Bhargava et al., "Accelerating Two-Dimensional Page Walks for
/// Virtualized Systems", ASPLOS 2008, §4): a nested TLB of guest-physical to host-physical translations, and a
/// page-walk cache for the nested dimension (the guest dimension's is the MMU's ordinary page-walk cache).</summary>
/// <param name="NestedTlb">The nested TLB, or null for none.</param>
/// <param name="NestedWalkCacheEntriesPerLevel">Entries per level of the nested dimension's page-walk cache; 0 disables it.</param>
public sealed record NestedPagingConfiguration(TlbConfiguration? NestedTlb, int NestedWalkCacheEntriesPerLevel)
{
    /// <summary>A 32-entry 4-way nested TLB and a 16-entry-per-level nested page-walk cache.</summary>
    public static NestedPagingConfiguration Default { get; } = new(new TlbConfiguration(32, 4), 16);

    /// <summary>No nested caches: every guest-physical address is walked in the nested table.</summary>
    public static NestedPagingConfiguration None { get; } = new(null, 0);
}

/// <summary>The two-dimensional page walk of nested paging (EPT/NPT): the guest's 4-level walk, in which CR3 and every
/// guest entry's address is a guest-physical address that must itself be walked in the nested page table, and then
/// the nested walk of the data's guest-physical address. With no caches a 4-level guest walk over a 4-level nested
/// table makes (4 + 1) × (4 + 1) − 1 = 24 memory references, against 4 natively; with n guest levels and m nested
/// levels (large pages end a walk early) it makes (n + 1)(m + 1) − 1 (Bhargava et al., ASPLOS 2008, Figure 2).
/// The nested TLB caches guest-physical → host-physical translations; the nested page-walk cache caches upper nested
/// levels; the guest page-walk cache (shared with 1-D walks) caches upper guest levels.</summary>
public sealed class NestedWalker : IGuestPhysicalTranslator
{
    private readonly PhysicalMemory memory;
    private readonly MmuCounters counters;
    private readonly PageWalker guestWalker;
    private readonly PageWalkCache nestedWalkCache;
    private readonly Tlb? nestedTlb;

    /// <param name="memory">Host-physical memory, where both the guest's tables (once translated) and the nested
    /// table live.</param>
    /// <param name="guestWalkCache">The page-walk cache of the guest dimension.</param>
    public NestedWalker(PhysicalMemory memory, PageWalkCache guestWalkCache, NestedPagingConfiguration configuration, MmuCounters counters)
    {
        this.memory = memory;
        this.counters = counters;
        Configuration = configuration;
        guestWalker = new PageWalker(memory, guestWalkCache, counters, this);
        nestedWalkCache = new PageWalkCache(configuration.NestedWalkCacheEntriesPerLevel);
        nestedTlb = configuration.NestedTlb is null ? null : new Tlb(configuration.NestedTlb);
    }

    public NestedPagingConfiguration Configuration { get; }

    /// <summary>The host-physical address of the nested page table's top level.</summary>
    public HostPhysical NestedRoot { get; set; }

    public Tlb? NestedTlb => nestedTlb;

    public PageWalkCache NestedWalkCache => nestedWalkCache;

    /// <summary>Translates <paramref name="linear"/> through both dimensions. Returns null and the host-physical page
    /// in <paramref name="result"/> (its size the smaller of the guest's and the nested page's, as hardware splinters
    /// a large page mapped by small ones) when the guest's tables allow the access, else the guest's page-fault error
    /// code. Throws <see cref="NestedPageFault"/> when the nested table does not map a guest-physical address the
    /// walk needs.</summary>
    public PageFaultError? Walk(GuestVirtual linear, AccessKind kind, bool user, bool alignmentCheck, in PagingControls guest,
        out WalkResult result, List<WalkStep>? trace = null) =>
        Walk(linear.Value, kind, user, alignmentCheck, guest, out result, trace);

    // The MMU's own entry: its translation path keeps linear addresses as ulong.
    internal PageFaultError? Walk(ulong linear, AccessKind kind, bool user, bool alignmentCheck, in PagingControls guest,
        out WalkResult result, List<WalkStep>? trace = null)
    {
        long referencesBefore = counters.WalkReferences;
        if (!guest.Paging)
        {
            // Guest paging off: the linear address is the guest-physical one; only the nested dimension is walked.
            counters.Walks++;
            ulong host = ToHost(linear, kind, finalTranslation: true, linear, out int shift, trace);
            result = new WalkResult
            {
                PhysicalPage = host & ~((1UL << shift) - 1),
                PageShift = shift,
                Rights = CombinedRights(TranslationRights.Writable | TranslationRights.User | TranslationRights.Executable | TranslationRights.Dirty),
                References = (int)(counters.WalkReferences - referencesBefore),
            };
            return null;
        }
        if (guestWalker.Walk(linear, kind, user, alignmentCheck, guest, out result, trace) is { } fault)
        {
            return fault;
        }
        ulong guestPhysical = result.PhysicalPage | (linear & ((1UL << result.PageShift) - 1));
        ulong hostPhysical = ToHost(guestPhysical, kind, finalTranslation: true, linear, out int nestedShift, trace);
        int pageShift = Math.Min(result.PageShift, nestedShift);
        result.Rights = CombinedRights(result.Rights);
        result.PhysicalPage = hostPhysical & ~((1UL << pageShift) - 1);
        result.PageShift = pageShift;
        result.References = (int)(counters.WalkReferences - referencesBefore);
        return null;
    }

    /// <summary>The nested dimension: guest-physical → host-physical through the nested TLB, the nested page-walk
    /// cache and the nested page table (SDM Vol. 3C §29.3.2). When <paramref name="trace"/> is given the walk is
    /// explained cold: no cache is used or filled.</summary>
    public HostPhysical ToHost(GuestPhysical guestPhysical, AccessKind kind, bool finalTranslation, GuestVirtual linear, out int pageShift, List<WalkStep>? trace) =>
        new(ToHost(guestPhysical.Value, kind, finalTranslation, linear.Value, out pageShift, trace));

    private ulong ToHost(ulong guestPhysical, AccessKind kind, bool finalTranslation, ulong linear, out int pageShift, List<WalkStep>? trace)
    {
        bool useCaches = trace is null;
        if (useCaches && nestedTlb is not null)
        {
            int index = nestedTlb.Lookup(guestPhysical, 0);
            if (index >= 0 && Allows(nestedTlb[index].Rights, kind))
            {
                counters.NestedTlbHits++;
                ref readonly var e = ref nestedTlb[index];
                finalNestedRights = e.Rights;
                pageShift = e.PageShift;
                return e.PhysicalPage | (guestPhysical & ((1UL << e.PageShift) - 1));
            }
            counters.NestedTlbMisses++;
        }
        counters.NestedWalks++;
        var rights = TranslationRights.Writable | TranslationRights.Executable;
        ulong table = NestedRoot.Value & NestedEntry.AddressMask;
        int level = 0;
        ulong next = 0;
        var cachedRights = TranslationRights.None;
        int cached = useCaches && nestedWalkCache.EntriesPerLevel > 0 ? nestedWalkCache.Lookup(guestPhysical, out next, out cachedRights) : -1;
        int firstLevel = cached + 1;
        if (cached >= 0)
        {
            counters.NestedWalkCacheHits[cached]++;
            table = next;
            rights = cachedRights;
            level = cached + 1;
        }
        Span<ulong> nextTables = stackalloc ulong[4];
        Span<TranslationRights> levelRights = stackalloc TranslationRights[4];
        while (true)
        {
            int shift = 39 - 9 * level;
            ulong entryAddress = table + ((guestPhysical >> shift) & 511) * 8;
            ulong entry = memory.ReadUInt64(entryAddress);
            counters.WalkReferences++;
            counters.NestedWalkReferences++;
            trace?.Add(new WalkStep(WalkDimension.Nested, level, guestPhysical, table, entryAddress, entry));
            if ((entry & NestedEntry.Read) == 0)
            {
                // Not present (R = W = X = 0), or write/execute-only, which the model treats as not present.
                throw Violation(guestPhysical, kind, finalTranslation, linear, TranslationRights.None, present: false);
            }
            if ((entry & NestedEntry.Write) == 0)
            {
                rights &= ~TranslationRights.Writable;
            }
            if ((entry & NestedEntry.Execute) == 0)
            {
                rights &= ~TranslationRights.Executable;
            }
            bool leaf = level == 3 || (level >= 1 && (entry & NestedEntry.LargePage) != 0);
            if (!leaf)
            {
                table = entry & NestedEntry.AddressMask;
                nextTables[level] = table;
                levelRights[level] = rights;
                level++;
                continue;
            }
            if (!Allows(rights, kind))
            {
                throw Violation(guestPhysical, kind, finalTranslation, linear, rights, present: true);
            }
            if (useCaches)
            {
                for (int l = firstLevel; l < level; l++)
                {
                    nestedWalkCache.Insert(l, guestPhysical, nextTables[l], levelRights[l]);
                }
                ulong page = entry & NestedEntry.AddressMask & ~((1UL << shift) - 1);
                nestedTlb?.Insert(guestPhysical, page, shift, rights, 0);
            }
            finalNestedRights = rights;
            pageShift = shift;
            return (entry & NestedEntry.AddressMask & ~((1UL << shift) - 1)) | (guestPhysical & ((1UL << shift) - 1));
        }
    }

    // The nested rights of the last ToHost, so that a combined translation grants only what both dimensions grant
    // (SDM Vol. 3C §29.4.2: the access rights of a combined mapping are the intersection of the guest's and the
    // EPT's): a write-protected nested entry must make the guest's write an EPT violation even after a read cached
    // the translation in the TLB.
    private TranslationRights finalNestedRights;

    /// <inheritdoc/>
    public bool LastTranslationWritable => (finalNestedRights & TranslationRights.Writable) != 0;

    private TranslationRights CombinedRights(TranslationRights guest) =>
        guest & ~((TranslationRights.Writable | TranslationRights.Executable) & ~finalNestedRights);

    /// <summary>Drops what is cached for the guest-physical page at <paramref name="guestPhysical"/>: its nested TLB
    /// entries, and the nested page-walk cache (whose entries for the page's upper levels cannot be told apart from
    /// others'; dropping more than asked is what INVEPT allows, SDM Vol. 3C §29.4.3.1).</summary>
    public void Invalidate(GuestPhysical guestPhysical)
    {
        nestedTlb?.InvalidatePage(guestPhysical.Value);
        nestedWalkCache.Flush();
    }

    /// <summary>INVEPT: drops every cached nested translation (the nested TLB and the nested page-walk cache).</summary>
    public void Flush()
    {
        nestedTlb?.Flush(includingGlobal: true);
        nestedWalkCache.Flush();
    }

    private static bool Allows(TranslationRights rights, AccessKind kind) => kind switch
    {
        AccessKind.Write => (rights & TranslationRights.Writable) != 0,
        AccessKind.Execute => (rights & TranslationRights.Executable) != 0,
        _ => true,
    };

    private NestedPageFault Violation(ulong guestPhysical, AccessKind kind, bool finalTranslation, ulong linear, TranslationRights rights, bool present)
    {
        counters.NestedPageFaults++;
        ulong qualification = kind switch
        {
            AccessKind.Write => VmExit.QualificationWrite,
            AccessKind.Execute => VmExit.QualificationFetch,
            _ => VmExit.QualificationRead,
        };
        if (present)
        {
            // Bits 5:3: what the entries allowed (read, write, execute).
            qualification |= 1UL << 3;
            qualification |= (rights & TranslationRights.Writable) != 0 ? 1UL << 4 : 0;
            qualification |= (rights & TranslationRights.Executable) != 0 ? 1UL << 5 : 0;
        }
        qualification |= VmExit.QualificationLinearValid | (finalTranslation ? VmExit.QualificationFinalTranslation : 0);
        return new NestedPageFault(new VmExit
        {
            Reason = ExitReason.EptViolation,
            Qualification = qualification,
            GuestLinear = linear,
            GuestPhysical = guestPhysical,
        });
    }
}
