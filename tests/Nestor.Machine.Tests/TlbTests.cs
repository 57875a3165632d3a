using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;
using static Nestor.Machine.Tests.TestMemory;

namespace Nestor.Machine.Tests;

public class TlbTests
{
    private static (TestMemory Memory, Mmu Mmu) Setup(MmuConfiguration configuration, bool globalPages = false, bool pcid = false)
    {
        var m = new TestMemory();
        var mmu = new Mmu(m.Memory, configuration);
        mmu.SetControlRegisters(PagingControls.LongMode4Level(m.Cr3) with { GlobalPages = globalPages, ProcessContextIdentifiers = pcid });
        return (m, mmu);
    }

    private static readonly MmuConfiguration Small = new(null, new TlbConfiguration(4, 4), 0);

    [Fact]
    public void A_second_access_hits_the_tlb_and_walks_no_more()
    {
        var (m, mmu) = Setup(Small);
        m.Map(0x1000, 0x200000, P | W);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        mmu.Translate(0x1abc, AccessKind.Read, false, false, out ulong physical);
        Assert.Equal(0x200abcUL, physical);
        Assert.Equal((1L, 1L, 1L), (mmu.Counters.Walks, mmu.Counters.DataTlbHits, mmu.Counters.DataTlbMisses));
    }

    [Fact]
    public void A_stale_entry_is_used_until_invlpg()
    {
        var (m, mmu) = Setup(Small);
        var entries = m.Map(0x1000, 0x200000, P | W);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        m.Write(entries[^1], 0x300000 | P | W | A); // remap without telling the TLB
        mmu.Translate(0x1000, AccessKind.Read, false, false, out ulong stale);
        Assert.Equal(0x200000UL, stale); // what real hardware does too: the TLB is not coherent with memory
        mmu.InvalidatePage(new GuestVirtual(0x1000));
        mmu.Translate(0x1000, AccessKind.Read, false, false, out ulong fresh);
        Assert.Equal(0x300000UL, fresh);
    }

    [Fact]
    public void Least_recently_used_entry_is_evicted_when_the_tlb_is_full()
    {
        var (m, mmu) = Setup(Small);
        for (ulong i = 0; i < 5; i++)
        {
            m.Map(i << 12, 0x200000 + (i << 12), P | W);
        }
        for (ulong i = 0; i < 4; i++)
        {
            mmu.Translate(i << 12, AccessKind.Read, false, false, out _);
        }
        mmu.Translate(0, AccessKind.Read, false, false, out _);        // page 0 is now the most recent
        mmu.Translate(4UL << 12, AccessKind.Read, false, false, out _); // evicts page 1
        long walks = mmu.Counters.Walks;
        mmu.Translate(0, AccessKind.Read, false, false, out _);
        Assert.Equal(walks, mmu.Counters.Walks);
        mmu.Translate(1UL << 12, AccessKind.Read, false, false, out _);
        Assert.Equal(walks + 1, mmu.Counters.Walks);
    }

    [Fact]
    public void A_large_page_takes_one_entry_for_its_whole_reach()
    {
        var (m, mmu) = Setup(Small);
        m.Map(0x4000_0000, 0x0060_0000, P | W, leafLevel: 2);
        for (ulong offset = 0; offset < 0x20_0000; offset += 0x1000)
        {
            mmu.Translate(0x4000_0000 + offset, AccessKind.Read, false, false, out _);
        }
        Assert.Equal(1, mmu.Counters.Walks);
        Assert.Equal(1, mmu.DataTlb.Count);
    }

    [Fact]
    public void A_cr3_write_drops_non_global_entries_and_keeps_global_ones()
    {
        var (m, mmu) = Setup(Small, globalPages: true);
        m.Map(0x1000, 0x200000, P | W | G);
        m.Map(0x2000, 0x201000, P | W);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        mmu.Translate(0x2000, AccessKind.Read, false, false, out _);
        mmu.WriteCr3(m.Cr3);
        Assert.Equal(1, mmu.DataTlb.Count);
        long walks = mmu.Counters.Walks;
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        Assert.Equal(walks, mmu.Counters.Walks);
    }

    /// <summary>SDM Vol. 3A §4.10.4.1: toggling CR0.WP invalidates nothing (the TLB keeps paging-structure rights and
    /// each access applies the current WP), so no walk follows; toggling CR4.PGE invalidates every entry, global
    /// ones included, so the next access walks again and sees the page tables as they are now.</summary>
    [Fact]
    public void Toggling_cr0_wp_keeps_the_tlb_and_toggling_cr4_pge_drops_global_entries_too()
    {
        var (m, mmu) = Setup(Small, globalPages: true);
        var entries = m.Map(0x1000, 0x200000, P | W | G | A | D);
        m.Map(0x2000, 0x201000, P | A | D);
        var controls = PagingControls.LongMode4Level(m.Cr3) with { GlobalPages = true };
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        mmu.Translate(0x2000, AccessKind.Read, false, false, out _);
        long walks = mmu.Counters.Walks, flushes = mmu.Counters.TlbFlushes;
        mmu.SetControlRegisters(controls with { WriteProtect = false });
        Assert.Null(mmu.Translate(0x2000, AccessKind.Write, false, false, out _)); // WP = 0: a supervisor write to a read-only page
        mmu.SetControlRegisters(controls);
        Assert.Equal(PageFaultError.Present | PageFaultError.Write, mmu.Translate(0x2000, AccessKind.Write, false, false, out _));
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        Assert.Equal(walks + 1, mmu.Counters.Walks); // only the denied write re-walked (to fault on the tables as they are)
        Assert.Equal(flushes, mmu.Counters.TlbFlushes);
        Assert.Equal(2, mmu.DataTlb.Count);

        m.Write(entries[^1], 0x300000 | P | W | G | A | D); // remap the global page without INVLPG
        mmu.SetControlRegisters(controls with { GlobalPages = false });
        Assert.Equal(0, mmu.DataTlb.Count);
        mmu.SetControlRegisters(controls);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out ulong fresh);
        Assert.Equal(0x300000UL, fresh);
    }

    /// <summary>A whole-TLB flush retires entries by epoch: a non-global flush keeps the global entry, the full one
    /// drops it, and entries filled after a flush live on.</summary>
    [Fact]
    public void Flushes_drop_exactly_the_entries_they_cover_and_spare_later_fills()
    {
        var (m, mmu) = Setup(Small, globalPages: true);
        m.Map(0x1000, 0x200000, P | W | G);
        m.Map(0x2000, 0x201000, P | W);
        m.Map(0x3000, 0x202000, P | W);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        mmu.Translate(0x2000, AccessKind.Read, false, false, out _);
        mmu.DataTlb.Flush(includingGlobal: false);
        Assert.True(mmu.DataTlb.Holds(new GuestVirtual(0x1000), 0));
        Assert.False(mmu.DataTlb.Holds(new GuestVirtual(0x2000), 0));
        mmu.Translate(0x3000, AccessKind.Read, false, false, out _);
        Assert.Equal(2, mmu.DataTlb.Count);
        mmu.DataTlb.Flush(includingGlobal: true);
        Assert.Equal(0, mmu.DataTlb.Count);
        mmu.Translate(0x2000, AccessKind.Read, false, false, out _);
        Assert.True(mmu.DataTlb.Holds(new GuestVirtual(0x2000), 0));
        Assert.Equal(1, mmu.DataTlb.Count);
    }

    [Fact]
    public void Pcid_tagged_entries_survive_a_no_flush_cr3_switch_and_serve_their_own_context_only()
    {
        var (m, mmu) = Setup(Small, pcid: true);
        m.Map(0x1000, 0x200000, P | W);
        mmu.WriteCr3(m.Cr3 | 1);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);   // cached for PCID 1
        mmu.WriteCr3(m.Cr3 | 2 | (1UL << 63));                         // PCID 2, no flush
        long walks = mmu.Counters.Walks;
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);   // PCID 2 has no entry
        Assert.Equal(walks + 1, mmu.Counters.Walks);
        mmu.WriteCr3(m.Cr3 | 1 | (1UL << 63));                         // back to PCID 1, no flush
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        Assert.Equal(walks + 1, mmu.Counters.Walks);
        Assert.Equal(2, mmu.DataTlb.Count);
    }

    [Fact]
    public void Invpcid_types_flush_one_context_or_everything()
    {
        var (m, mmu) = Setup(Small, globalPages: true, pcid: true);
        m.Map(0x1000, 0x200000, P | W);
        m.Map(0x2000, 0x201000, P | W | G);
        mmu.WriteCr3(m.Cr3 | 1);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        mmu.Translate(0x2000, AccessKind.Read, false, false, out _);
        mmu.InvalidateProcessContext(1, 2, default);   // another PCID: nothing of ours goes
        Assert.Equal(2, mmu.DataTlb.Count);
        mmu.InvalidateProcessContext(1, 1, default);   // our PCID: the non-global entry goes
        Assert.Equal(1, mmu.DataTlb.Count);
        mmu.InvalidateProcessContext(3, 0, default);   // all but global: the global one stays
        Assert.Equal(1, mmu.DataTlb.Count);
        mmu.InvalidateProcessContext(2, 0, default);   // everything
        Assert.Equal(0, mmu.DataTlb.Count);
    }

    [Fact]
    public void Split_tlbs_keep_instruction_and_data_translations_apart()
    {
        var (m, mmu) = Setup(new MmuConfiguration(new TlbConfiguration(4, 4), new TlbConfiguration(4, 4), 0));
        m.Map(0x1000, 0x200000, P | W);
        mmu.Translate(0x1000, AccessKind.Execute, false, false, out _);
        mmu.Translate(0x1000, AccessKind.Read, false, false, out _);
        Assert.Equal((1L, 1L), (mmu.Counters.InstructionTlbMisses, mmu.Counters.DataTlbMisses));
        Assert.Equal(1, mmu.InstructionTlb.Count);
        Assert.Equal(1, mmu.DataTlb.Count);
    }

    [Fact]
    public void The_page_walk_cache_lets_a_walk_to_a_neighbouring_page_read_only_the_pte()
    {
        var (m, mmu) = Setup(new MmuConfiguration(null, new TlbConfiguration(4, 4), 4));
        m.Map(0x40_0000_1000, 0x200000, P | W);
        m.Map(0x40_0000_2000, 0x201000, P | W);
        mmu.Translate(0x40_0000_1000, AccessKind.Read, false, false, out _);
        Assert.Equal(4, mmu.Counters.WalkReferences);
        mmu.Translate(0x40_0000_2000, AccessKind.Read, false, false, out ulong physical);
        Assert.Equal(0x201000UL, physical);
        Assert.Equal(5, mmu.Counters.WalkReferences);
        Assert.Equal(1, mmu.Counters.WalkCacheHits[2]);
    }

    [Fact]
    public void A_tlb_shape_that_cannot_exist_is_refused()
    {
        Assert.Throws<ArgumentException>(() => new Tlb(new TlbConfiguration(10, 4)));
    }
}
