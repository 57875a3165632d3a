using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;
using Nestor.Machine.Virtualization;
using static Nestor.Machine.Tests.TestMemory;

namespace Nestor.Machine.Tests;

/// <summary>The 2-D walk of nested paging over hand-built guest and nested tables: its memory references counted
/// exactly against Bhargava et al.'s (n + 1)(m + 1) − 1, its caches, its explanation and its EPT violations.</summary>
public class NestedWalkTests
{
    /// <summary>Guest-physical g is host-physical g + Offset, so a walk that forgot a nested translation reads the
    /// wrong memory and fails.</summary>
    private const ulong Offset = 0x40_0000;
    private const ulong Rwx = NestedEntry.ReadWriteExecute;

    private sealed class NestedSetup
    {
        public readonly TestMemory Host = new(16);
        public readonly ulong NestedRoot;
        private ulong nextGuestTable = 0x1000;

        public NestedSetup(int nestedLeafLevel)
        {
            NestedRoot = Host.NewTable();
            NestedLeafLevel = nestedLeafLevel;
            GuestCr3 = NewGuestTable();
        }

        public int NestedLeafLevel { get; }
        public ulong GuestCr3 { get; }

        private ulong NewGuestTable()
        {
            ulong table = nextGuestTable;
            nextGuestTable += 0x1000;
            MapNested(table);
            return table;
        }

        /// <summary>Maps the guest-physical page at <paramref name="guestPhysical"/> to guest-physical + Offset, with
        /// a 4 KiB leaf (or the 2 MiB page around it).</summary>
        public void MapNested(ulong guestPhysical)
        {
            ulong table = NestedRoot;
            for (int level = 0; ; level++)
            {
                ulong entryAddress = table + ((guestPhysical >> (39 - 9 * level)) & 511) * 8;
                if (level == NestedLeafLevel)
                {
                    ulong pageMask = NestedLeafLevel == 2 ? 0x1F_FFFFUL : 0xFFFUL;
                    Host.Write(entryAddress, ((guestPhysical & ~pageMask) + Offset) | Rwx | (NestedLeafLevel == 2 ? NestedEntry.LargePage : 0));
                    return;
                }
                ulong entry = Host.Read(entryAddress);
                if ((entry & Rwx) == 0)
                {
                    entry = Host.NewTable() | Rwx;
                    Host.Write(entryAddress, entry);
                }
                table = entry & NestedEntry.AddressMask;
            }
        }

        /// <summary>Maps guest-linear <paramref name="linear"/> to guest-physical <paramref name="guestPhysical"/> in the
        /// guest's own tables (which live in guest-physical memory), and the data page in the nested table.</summary>
        public void MapGuest(ulong linear, ulong guestPhysical, int leafLevel, bool mapNested = true)
        {
            ulong table = GuestCr3;
            for (int level = 0; ; level++)
            {
                ulong entryAddress = table + ((linear >> (39 - 9 * level)) & 511) * 8;
                if (level == leafLevel)
                {
                    Host.Write(entryAddress + Offset, guestPhysical | P | W | (leafLevel < 3 ? PS : 0));
                    if (mapNested)
                    {
                        MapNested(guestPhysical);
                    }
                    return;
                }
                ulong entry = Host.Read(entryAddress + Offset);
                if ((entry & P) == 0)
                {
                    entry = NewGuestTable() | P | W;
                    Host.Write(entryAddress + Offset, entry);
                }
                table = entry & 0x000F_FFFF_FFFF_F000;
            }
        }

        public Mmu NewMmu(MmuConfiguration configuration)
        {
            var mmu = new Mmu(Host.Memory, configuration);
            mmu.SetControlRegisters(PagingControls.LongMode4Level(GuestCr3));
            mmu.SetNestedPaging(true, new HostPhysical(NestedRoot));
            return mmu;
        }
    }

    private static readonly MmuConfiguration NoCaches =
        new(null, new TlbConfiguration(16, 4), 0) { NestedPaging = NestedPagingConfiguration.None };

    [Theory]
    [InlineData(3, 3, 0x0010_0000UL, 24)]   // 4 guest levels over 4 nested levels: (4 + 1)(4 + 1) − 1
    [InlineData(2, 3, 0x0020_0000UL, 19)]   // a 2 MiB guest page: (3 + 1)(4 + 1) − 1
    [InlineData(3, 2, 0x0010_0000UL, 19)]   // 2 MiB nested pages: (4 + 1)(3 + 1) − 1
    [InlineData(2, 2, 0x0000_0000UL, 15)]   // both: (3 + 1)(3 + 1) − 1
    [InlineData(1, 3, 0x4000_0000UL, 14)]   // a 1 GiB guest page over 4 nested levels: (2 + 1)(4 + 1) − 1
    public void A_cold_two_dimensional_walk_makes_n_plus_1_times_m_plus_1_minus_1_references(
        int guestLeafLevel, int nestedLeafLevel, ulong guestPhysical, int references)
    {
        const ulong Linear = 0x0000_7000_0012_3456;
        var setup = new NestedSetup(nestedLeafLevel);
        ulong guestPageMask = (1UL << (39 - 9 * guestLeafLevel)) - 1;
        setup.MapGuest(Linear & ~guestPageMask, guestPhysical, guestLeafLevel);
        setup.MapNested(guestPhysical | (Linear & guestPageMask)); // the page actually touched
        var mmu = setup.NewMmu(NoCaches);

        Assert.Null(mmu.Translate(Linear, AccessKind.Read, user: false, alignmentCheck: false, out ulong host));

        Assert.Equal(guestPhysical + (Linear & guestPageMask) + Offset, host);
        Assert.Equal(references, mmu.Counters.WalkReferences);
        Assert.Equal(1, mmu.Counters.Walks);
    }

    [Fact]
    public void The_native_walk_of_the_same_mapping_makes_four()
    {
        var m = new TestMemory();
        m.Map(0x0000_7000_0012_3000, 0x10_0000, P | W);
        var mmu = new Mmu(m.Memory, NoCaches);
        mmu.SetControlRegisters(PagingControls.LongMode4Level(m.Cr3));
        Assert.Null(mmu.Translate(0x0000_7000_0012_3456, AccessKind.Read, false, false, out _));
        Assert.Equal(4, mmu.Counters.WalkReferences);
    }

    [Fact]
    public void The_nested_tlb_and_both_walk_caches_cut_the_next_walk_to_two_references()
    {
        const ulong Linear = 0x0000_7000_0012_3000;
        var setup = new NestedSetup(3);
        setup.MapGuest(Linear, 0x10_0000, 3);
        setup.MapGuest(Linear + 0x1000, 0x10_1000, 3);
        var mmu = setup.NewMmu(MmuConfiguration.Default);
        Assert.Null(mmu.Translate(Linear, AccessKind.Read, false, false, out _));
        // Even the first walk is shorter: the guest's four tables and the data page all lie in one 2 MiB guest-physical
        // region, so after the first nested walk (4 references) the nested walk cache leaves one reference for each
        // of the other four: 4 + 4 × 1 (guest entries) + 4 × 1 = 12, not 24.
        Assert.Equal(12, mmu.Counters.WalkReferences);
        long nestedTlbHits = mmu.Counters.NestedTlbHits, nestedCacheHits = mmu.Counters.NestedWalkCacheHits[2];

        // The next page: the guest walk cache skips to the guest page table, whose page the nested TLB translates; the
        // data page misses the nested TLB but the nested walk cache skips to its nested page table: 1 + 1 references.
        Assert.Null(mmu.Translate(Linear + 0x1000, AccessKind.Read, false, false, out ulong host));
        Assert.Equal(0x10_1000 + Offset, host);
        Assert.Equal(14, mmu.Counters.WalkReferences);
        Assert.Equal(nestedTlbHits + 1, mmu.Counters.NestedTlbHits);
        Assert.Equal(nestedCacheHits + 1, mmu.Counters.NestedWalkCacheHits[2]);
    }

    [Fact]
    public void Explaining_a_walk_lists_all_24_references_in_order_and_changes_nothing()
    {
        const ulong Linear = 0x0000_7000_0012_3456;
        var setup = new NestedSetup(3);
        setup.MapGuest(Linear & ~0xFFFUL, 0x10_0000, 3);
        var mmu = setup.NewMmu(MmuConfiguration.Default);
        var trace = new List<WalkStep>();

        Assert.Null(mmu.Explain(new GuestVirtual(Linear), AccessKind.Read, user: false, trace, out var result));

        Assert.Equal(24, trace.Count);
        var expected = new List<(WalkDimension, int)>();
        for (int guestLevel = 0; guestLevel < 4; guestLevel++)
        {
            for (int n = 0; n < 4; n++)
            {
                expected.Add((WalkDimension.Nested, n));
            }
            expected.Add((WalkDimension.Guest, guestLevel));
        }
        for (int n = 0; n < 4; n++)
        {
            expected.Add((WalkDimension.Nested, n));
        }
        Assert.Equal(expected, trace.Select(s => (s.Dimension, s.Level)));
        Assert.Equal(setup.GuestCr3, trace[4].TableAddress);              // the guest PML4, a guest-physical address
        Assert.Equal(setup.GuestCr3 + Offset + 8 * 224, trace[4].EntryAddress); // read at its host-physical address
        Assert.Equal(0x10_0000 + Offset, result.PhysicalPage);
        Assert.Equal(0, mmu.Counters.WalkReferences);                      // no counter, cache or A bit touched
        Assert.Equal(0UL, setup.Host.Read(setup.GuestCr3 + Offset + 8 * 224) & A);
    }

    [Fact]
    public void A_guest_physical_page_missing_from_the_nested_table_is_an_ept_violation()
    {
        const ulong Linear = 0x0000_7000_0012_3456;
        var setup = new NestedSetup(3);
        setup.MapGuest(Linear & ~0xFFFUL, 0x30_0000, 3, mapNested: false);
        var mmu = setup.NewMmu(NoCaches);

        var fault = Assert.Throws<NestedPageFault>(() => mmu.Translate(Linear, AccessKind.Write, false, false, out _));

        Assert.Equal(ExitReason.EptViolation, fault.Exit.Reason);
        Assert.Equal(0x30_0456UL, fault.Exit.GuestPhysical);
        Assert.Equal(Linear, fault.Exit.GuestLinear);
        Assert.Equal(VmExit.QualificationWrite | VmExit.QualificationLinearValid | VmExit.QualificationFinalTranslation, fault.Exit.Qualification);
        Assert.Equal(1, mmu.Counters.NestedPageFaults);
    }

    [Fact]
    public void An_accessed_bit_update_through_a_read_only_nested_entry_is_an_ept_violation_for_writing_and_writes_nothing()
    {
        // A guest page table whose guest-physical page the nested table maps read-only (a page shared copy-on-write):
        // setting the A bit of its PTE is a write to it, so it must fault for writing before the entry changes
        // (SDM Vol. 3C §29.3.3.2), not be written under the read-only mapping.
        const ulong Linear = 0x0000_7000_0012_3456;
        var setup = new NestedSetup(3);
        setup.MapGuest(Linear & ~0xFFFUL, 0x30_0000, 3);
        ulong pageTable = setup.GuestCr3;
        for (int level = 0; level < 3; level++)
        {
            pageTable = setup.Host.Read(pageTable + Offset + ((Linear >> (39 - 9 * level)) & 511) * 8) & NestedEntry.AddressMask;
        }
        ulong pte = pageTable + ((Linear >> 12) & 511) * 8;
        ulong nestedTable = setup.NestedRoot;
        for (int level = 0; level < 3; level++)
        {
            nestedTable = setup.Host.Read(nestedTable + ((pageTable >> (39 - 9 * level)) & 511) * 8) & NestedEntry.AddressMask;
        }
        ulong nestedLeaf = nestedTable + ((pageTable >> 12) & 511) * 8;
        setup.Host.Write(nestedLeaf, setup.Host.Read(nestedLeaf) & ~NestedEntry.Write);
        var mmu = setup.NewMmu(NoCaches);

        var fault = Assert.Throws<NestedPageFault>(() => mmu.Translate(Linear, AccessKind.Read, false, false, out _));

        Assert.Equal(ExitReason.EptViolation, fault.Exit.Reason);
        Assert.Equal(pte, fault.Exit.GuestPhysical);
        // A write, to a present entry allowing read and execute, of a guest paging structure (not the final translation).
        Assert.Equal(VmExit.QualificationWrite | (1UL << 3) | (1UL << 5) | VmExit.QualificationLinearValid, fault.Exit.Qualification);
        Assert.Equal(0UL, setup.Host.Read(pte + Offset) & A);

        // Once the VMM makes the page writable (its own copy), the walk sets the bit.
        setup.Host.Write(nestedLeaf, setup.Host.Read(nestedLeaf) | NestedEntry.Write);
        Assert.Null(mmu.Translate(Linear, AccessKind.Read, false, false, out _));
        Assert.Equal(A, setup.Host.Read(pte + Offset) & A);
    }
}
