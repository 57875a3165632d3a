namespace Nestor.Machine.Paging;

/// <summary>Event counters of one MMU. Plain fields, incremented on the hot path without synchronization (one vCPU
/// per MMU).</summary>
public sealed class MmuCounters
{
    public long Translations;
    public long InstructionTlbHits;
    public long InstructionTlbMisses;
    public long DataTlbHits;
    public long DataTlbMisses;
    /// <summary>Page walks started (TLB misses that needed the page tables, plus re-walks to set D or to confirm a fault).</summary>
    public long Walks;
    /// <summary>Memory references made by page walks (reads of paging-structure entries).</summary>
    public long WalkReferences;
    /// <summary>Writes back of accessed and dirty bits.</summary>
    public long AccessedDirtyWrites;
    /// <summary>Page-walk-cache hits by the level they let the walk skip to: [0] skipped the PML4E, [1] the PDPTE too,
    /// [2] the PDE too.</summary>
    public readonly long[] WalkCacheHits = new long[3];
    public long PageFaults;
    public long TlbFlushes;
    /// <summary>Nested paging: nested-TLB lookups of guest-physical addresses that hit and missed.</summary>
    public long NestedTlbHits;
    public long NestedTlbMisses;
    /// <summary>Walks of the nested page table (each turns one guest-physical address into a host-physical one).</summary>
    public long NestedWalks;
    /// <summary>The nested-table entries read; also counted in <see cref="WalkReferences"/>.</summary>
    public long NestedWalkReferences;
    /// <summary>Nested page-walk-cache hits by the level they let the nested walk skip to.</summary>
    public readonly long[] NestedWalkCacheHits = new long[3];
    /// <summary>Guest-physical accesses the nested table did not allow (EPT violations).</summary>
    public long NestedPageFaults;

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
}
