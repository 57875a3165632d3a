using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;

namespace Nestor.Hypervisor.Tests;

/// <summary>The host's one frame pool and the P2M on it, without a guest running: reference counts, the reverse map,
/// copy-on-write sharing, unmapping, and memory given back (measured with mincore, not assumed).</summary>
public sealed class HostFramePoolTests : IDisposable
{
    private const ulong Page = 0x1000;
    private readonly Host host = Host.ForGuestMemory(32UL << 20);
    private readonly GuestMemory first = new(16UL << 20);
    private readonly GuestMemory second = new(16UL << 20);

    private HostFramePool Pool => host.FramePool;

    public void Dispose()
    {
        host.Dispose();
        first.Dispose();
        second.Dispose();
    }

    [Fact]
    public void An_allocated_frame_is_counted_and_freed_when_its_last_reference_goes()
    {
        long free = Pool.FreeFrames;
        ulong frame = Pool.Allocate();
        Assert.NotEqual(0UL, frame);
        Assert.Equal(0UL, frame & (Page - 1));
        Assert.Equal(HostFrameKind.Owned, Pool.KindOf(frame));
        Assert.Equal(1, Pool.ReferenceCount(frame));
        Assert.Equal(free - 1, Pool.FreeFrames);
        Assert.True(Pool.Memory.IsRam(frame), "the CPU model sees an allocated frame as RAM");

        Pool.AddReference(frame);
        Assert.Equal(2, Pool.ReferenceCount(frame));
        Assert.False(Pool.Release(frame));
        Assert.Equal(1, Pool.ReferenceCount(frame));
        Assert.True(Pool.Release(frame));

        Assert.Equal(0, Pool.ReferenceCount(frame));
        Assert.Equal(HostFrameKind.Free, Pool.KindOf(frame));
        Assert.False(Pool.Memory.IsRam(frame), "a freed frame is no longer RAM");
        Assert.Equal(free, Pool.FreeFrames);
        Assert.Equal(1, Pool.FramesFreed);
        Assert.Throws<InvalidOperationException>(() => Pool.Release(frame));
        Assert.Equal(frame, Pool.Allocate()); // the freed frame number is handed out again
    }

    [Fact]
    public void Freeing_a_frame_gives_its_memory_back_to_the_host()
    {
        ulong frame = Pool.Allocate();
        Assert.False(Pool.IsStoreResident(frame), "an untouched frame costs no host memory");
        Pool.Contents(frame).Fill(0x5A);
        Assert.True(Pool.IsStoreResident(frame));

        Assert.True(Pool.Release(frame));

        Assert.False(Pool.IsStoreResident(frame), "madvise(MADV_DONTNEED) took the page back");
        Assert.Equal(1, Pool.FramesDiscarded);
        ulong again = Pool.Allocate();
        Assert.Equal(frame, again);
        Assert.True(Pool.Contents(again).IndexOfAnyExcept((byte)0) < 0, "a reused frame starts zeroed");
    }

    [Fact]
    public void Touched_guest_pages_are_adopted_frames_in_the_reverse_map()
    {
        var map = new GuestPhysicalMap(first, Pool);
        ulong host = map.Touch(0x5123) & ~(Page - 1);
        Assert.Equal(host | 0x123, map.Touch(0x5123));
        Assert.Equal(HostFrameKind.Adopted, Pool.KindOf(host));
        Assert.Equal(1, Pool.ReferenceCount(host));
        Assert.Equal([new GuestFrameMapping(map, 5)], Pool.MappingsOf(host));
        first.WriteUInt64(new(0x5000), 0x1122_3344_5566_7788);
        Assert.Equal(0x1122_3344_5566_7788UL, BitConverter.ToUInt64(Pool.Contents(host)));
        Assert.Equal(1, map.TouchedPages);
    }

    [Fact]
    public void Two_guest_frames_sharing_one_host_frame_read_the_same_bytes_until_one_writes()
    {
        var map = new GuestPhysicalMap(first, Pool);
        first.WriteUInt64(new(0x5000), 0xAAAA);
        first.WriteUInt64(new(0x9000), 0xBBBB);
        map.Touch(0x9000);

        ulong shared = map.Share(0x5000, map, 0x9000);

        Assert.True(map.TryHostPhysical(0x5000, out ulong a));
        Assert.True(map.TryHostPhysical(0x9000, out ulong b));
        Assert.Equal(shared, a);
        Assert.Equal(shared, b);
        Assert.Equal(2, Pool.ReferenceCount(shared));
        Assert.True(Pool.IsWriteProtected(shared));
        Assert.True(map.IsWriteProtected(0x5000) && map.IsWriteProtected(0x9000));
        Assert.Equal(Machine.Paging.NestedEntry.Read | Machine.Paging.NestedEntry.Execute, map.NestedPermissions(0x9000));
        Assert.Equal([new GuestFrameMapping(map, 5), new GuestFrameMapping(map, 9)], Pool.MappingsOf(shared).OrderBy(m => m.GuestFrame));
        Assert.Equal(0xAAAAUL, BitConverter.ToUInt64(map.PageContents(0x9000)));
        Assert.Equal(0xAAAAUL, first.ReadUInt64(new(0x9000))); // the target's home holds a copy, for the VMM's own reads

        // A write to a shared frame gives the writer a private copy; the other sharer keeps the old bytes.
        ulong privateCopy = map.Touch(0x9008, write: true) & ~(Page - 1);
        Assert.NotEqual(shared, privateCopy);
        BitConverter.TryWriteBytes(map.PageContents(0x9000), 0xCCCCUL);
        Assert.Equal(0xAAAAUL, BitConverter.ToUInt64(map.PageContents(0x5000)));
        Assert.Equal(0xCCCCUL, first.ReadUInt64(new(0x9000)));
        Assert.Equal(1, map.CopyOnWriteBreaks);
        Assert.Equal(1, Pool.ReferenceCount(shared));
        Assert.Equal([new GuestFrameMapping(map, 5)], Pool.MappingsOf(shared));
        Assert.False(map.IsWriteProtected(0x9000));

        // The last sharer's write frees the shared frame, and its memory goes back to the host.
        Assert.True(Pool.IsStoreResident(shared));
        long freed = Pool.FramesFreed;
        map.Touch(0x5000, write: true);
        Assert.Equal(freed + 1, Pool.FramesFreed);
        Assert.Equal(0, Pool.ReferenceCount(shared));
        Assert.False(Pool.IsStoreResident(shared));
        Assert.Equal(0xAAAAUL, first.ReadUInt64(new(0x5000)));
    }

    [Fact]
    public void Guest_frames_of_two_vms_on_one_host_share_a_frame()
    {
        var one = new GuestPhysicalMap(first, Pool);
        var two = new GuestPhysicalMap(second, Pool);
        first.WriteUInt64(new(0x20000), 0x0123_4567);

        ulong shared = one.Share(0x20000, two, 0x31000);

        Assert.Equal([new GuestFrameMapping(one, 0x20), new GuestFrameMapping(two, 0x31)],
            Pool.MappingsOf(shared).OrderBy(m => m.GuestFrame));
        Assert.Equal(0x0123_4567UL, BitConverter.ToUInt64(two.PageContents(0x31000)));
        two.Touch(0x31000, write: true);
        Assert.Equal([new GuestFrameMapping(one, 0x20)], Pool.MappingsOf(shared));

        using var other = Host.ForGuestMemory(16UL << 20);
        var foreign = new GuestPhysicalMap(second, other.FramePool);
        Assert.Throws<ArgumentException>(() => one.Share(0x20000, foreign, 0x1000));
    }

    [Fact]
    public void Unmapping_a_guest_frame_drops_its_reference_and_the_next_touch_maps_its_home_again()
    {
        var map = new GuestPhysicalMap(first, Pool);
        first.WriteUInt64(new(0x7000), 0xFEED);
        ulong host = map.Touch(0x7000);
        long backed = Pool.GuestFrames;

        Assert.True(map.Unmap(0x7000));

        Assert.False(map.TryHostPhysical(0x7000, out _));
        Assert.Equal(0, Pool.ReferenceCount(host));
        Assert.Equal(backed - 1, Pool.GuestFrames);
        Assert.False(map.Unmap(0x7000));
        map.Touch(0x7000);
        Assert.Equal(0xFEEDUL, BitConverter.ToUInt64(map.PageContents(0x7000)));
    }

    [Fact]
    public void Remapping_points_a_guest_frame_at_another_host_frame()
    {
        var map = new GuestPhysicalMap(first, Pool);
        ulong old = map.Touch(0x3000);
        ulong frame = Pool.Allocate();
        Pool.Contents(frame).Fill(0x77);

        map.Remap(0x3000, frame);
        Pool.Release(frame); // the mapping keeps it

        Assert.True(map.TryHostPhysical(0x3000, out ulong now));
        Assert.Equal(frame, now);
        Assert.Equal(0x77, map.PageContents(0x3000)[100]);
        Assert.Equal(0, Pool.ReferenceCount(old));
        Assert.Equal([new GuestFrameMapping(map, 3)], Pool.MappingsOf(frame));
    }

    [Fact]
    public void Disposing_a_map_gives_back_every_frame_it_held()
    {
        var map = new GuestPhysicalMap(first, Pool);
        long before = Pool.GuestFrames;
        map.Touch(0x1000);
        map.Touch(0x2000);
        Assert.True(map.TouchLarge(0x40_0000, out _));
        Assert.Equal(before + 514, Pool.GuestFrames);

        map.Dispose();

        Assert.Equal(before, Pool.GuestFrames);
        Assert.Equal(0, map.TouchedPages);
    }

    [Fact]
    public void A_nested_table_unmaps_and_write_protects_pages()
    {
        using var table = new NestedPageTable(Pool);
        long tables = Pool.TableFrames;
        table.Map(0x40_0000, 0x80_0000, 12);
        table.Map(0x60_0000, 0xA0_0000, 21);
        Assert.Equal(0x80_0000 | Machine.Paging.NestedEntry.ReadWriteExecute, table.LeafEntry(0x40_0000, out int shift));
        Assert.Equal(12, shift);

        Assert.True(table.WriteProtect(0x40_0000));
        Assert.Equal(0x80_0000 | Machine.Paging.NestedEntry.Read | Machine.Paging.NestedEntry.Execute, table.LeafEntry(0x40_0000, out _));
        Assert.True(table.Unmap(0x40_0000));
        Assert.Equal(0UL, table.LeafEntry(0x40_0000, out _));
        Assert.False(table.Unmap(0x40_0000));

        // A large entry goes whole: its pages fault in again at 4 KiB.
        Assert.NotEqual(0UL, table.LeafEntry(0x61_2000, out shift));
        Assert.Equal(21, shift);
        Assert.True(table.WriteProtect(0x61_2000));
        Assert.Equal(0UL, table.LeafEntry(0x60_0000, out _));
        Assert.True(table.CanMapLarge(0x60_0000));
        Assert.Equal(3, table.Invalidations);

        table.Dispose();
        Assert.True(Pool.TableFrames < tables, "the table's frames went back to the pool");
    }
}
