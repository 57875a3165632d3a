using Nestor.Machine.Paging;
using static Nestor.Machine.Tests.TestMemory;

namespace Nestor.Machine.Tests;

public class PageWalkTests
{
    private static Mmu NewMmu(TestMemory m, MmuConfiguration? configuration = null, PagingControls? controls = null)
    {
        var mmu = new Mmu(m.Memory, configuration ?? new MmuConfiguration(null, new TlbConfiguration(16, 4), 0));
        mmu.SetControlRegisters(controls ?? PagingControls.LongMode4Level(m.Cr3));
        return mmu;
    }

    [Theory]
    [InlineData(3, 0x0000_7000_1234_5678UL, 0x0040_0000UL, 4)]   // 4 KiB page: PML4E, PDPTE, PDE, PTE
    [InlineData(2, 0x0000_7000_1234_5678UL, 0x0060_0000UL, 3)]   // 2 MiB page: one reference fewer
    [InlineData(1, 0x0000_7000_1234_5678UL, 0x4000_0000UL, 2)]   // 1 GiB page: two fewer
    public void A_cold_walk_reads_one_entry_per_level_and_translates(int leafLevel, ulong linear, ulong frame, int references)
    {
        var m = new TestMemory();
        m.Map(linear, frame, P | W, leafLevel: leafLevel);
        var mmu = NewMmu(m);
        Assert.Null(mmu.Translate(linear, AccessKind.Read, user: false, alignmentCheck: false, out ulong physical));
        ulong offsetMask = (1UL << (39 - 9 * leafLevel)) - 1;
        Assert.Equal(frame | (linear & offsetMask), physical);
        Assert.Equal(1, mmu.Counters.Walks);
        Assert.Equal(references, mmu.Counters.WalkReferences);
    }

    [Fact]
    public void Accessed_bits_are_set_on_every_level_and_dirty_only_on_a_write_to_the_leaf()
    {
        var m = new TestMemory();
        const ulong linear = 0x40_0000_1000;
        var entries = m.Map(linear, 0x200000, P | W);
        var mmu = NewMmu(m);
        Assert.Null(mmu.Translate(linear, AccessKind.Read, false, false, out _));
        Assert.All(entries, e => Assert.NotEqual(0UL, m.Read(e) & A));
        Assert.Equal(0UL, m.Read(entries[^1]) & D);
        Assert.Null(mmu.Translate(linear, AccessKind.Write, false, false, out _)); // TLB entry is clean: re-walk sets D
        Assert.NotEqual(0UL, m.Read(entries[^1]) & D);
        Assert.Equal(0UL, m.Read(entries[0]) & D);
        Assert.Equal(2, mmu.Counters.Walks);
    }

    [Fact]
    public void A_faulting_access_sets_no_accessed_bit()
    {
        var m = new TestMemory();
        const ulong linear = 0x40_0000_1000;
        var entries = m.Map(linear, 0x200000, P); // read-only
        var mmu = NewMmu(m);
        Assert.Equal(PageFaultError.Present | PageFaultError.Write | PageFaultError.User,
            mmu.Translate(linear, AccessKind.Write, user: true, false, out _));
        Assert.All(entries, e => Assert.Equal(0UL, m.Read(e) & A));
    }

    /// <summary>SDM Vol. 3A §4.6 and §4.7, case by case (leaf rights; the upper levels grant everything).</summary>
    [Theory]
    // leaf flags, access, user, WP, SMEP, SMAP, AC, expected error (null = allowed)
    [InlineData(P | W | U, AccessKind.Write, true, true, false, false, false, null)]
    [InlineData(P | U, AccessKind.Write, true, true, false, false, false, PageFaultError.Present | PageFaultError.Write | PageFaultError.User)]
    [InlineData(P | W, AccessKind.Read, true, true, false, false, false, PageFaultError.Present | PageFaultError.User)]
    [InlineData(P | W | U | NX, AccessKind.Execute, true, true, false, false, false, PageFaultError.Present | PageFaultError.User | PageFaultError.InstructionFetch)]
    [InlineData(P | W | U | NX, AccessKind.Read, true, true, false, false, false, null)]
    [InlineData(P, AccessKind.Write, false, true, false, false, false, PageFaultError.Present | PageFaultError.Write)]
    [InlineData(P, AccessKind.Write, false, false, false, false, false, null)]                 // CR0.WP = 0
    [InlineData(P | U, AccessKind.Execute, false, true, false, false, false, null)]
    [InlineData(P | U, AccessKind.Execute, false, true, true, false, false, PageFaultError.Present | PageFaultError.InstructionFetch)] // SMEP
    [InlineData(P | U, AccessKind.Read, false, true, false, true, false, PageFaultError.Present)]                 // SMAP
    [InlineData(P | U, AccessKind.Read, false, true, false, true, true, null)]                                   // SMAP, RFLAGS.AC
    [InlineData(P | U | W, AccessKind.Write, false, true, false, true, false, PageFaultError.Present | PageFaultError.Write)]
    [InlineData(P | U, AccessKind.Write, false, false, false, true, true, null)]                                  // WP 0 + AC
    [InlineData(P | NX, AccessKind.Execute, false, true, false, false, false, PageFaultError.Present | PageFaultError.InstructionFetch)]
    [InlineData(0UL, AccessKind.Read, true, true, false, false, false, PageFaultError.User)]                      // not present
    [InlineData(0UL, AccessKind.Write, false, true, false, false, false, PageFaultError.Write)]
    [InlineData(0UL, AccessKind.Execute, true, true, false, false, false, PageFaultError.User | PageFaultError.InstructionFetch)]
    public void Permissions_and_error_codes_follow_the_sdm(ulong leaf, AccessKind kind, bool user, bool writeProtect,
        bool smep, bool smap, bool alignmentCheck, PageFaultError? expected)
    {
        var m = new TestMemory();
        const ulong linear = 0x1234_5000;
        m.Map(linear, 0x300000, leaf);
        var controls = PagingControls.LongMode4Level(m.Cr3) with
        {
            WriteProtect = writeProtect,
            SupervisorExecutionPrevention = smep,
            SupervisorAccessPrevention = smap,
        };
        var mmu = NewMmu(m, controls: controls);
        Assert.Equal(expected, mmu.Translate(linear, kind, user, alignmentCheck, out _));
    }

    [Fact]
    public void Rights_are_the_intersection_of_all_levels()
    {
        var m = new TestMemory();
        const ulong linear = 0x7000_0000;
        m.Map(linear, 0x300000, P | W | U, upperFlags: P | U); // a read-only PDPTE/PDE above a writable PTE
        var mmu = NewMmu(m);
        Assert.Equal(PageFaultError.Present | PageFaultError.Write | PageFaultError.User,
            mmu.Translate(linear, AccessKind.Write, true, false, out _));
        Assert.Null(mmu.Translate(linear, AccessKind.Read, true, false, out _));
    }

    [Fact]
    public void Execute_disable_with_nx_off_is_a_reserved_bit()
    {
        var m = new TestMemory();
        m.Map(0x5000, 0x300000, P | W | NX);
        var mmu = NewMmu(m, controls: PagingControls.LongMode4Level(m.Cr3) with { NoExecute = false });
        Assert.Equal(PageFaultError.Present | PageFaultError.ReservedBit, mmu.Translate(0x5000, AccessKind.Read, false, false, out _));
    }

    [Fact]
    public void Paging_off_is_the_identity()
    {
        var m = new TestMemory();
        var mmu = NewMmu(m, controls: PagingControls.LongMode4Level(m.Cr3) with { Paging = false, LongMode = false });
        Assert.Null(mmu.Translate(0x12345, AccessKind.Write, false, false, out ulong physical));
        Assert.Equal(0x12345UL, physical);
    }
}
