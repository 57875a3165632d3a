using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;

namespace Nestor.Integration.Tests;

/// <summary>The CPU's and the MMU's counters as enum-indexed vectors (issue 11): the engine reports them by loops
/// over the enums, under the names and in the order the CLI and JSON have always used.</summary>
public sealed class CounterVectorTests
{
    // The contract of `nestor run --stats` and `--json`: written out once here, so that a renamed or reordered
    // enum member shows up as a failing test, not as a silently different report.
    private static readonly string[] ReportedOrder =
    [
        "instructions_retired", "instructions_per_second", "memory_reads", "memory_writes", "instructions_decoded",
        "decode_cache_invalidations", "decode_cache_evictions", "translations", "itlb_hits", "itlb_misses", "dtlb_hits",
        "dtlb_misses", "page_walks", "page_walk_references", "page_walk_cache_hits", "accessed_dirty_writes",
        "page_faults", "tlb_flushes", "system_calls", "software_interrupts", "external_interrupts", "apic_timer_interrupts",
    ];

    private static readonly string[] NestedOrder =
    [
        "nested_tlb_hits", "nested_tlb_misses", "nested_walks", "nested_walk_references", "nested_walk_cache_hits",
        "nested_page_faults",
    ];

    [Fact]
    public void Sim_engine_reports_the_counter_vectors_under_the_same_names_in_the_same_order()
    {
        var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        var (run, _, vm) = SimEngineTests.RunWithResult(new KernelImageSource("nestoros", BuiltInGuests.NestorOS(), KernelFormat.Elf), engine: engine);
        vm.Dispose();
        var names = run.Counters.Select(c => c.Name).ToList();
        Assert.Equal(ReportedOrder, names.Take(ReportedOrder.Length));
        int nested = names.IndexOf(NestedOrder[0]);
        Assert.True(nested > 0, "nested paging reports its nested-walk counters");
        Assert.Equal(NestedOrder, names.Skip(nested).Take(NestedOrder.Length));

        // The values are the vectors' own: each reported count is its counter's, and a name shared by the three
        // walk-cache levels is their sum.
        var reported = run.Counters.ToDictionary(c => c.Name, c => (long)c.Value);
        var cpu = run.Machine!.Cpu.Counters;
        var mmu = run.Machine.Cpu.Mmu.Counters;
        foreach (var (counter, count) in cpu.Counts)
        {
            if (CpuCounters.ReportedName(counter) is { } name)
            {
                Assert.Equal(count, reported[name]);
            }
        }
        foreach (var group in mmu.Counts.GroupBy(c => MmuCounters.ReportedName(c.Counter)))
        {
            Assert.Equal(group.Sum(c => c.Count), reported[group.Key]);
        }
        Assert.True(mmu.WalkCacheHits[0] + mmu.WalkCacheHits[1] + mmu.WalkCacheHits[2] > 0, "NestorOS's walks hit the walk cache");
        Assert.Equal(mmu.WalkCacheHits[0] + mmu.WalkCacheHits[1] + mmu.WalkCacheHits[2], reported["page_walk_cache_hits"]);
        Assert.Equal(cpu.InstructionsRetired, cpu[CpuCounter.InstructionsRetired]);
    }

    [Fact]
    public void Field_like_accessors_and_the_indexer_are_one_slot_of_the_vector()
    {
        var cpu = new CpuCounters();
        cpu.InstructionsRetired += 5;
        cpu[CpuCounter.InstructionsRetired]++;
        cpu.PortWrites = 3;
        Assert.Equal(6, cpu[CpuCounter.InstructionsRetired]);
        Assert.Equal([(CpuCounter.InstructionsRetired, 6L), (CpuCounter.PortWrites, 3L)], cpu.Counts.Where(c => c.Count != 0));

        var mmu = new MmuCounters();
        mmu.WalkCacheHits[1]++;
        mmu.NestedWalkCacheHits[2] += 2;
        mmu.TlbFlushes++;
        Assert.Equal(1, mmu[MmuCounter.WalkCacheSkippedPdpte]);
        Assert.Equal(2, mmu[MmuCounter.NestedWalkCacheSkippedPde]);
        Assert.Equal([(MmuCounter.WalkCacheSkippedPdpte, 1L), (MmuCounter.TlbFlushes, 1L), (MmuCounter.NestedWalkCacheSkippedPde, 2L)],
            mmu.Counts.Where(c => c.Count != 0));
    }
}
