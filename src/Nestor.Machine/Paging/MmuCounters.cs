using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Nestor.Machine.Paging;

/// <summary>The counted events of <see cref="MmuCounters"/>, as indices of its vector of counts. The order is the
/// order in which engines report them.</summary>
public enum MmuCounter
{
    /// <summary>Linear addresses translated.</summary>
    Translations,
    /// <summary>Instruction-TLB lookups that hit.</summary>
    InstructionTlbHits,
    /// <summary>Instruction-TLB lookups that missed.</summary>
    InstructionTlbMisses,
    /// <summary>Data-TLB lookups that hit.</summary>
    DataTlbHits,
    /// <summary>Data-TLB lookups that missed.</summary>
    DataTlbMisses,
    /// <summary>Page walks started (TLB misses that needed the page tables, plus re-walks to set D or to confirm a fault).</summary>
    Walks,
    /// <summary>Memory references made by page walks (reads of paging-structure entries).</summary>
    WalkReferences,
    /// <summary>Page-walk-cache hits that let the walk skip the PML4E.</summary>
    WalkCacheSkippedPml4e,
    /// <summary>Page-walk-cache hits that let the walk skip the PML4E and the PDPTE.</summary>
    WalkCacheSkippedPdpte,
    /// <summary>Page-walk-cache hits that let the walk skip the PML4E, the PDPTE and the PDE.</summary>
    WalkCacheSkippedPde,
    /// <summary>Writes back of accessed and dirty bits.</summary>
    AccessedDirtyWrites,
    /// <summary>Page faults the walks found.</summary>
    PageFaults,
    /// <summary>TLB flushes.</summary>
    TlbFlushes,
    /// <summary>Nested paging: nested-TLB lookups of guest-physical addresses that hit.</summary>
    NestedTlbHits,
    /// <summary>Nested paging: nested-TLB lookups of guest-physical addresses that missed.</summary>
    NestedTlbMisses,
    /// <summary>Walks of the nested page table (each turns one guest-physical address into a host-physical one).</summary>
    NestedWalks,
    /// <summary>The nested-table entries read; also counted in <see cref="WalkReferences"/>.</summary>
    NestedWalkReferences,
    /// <summary>Nested page-walk-cache hits that let the nested walk skip the PML4E.</summary>
    NestedWalkCacheSkippedPml4e,
    /// <summary>Nested page-walk-cache hits that let the nested walk skip the PML4E and the PDPTE.</summary>
    NestedWalkCacheSkippedPdpte,
    /// <summary>Nested page-walk-cache hits that let the nested walk skip the PML4E, the PDPTE and the PDE.</summary>
    NestedWalkCacheSkippedPde,
    /// <summary>Guest-physical accesses the nested table did not allow (EPT violations).</summary>
    NestedPageFaults,
}

/// <summary>Event counters of one MMU: a vector indexed by <see cref="MmuCounter"/> (so that subtraction and reports
/// are loops), with a field-like <c>ref</c> accessor per counter, incremented on the hot path without synchronization
/// (one vCPU per MMU).</summary>
public sealed class MmuCounters
{
    // The names engines report the counters under (the CLI prints them, JSON writes them): a contract. Adjacent
    // counters of one name are reported as their sum (the three page-walk-cache levels).
    private static readonly string[] ReportedNames =
    [
        "translations", "itlb_hits", "itlb_misses", "dtlb_hits", "dtlb_misses", "page_walks", "page_walk_references",
        "page_walk_cache_hits", "page_walk_cache_hits", "page_walk_cache_hits", "accessed_dirty_writes", "page_faults",
        "tlb_flushes", "nested_tlb_hits", "nested_tlb_misses", "nested_walks", "nested_walk_references",
        "nested_walk_cache_hits", "nested_walk_cache_hits", "nested_walk_cache_hits", "nested_page_faults",
    ];

    // The vector lives inside the object (an inline array), so that a counter is one field access away, as the
    // fields it replaced were; its length is checked against the enum by a test.
    internal const int Length = 21;

    private MmuCounterVector counts;

    /// <summary>The count of one counter, as a reference (read, written or incremented in place).</summary>
    public ref long this[MmuCounter counter]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ref counts[(int)counter];
    }

    /// <summary>Every counter with its count, in <see cref="MmuCounter"/> order.</summary>
    public IEnumerable<(MmuCounter Counter, long Count)> Counts => Enum.GetValues<MmuCounter>().Select(c => (c, this[c]));

    /// <summary>The name an engine reports <paramref name="counter"/> under (snake case); adjacent counters of one
    /// name are reported as their sum.</summary>
    public static string ReportedName(MmuCounter counter) => ReportedNames[(int)counter];

    /// <summary>Linear addresses translated.</summary>
    public ref long Translations => ref At(MmuCounter.Translations);
    /// <summary>Instruction-TLB lookups that hit.</summary>
    public ref long InstructionTlbHits => ref At(MmuCounter.InstructionTlbHits);
    /// <summary>Instruction-TLB lookups that missed.</summary>
    public ref long InstructionTlbMisses => ref At(MmuCounter.InstructionTlbMisses);
    /// <summary>Data-TLB lookups that hit.</summary>
    public ref long DataTlbHits => ref At(MmuCounter.DataTlbHits);
    /// <summary>Data-TLB lookups that missed.</summary>
    public ref long DataTlbMisses => ref At(MmuCounter.DataTlbMisses);
    /// <summary>Page walks started (TLB misses that needed the page tables, plus re-walks to set D or to confirm a fault).</summary>
    public ref long Walks => ref At(MmuCounter.Walks);
    /// <summary>Memory references made by page walks (reads of paging-structure entries).</summary>
    public ref long WalkReferences => ref At(MmuCounter.WalkReferences);
    /// <summary>Writes back of accessed and dirty bits.</summary>
    public ref long AccessedDirtyWrites => ref At(MmuCounter.AccessedDirtyWrites);
    /// <summary>Page-walk-cache hits by the level they let the walk skip to: [0] skipped the PML4E, [1] the PDPTE too,
    /// [2] the PDE too (a view of <see cref="MmuCounter.WalkCacheSkippedPml4e"/> and the two after it).</summary>
    public Span<long> WalkCacheHits => MemoryMarshal.CreateSpan(ref At(MmuCounter.WalkCacheSkippedPml4e), 3);
    /// <summary>Page faults the walks found.</summary>
    public ref long PageFaults => ref At(MmuCounter.PageFaults);
    /// <summary>TLB flushes.</summary>
    public ref long TlbFlushes => ref At(MmuCounter.TlbFlushes);
    /// <summary>Nested paging: nested-TLB lookups of guest-physical addresses that hit.</summary>
    public ref long NestedTlbHits => ref At(MmuCounter.NestedTlbHits);
    /// <summary>Nested paging: nested-TLB lookups of guest-physical addresses that missed.</summary>
    public ref long NestedTlbMisses => ref At(MmuCounter.NestedTlbMisses);
    /// <summary>Walks of the nested page table (each turns one guest-physical address into a host-physical one).</summary>
    public ref long NestedWalks => ref At(MmuCounter.NestedWalks);
    /// <summary>The nested-table entries read; also counted in <see cref="WalkReferences"/>.</summary>
    public ref long NestedWalkReferences => ref At(MmuCounter.NestedWalkReferences);
    /// <summary>Nested page-walk-cache hits by the level they let the nested walk skip to (a view of
    /// <see cref="MmuCounter.NestedWalkCacheSkippedPml4e"/> and the two after it).</summary>
    public Span<long> NestedWalkCacheHits => MemoryMarshal.CreateSpan(ref At(MmuCounter.NestedWalkCacheSkippedPml4e), 3);
    /// <summary>Guest-physical accesses the nested table did not allow (EPT violations).</summary>
    public ref long NestedPageFaults => ref At(MmuCounter.NestedPageFaults);

    /// <summary>Memory references per walk.</summary>
    public double ReferencesPerWalk => Walks == 0 ? 0 : (double)WalkReferences / Walks;

    /// <summary>TLB misses over lookups, instruction and data together.</summary>
    public double TlbMissRate
    {
        get
        {
            long lookups = InstructionTlbHits + InstructionTlbMisses + DataTlbHits + DataTlbMisses;
            return lookups == 0 ? 0 : (double)(InstructionTlbMisses + DataTlbMisses) / lookups;
        }
    }

    // The walkers and the TLBs bump these per translation: the index is a constant within the vector by
    // construction (one slot per enum member), so skip the bounds check and make the accessor as cheap as a field.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref long At(MmuCounter counter) => ref Unsafe.Add(ref Unsafe.As<MmuCounterVector, long>(ref counts), (int)counter);
}

[InlineArray(21)]
internal struct MmuCounterVector
{
    private long element;
}
