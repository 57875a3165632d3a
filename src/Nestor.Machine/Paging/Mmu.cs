using System.Runtime.CompilerServices;
using Nestor.Machine.Addresses;
using Nestor.Machine.Memory;

namespace Nestor.Machine.Paging;

/// <summary>Shape of an MMU's caches.</summary>
/// <param name="InstructionTlb">The instruction TLB, or null for one unified TLB.</param>
/// <param name="DataTlb">The data TLB (the unified one when <paramref name="InstructionTlb"/> is null).</param>
/// <param name="WalkCacheEntriesPerLevel">Page-walk-cache entries per level; 0 disables it.</param>
public sealed record MmuConfiguration(TlbConfiguration? InstructionTlb, TlbConfiguration DataTlb, int WalkCacheEntriesPerLevel)
{
    /// <summary>Split 64-entry 4-way TLBs and a 16-entry-per-level page-walk cache.</summary>
    public static MmuConfiguration Default { get; } = new(TlbConfiguration.Default, TlbConfiguration.Default, 16);

    /// <summary>The nested TLB and nested page-walk cache used when nested paging is on.</summary>
    public NestedPagingConfiguration NestedPaging { get; init; } = NestedPagingConfiguration.Default;
}

/// <summary>Linear-to-physical translation for one CPU: TLB lookup, page walk on a miss, permission checks and
/// page-fault error codes, and the flushes INVLPG, INVPCID and CR3 writes cause (Intel SDM Vol. 3A §4.10).</summary>
public sealed class Mmu
{
    private readonly Tlb dataTlb;
    private readonly Tlb instructionTlb;
    private readonly PageWalkCache walkCache;
    private readonly PageWalker walker;
    private readonly NestedWalker nestedWalker;
    private readonly PhysicalMemory memory;
    private PagingControls controls;
    // The controls the 1-D walker uses: the guest's, with CR3 replaced by the shadow page table's root when a VMM
    // installed one (shadow paging: the hardware walks the shadow table, the guest sees its own CR3).
    private PagingControls walkControls;
    private HostPhysical? shadowRoot;
    private bool nestedPaging;

    public Mmu(PhysicalMemory memory, MmuConfiguration configuration)
    {
        this.memory = memory;
        Configuration = configuration;
        dataTlb = new Tlb(configuration.DataTlb);
        instructionTlb = configuration.InstructionTlb is null ? dataTlb : new Tlb(configuration.InstructionTlb);
        walkCache = new PageWalkCache(configuration.WalkCacheEntriesPerLevel);
        walker = new PageWalker(memory, walkCache, Counters);
        nestedWalker = new NestedWalker(memory, walkCache, configuration.NestedPaging, Counters);
    }

    /// <summary>Whether guest-physical addresses go through the nested page table (EPT on).</summary>
    public bool NestedPaging => nestedPaging;

    /// <summary>The host-physical root of the nested page table while nested paging is on.</summary>
    public HostPhysical NestedRoot => nestedWalker.NestedRoot;

    public NestedWalker Nested => nestedWalker;

    /// <summary>The page-walk cache (of the guest dimension, under nested paging).</summary>
    public PageWalkCache WalkCache => walkCache;

    /// <summary>The shadow page table's root the hardware walks instead of CR3, if a VMM installed one.</summary>
    public HostPhysical? ShadowRoot => shadowRoot;

    /// <summary>Turns nested paging on with the nested table at <paramref name="nestedRoot"/> (host-physical), or off;
    /// every cached translation is dropped.</summary>
    public void SetNestedPaging(bool enabled, HostPhysical nestedRoot = default)
    {
        nestedPaging = enabled;
        nestedWalker.NestedRoot = nestedRoot;
        nestedWalker.Flush();
        FlushAll(includingGlobal: true);
    }

    /// <summary>INVEPT: drops the nested caches and every combined translation derived from the nested table, after
    /// the VMM changed or removed a nested entry (adding one needs no flush: nothing cached it).</summary>
    public void InvalidateNested()
    {
        nestedWalker.Flush();
        FlushAll(includingGlobal: true);
    }

    /// <summary>INVEPT after the VMM removed or write-protected the nested entry of one guest-physical page: the nested
    /// TLB's translations of that page go, with the nested page-walk cache, and so do all combined (guest-linear to
    /// host-physical) translations, since any linear address may lead to the page — single-context INVEPT invalidates
    /// every combined mapping of the EPTP (SDM Vol. 3C §29.4.3.1, §29.4.3.4).</summary>
    public void InvalidateGuestPhysical(GuestPhysical guestPhysical)
    {
        nestedWalker.Invalidate(guestPhysical);
        FlushAll(includingGlobal: true);
    }

    /// <summary>Installs the root of a shadow page table (host-physical) that walks use in place of CR3, or removes it.
    /// The caller flushes what its change requires, as a VMM loading the real CR3 would.</summary>
    public void SetShadowRoot(HostPhysical? root)
    {
        shadowRoot = root;
        walkControls = root is { } r ? controls with { Cr3 = r.Value | (controls.Cr3 & 0xFFF) } : controls;
        NewGeneration();
    }

    /// <summary>Explains the walk of <paramref name="linear"/> as it would happen now, without using or changing any
    /// cache, counter or accessed bit: every memory reference in order (up to 24 for a 2-D walk).</summary>
    /// <param name="root">Without nested paging: walk from this top-level table instead of the current one (the
    /// host-physical table the hardware walks, a shadow root under shadow paging).</param>
    /// <param name="guestRoot">Under nested paging: walk from this guest CR3 (guest-physical) instead of the current one.</param>
    public PageFaultError? Explain(GuestVirtual linear, AccessKind kind, bool user, List<WalkStep> trace, out WalkResult result,
        HostPhysical? root = null, GuestPhysical? guestRoot = null)
    {
        var scratch = new MmuCounters();
        var noCache = new PageWalkCache(0);
        if (nestedPaging)
        {
            var nested = new NestedWalker(memory, noCache, NestedPagingConfiguration.None, scratch) { NestedRoot = nestedWalker.NestedRoot };
            return nested.Walk(linear.Value, kind, user, false, guestRoot is { } guestCr3 ? controls with { Cr3 = guestCr3.Value } : controls, out result, trace);
        }
        if (root is { } top)
        {
            return new PageWalker(memory, noCache, scratch).Walk(linear.Value, kind, user, false, walkControls with { Cr3 = top.Value }, out result, trace);
        }
        if (!controls.Paging)
        {
            result = new WalkResult { PhysicalPage = linear.Value & ~0xFFFUL, PageShift = 12 };
            return null;
        }
        return new PageWalker(memory, noCache, scratch).Walk(linear.Value, kind, user, false, walkControls, out result, trace);
    }

    public MmuConfiguration Configuration { get; }

    public MmuCounters Counters { get; } = new();

    public Tlb DataTlb => dataTlb;

    public Tlb InstructionTlb => instructionTlb;

    public PagingControls Controls => controls;

    /// <summary>Incremented whenever cached translations may have changed (any flush or control change), so that
    /// callers holding a translation of their own (the CPU's fetch and data fast paths) know to drop it.</summary>
    public long Generation { get; private set; }

    /// <summary>Incremented with <see cref="Generation"/> and also when only CR0.WP changed: a write fast path holds a
    /// translation found writable under one WP, which the other may refuse (§4.6.1), while fetches and reads do not
    /// depend on WP and keep theirs.</summary>
    public long WriteRightsGeneration { get; private set; }

    // Everything cached may have changed: the fast paths of fetches, reads and writes all look again.
    private void NewGeneration()
    {
        Generation++;
        WriteRightsGeneration++;
    }

    /// <summary>Installs new paging controls. Changing CR0.PG, CR4.PGE/PCIDE/SMEP/SMAP or EFER.NXE flushes the
    /// TLBs entirely (§4.10.4.1: these writes invalidate all translations, or are allowed to); changing CR0.WP alone
    /// flushes nothing. A CR3 write goes through <see cref="WriteCr3"/> instead.</summary>
    public void SetControlRegisters(in PagingControls value)
    {
        var previous = controls;
        controls = value;
        walkControls = shadowRoot is { } r ? controls with { Cr3 = r.Value | (controls.Cr3 & 0xFFF) } : controls;
        // SDM Vol. 3A §4.10.4.1 lists what MOV to CR0 invalidates: everything when it clears CR0.PG, nothing for
        // CR0.WP. The TLB holds the paging-structure rights (R/W, U/S, XD; §4.10.2.2) and every access combines them
        // with the current CR0.WP (§4.6.1, AccessRights.Check), and a denied access re-walks, so an entry filled
        // under one WP is right under the other. Toggling WP is a kernel's way to write its read-only pages
        // (kvm-unit-tests' vmexit toggle_cr0_wp does it in a loop): it keeps the TLB, and only the CPU's write fast
        // path, which cached "writable" under the old WP, looks again.
        if (previous != value && previous with { WriteProtect = value.WriteProtect } == value)
        {
            WriteRightsGeneration++;
            return;
        }
        NewGeneration();
        if (previous with { Cr3 = value.Cr3, WriteProtect = value.WriteProtect } != value)
        {
            FlushAll(includingGlobal: true);
        }
    }

    /// <summary>MOV to CR3: with PCIDs off, drops all non-global translations; with PCIDs on, drops the new PCID's
    /// non-global translations unless bit 63 (no-flush) is set (§4.10.4.1). The page-walk cache is always emptied.</summary>
    public void WriteCr3(ulong value)
    {
        bool noFlush = controls.ProcessContextIdentifiers && (value & (1UL << 63)) != 0;
        controls = controls with { Cr3 = value & ~(1UL << 63) };
        walkControls = shadowRoot is { } r ? controls with { Cr3 = r.Value | (controls.Cr3 & 0xFFF) } : controls;
        NewGeneration();
        walkCache.Flush();
        Counters.TlbFlushes++;
        if (!controls.ProcessContextIdentifiers)
        {
            dataTlb.Flush(includingGlobal: false);
            if (instructionTlb != dataTlb)
            {
                instructionTlb.Flush(includingGlobal: false);
            }
        }
        else if (!noFlush)
        {
            dataTlb.FlushProcessContext(controls.ProcessContext);
            if (instructionTlb != dataTlb)
            {
                instructionTlb.FlushProcessContext(controls.ProcessContext);
            }
        }
    }

    /// <summary>INVLPG.</summary>
    public void InvalidatePage(GuestVirtual linear)
    {
        NewGeneration();
        dataTlb.InvalidatePage(linear.Value);
        if (instructionTlb != dataTlb)
        {
            instructionTlb.InvalidatePage(linear.Value);
        }
        walkCache.Flush();
    }

    /// <summary>INVPCID (SDM Vol. 2A): type 0 one address (all PCIDs here: invalidating more is always allowed),
    /// 1 one PCID's non-global translations, 2 everything including global ones, 3 everything but global ones.</summary>
    public void InvalidateProcessContext(int type, ushort processContext, GuestVirtual linear)
    {
        switch (type)
        {
            case 0:
                InvalidatePage(linear);
                break;
            case 1:
                NewGeneration();
                dataTlb.FlushProcessContext(processContext);
                if (instructionTlb != dataTlb)
                {
                    instructionTlb.FlushProcessContext(processContext);
                }
                walkCache.Flush();
                break;
            default:
                FlushAll(includingGlobal: type == 2);
                break;
        }
    }

    /// <summary>Drops everything cached.</summary>
    public void FlushAll(bool includingGlobal)
    {
        NewGeneration();
        dataTlb.Flush(includingGlobal);
        if (instructionTlb != dataTlb)
        {
            instructionTlb.Flush(includingGlobal);
        }
        walkCache.Flush();
        Counters.TlbFlushes++;
    }

    /// <summary>Translates <paramref name="linear"/> for an access. Returns null and sets <paramref name="physical"/>
    /// when allowed, otherwise the page-fault error code (CR2 would be <paramref name="linear"/>).</summary>
    /// <param name="user">A user-mode access (CPL 3).</param>
    /// <param name="alignmentCheck">RFLAGS.AC (the SMAP override).</param>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public PageFaultError? Translate(GuestVirtual linear, AccessKind kind, bool user, bool alignmentCheck, out HostPhysical physical)
    {
        var fault = Translate(linear.Value, kind, user, alignmentCheck, out ulong value);
        physical = new HostPhysical(value);
        return fault;
    }

    /// <summary>What the last successful <see cref="Translate(ulong, AccessKind, bool, bool, out ulong)"/> used: the
    /// slot of its TLB a lookup of the address finds now (<see cref="NoTlbSlot"/> when paging is off, so no TLB took
    /// part; <see cref="UncachedSlot"/> when a lookup would find another entry first) and that fill's stamp. The CPU's
    /// fast translations remember both, so that a fast hit is exactly the TLB hit it stands for (Tlb.TryUse).</summary>
    internal int LastSlot;

    /// <inheritdoc cref="LastSlot"/>
    internal ulong LastFilled;

    /// <summary><see cref="LastSlot"/> when no TLB took part (paging off).</summary>
    internal const int NoTlbSlot = -1;

    /// <summary><see cref="LastSlot"/> when the translation must not be cached outside the TLB.</summary>
    internal const int UncachedSlot = -2;

    // The interpreter's own entry (it keeps addresses as ulong in its inner loop, issue 11): the typed overload
    // above is this one, wrapped.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal PageFaultError? Translate(ulong linear, AccessKind kind, bool user, bool alignmentCheck, out ulong physical)
    {
        Counters.Translations++;
        if (!controls.Paging && !nestedPaging)
        {
            LastSlot = NoTlbSlot;
            LastFilled = 0;
            physical = linear;
            return null;
        }
        if (controls.Paging && !controls.LongMode)
        {
            throw new NotSupportedException("paging outside long mode (32-bit and PAE paging) is not modelled yet");
        }
        var tlb = kind == AccessKind.Execute ? instructionTlb : dataTlb;
        int index = tlb.Lookup(linear, controls.ProcessContext);
        if (index >= 0)
        {
            ref readonly var e = ref tlb[index];
            // A write through an entry whose D bit is clear re-walks to set D (§4.8); a denied access re-walks too,
            // so the fault reflects the page tables, not a stale entry.
            if ((kind != AccessKind.Write || (e.Rights & TranslationRights.Dirty) != 0) &&
                AccessRights.Check(e.Rights, kind, user, alignmentCheck, controls) is null)
            {
                CountHit(kind);
                LastSlot = index;
                LastFilled = e.Filled;
                physical = e.PhysicalPage | (linear & ((1UL << e.PageShift) - 1));
                return null;
            }
        }
        CountMiss(kind);
        WalkResult walk;
        var fault = nestedPaging
            ? nestedWalker.Walk(linear, kind, user, alignmentCheck, controls, out walk)
            : walker.Walk(linear, kind, user, alignmentCheck, walkControls, out walk);
        if (fault is not null)
        {
            physical = 0;
            return fault;
        }
        int slot = tlb.Insert(linear, walk.PhysicalPage, walk.PageShift, walk.Rights, controls.ProcessContext);
        LastSlot = slot >= 0 ? slot : UncachedSlot;
        LastFilled = slot >= 0 ? tlb.FilledStamp(slot) : 0;
        physical = walk.PhysicalPage | (linear & ((1UL << walk.PageShift) - 1));
        return null;
    }

    private void CountHit(AccessKind kind)
    {
        if (kind == AccessKind.Execute)
        {
            Counters.InstructionTlbHits++;
        }
        else
        {
            Counters.DataTlbHits++;
        }
    }

    private void CountMiss(AccessKind kind)
    {
        if (kind == AccessKind.Execute)
        {
            Counters.InstructionTlbMisses++;
        }
        else
        {
            Counters.DataTlbMisses++;
        }
    }
}
