using Nestor.Hypervisor.Devices.Assigned.Iommu;
using Nestor.Hypervisor.Memory;

namespace Nestor.Hypervisor.Tests.Devices.Assigned;

/// <summary>The VT-d-shaped remapping unit on its own: the table format as the specification lays it out (rev. 4,
/// §9.1 root entry, §9.3 context entry, §9.8 second-level entries), each fault reason, and the bounded fault
/// recording.</summary>
public class DmaRemappingUnitTests
{
    private static readonly SourceId Device = new(3, 5, 1);

    private static (HostFramePool Pool, DmaRemappingUnit Unit, StringWriter Diagnostics) Create()
    {
        var pool = new HostFramePool(64UL << 20, 16UL << 20);
        var diagnostics = new StringWriter();
        var unit = new DmaRemappingUnit(HostPhysicalSpace.OfFramePool(pool), new DmaFaultLog(diagnostics));
        unit.AttachDevice(Device, domain: 7);
        return (pool, unit, diagnostics);
    }

    [Fact]
    public void The_tables_have_vtd_root_and_context_entries_and_a_four_level_second_level_table()
    {
        var (pool, unit, _) = Create();
        using var owner = pool;
        ulong iova = 0x12_3456_7000, frame = pool.Allocate();
        unit.Map(Device, iova, frame, writable: true);
        var memory = pool.Memory;

        ulong root = memory.ReadUInt64(unit.RootTable + Device.Bus * 16UL);
        Assert.Equal(1UL, root & 1); // present
        Assert.Equal(0UL, root & 0xFFE); // reserved
        Assert.Equal(0UL, memory.ReadUInt64(unit.RootTable + Device.Bus * 16UL + 8)); // upper quadword reserved
        Assert.Equal(0UL, memory.ReadUInt64(unit.RootTable + 2 * 16)); // other buses: not present
        ulong contextTable = root & DmaRemappingUnit.AddressMask;
        ulong contextLow = memory.ReadUInt64(contextTable + (ulong)((5 << 3) | 1) * 16);
        ulong contextHigh = memory.ReadUInt64(contextTable + (ulong)((5 << 3) | 1) * 16 + 8);
        Assert.Equal(1UL, contextLow & 1);
        Assert.Equal(0UL, (contextLow >> 2) & 3); // translation type 00b: untranslated requests, second level
        Assert.Equal(0b010UL, contextHigh & 7); // AW: 48 bits, 4 levels
        Assert.Equal(7UL, (contextHigh >> 8) & 0xFFFF); // domain identifier
        Assert.Equal((ushort)7, unit.DomainOf(Device));

        // Walk the second-level table by hand: PML4, PDPT, PD, PT indices from bits 47:39, 38:30, 29:21, 20:12.
        ulong table = contextLow & DmaRemappingUnit.AddressMask;
        for (int level = 0; level < 3; level++)
        {
            ulong e = memory.ReadUInt64(table + ((iova >> (39 - 9 * level)) & 511) * 8);
            Assert.Equal(DmaRemappingUnit.Read | DmaRemappingUnit.Write, e & 0xFFF);
            table = e & DmaRemappingUnit.AddressMask;
        }
        ulong leaf = memory.ReadUInt64(table + ((iova >> 12) & 511) * 8);
        Assert.Equal(frame | DmaRemappingUnit.Read | DmaRemappingUnit.Write, leaf);
        Assert.Equal(1 + 1 + 1 + 3, unit.TableFrames); // root, context, second-level PML4 + PDPT, PD, PT
        Assert.Equal(unit.TableFrames, pool.TableFrames);

        Assert.True(unit.TryTranslate(Device, iova + 0x123, write: true, out ulong host));
        Assert.Equal(frame + 0x123, host);
        Assert.Equal((1L, 1L, 6L), (unit.Translations, unit.Walks, unit.WalkReferences));
    }

    [Fact]
    public void Each_fault_reason_is_the_one_vtd_names()
    {
        var (pool, unit, _) = Create();
        using var owner = pool;
        ulong frame = pool.Allocate();
        unit.Map(Device, 0x1000, frame, writable: false);
        unit.Map(Device, 0x2000, frame, writable: true);

        Assert.Null(unit.Walk(Device, 0x1008, write: false, out ulong host));
        Assert.Equal(frame + 8, host);
        Assert.Equal(DmaFaultReason.WriteNotPermitted, unit.Walk(Device, 0x1008, write: true, out _));
        Assert.Equal(DmaFaultReason.ReadNotPermitted, unit.Walk(Device, 0x3000, write: false, out _)); // the same last-level table
        Assert.Equal(DmaFaultReason.WriteNotPermitted, unit.Walk(Device, 0x40_0000_0000, write: true, out _)); // no tables there
        Assert.Equal(DmaFaultReason.AddressBeyondWidth, unit.Walk(Device, 1UL << 48, write: false, out _));
        Assert.Equal(DmaFaultReason.ContextEntryNotPresent, unit.Walk(new SourceId(3, 6, 0), 0x2000, write: false, out _));
        Assert.Equal(DmaFaultReason.RootEntryNotPresent, unit.Walk(new SourceId(4, 5, 1), 0x2000, write: false, out _));
        Assert.True(unit.Unmap(Device, 0x2000));
        Assert.False(unit.Unmap(Device, 0x2000));
        Assert.Equal(DmaFaultReason.ReadNotPermitted, unit.Walk(Device, 0x2000, write: false, out _));
        Assert.Equal(1, unit.MappedPages);
        unit.DetachDevice(Device);
        Assert.Equal(DmaFaultReason.ContextEntryNotPresent, unit.Walk(Device, 0x1000, write: false, out _));
        Assert.Null(unit.DomainOf(Device));
        Assert.Equal(0, unit.Faults.Count); // Walk only looks; TryTranslate records
    }

    [Fact]
    public void Faults_are_recorded_up_to_sixteen_counted_beyond_and_logged_once_per_page()
    {
        var (pool, unit, diagnostics) = Create();
        using var owner = pool;
        for (int i = 0; i < 20; i++)
        {
            // Ten pages, each faulted twice (at two offsets).
            Assert.False(unit.TryTranslate(Device, 0x10_0000 + (ulong)(i % 10) * 0x1000 + (ulong)(i / 10) * 8, write: i % 2 == 0, out _));
        }
        Assert.Equal(20, unit.Faults.Count);
        Assert.Equal(DmaFaultLog.RecordLimit, unit.Faults.Records.Count);
        Assert.True(unit.Faults.Overflowed);
        Assert.Equal(new DmaFault(Device, 0x10_0000, true, DmaFaultReason.WriteNotPermitted), unit.Faults.Records[0]);
        Assert.Equal(new DmaFault(Device, 0x10_1000, false, DmaFaultReason.ReadNotPermitted), unit.Faults.Records[1]);
        Assert.Equal(10, diagnostics.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
    }

    [Fact]
    public void A_guest_faulting_on_ever_new_pages_cannot_grow_the_log_without_bound()
    {
        var diagnostics = new StringWriter();
        var log = new DmaFaultLog(diagnostics);
        int pages = DmaFaultLog.LoggedAddressLimit + 50;
        for (int i = 0; i < pages; i++)
        {
            log.Record(new DmaFault(Device, (ulong)i << 12, false, DmaFaultReason.ReadNotPermitted));
        }
        var lines = diagnostics.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(DmaFaultLog.LoggedAddressLimit + 1, lines.Length);
        Assert.Contains("counted, not reported", lines[^1]);
        Assert.Equal(pages, log.Count);
        Assert.Equal(DmaFaultLog.RecordLimit, log.Records.Count);
    }

    [Fact]
    public void Disposing_the_unit_gives_its_tables_back_to_the_pool()
    {
        var (pool, unit, _) = Create();
        using var owner = pool;
        for (ulong page = 0; page < 600; page++)
        {
            unit.Map(Device, page << 12, pool.Allocate(), writable: true); // crosses into a second last-level table
        }
        Assert.Equal(1 + 1 + 1 + 1 + 1 + 2, unit.TableFrames);
        Assert.Equal(unit.TableFrames, pool.TableFrames);
        unit.Dispose();
        Assert.Equal(0, pool.TableFrames);
    }

    [Fact]
    public void Without_a_vmm_the_unit_lives_above_the_guests_ram_and_maps_it_to_itself()
    {
        using var guest = new GuestMemory(16UL << 20);
        using var space = HostPhysicalSpace.Identity(guest);
        using var unit = new DmaRemappingUnit(space, new DmaFaultLog(TextWriter.Null));
        unit.AttachDevice(Device, 1);
        unit.Map(Device, 0x5000, 0x5000, writable: true);
        Assert.True(unit.RootTable >= guest.Size, "the tables are outside guest RAM");
        Assert.True(unit.TryTranslate(Device, 0x5010, write: true, out ulong host));
        Assert.Equal(0x5010UL, host);
        guest.WriteUInt64(new(0x5010), 0xFEED);
        Assert.Equal(0xFEEDUL, space.Memory.ReadUInt64(host)); // the same bytes
    }
}
