using System.Buffers.Binary;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Devices.Virtio.Block;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Tests.Devices.Virtio;

/// <summary>The split virtqueue and the transport driven directly over a memory-only guest RAM (no CPU): the
/// notification suppression rules of §2.7.7 and §2.7.10, bounds on what a chain may be, and the transport's state
/// through a snapshot.</summary>
public sealed class VirtqueueTests : IDisposable
{
    private const ulong Descriptors = 0x10000, Available = 0x11000, Used = 0x12000, Buffers = 0x20000;
    private const ushort Size = 8;
    private readonly GuestMemory memory = new(4UL << 20);
    private readonly GuestDma dma;

    public VirtqueueTests() => dma = new GuestDma(memory);

    public void Dispose() => memory.Dispose();

    private SplitVirtqueue Queue(bool eventIndex)
    {
        var queue = new SplitVirtqueue(dma, memory, Size) { DescriptorArea = Descriptors, DriverArea = Available, DeviceArea = Used, EventIndex = eventIndex };
        Assert.True(queue.SetReady(true));
        return queue;
    }

    private void Descriptor(int index, ulong address, uint length, ushort flags, ushort next)
    {
        var d = memory.Span(new GuestPhysical(Descriptors + 16 * (ulong)index), 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, address);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], length);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    private void Publish(ushort availableIndex, params ushort[] heads)
    {
        for (int i = 0; i < heads.Length; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(memory.Span(new GuestPhysical(Available + 4 + 2 * (ulong)((availableIndex - heads.Length + i) % Size)), 2), heads[i]);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(memory.Span(new GuestPhysical(Available + 2), 2), availableIndex);
    }

    private void WriteUInt16(ulong address, ushort value) => BinaryPrimitives.WriteUInt16LittleEndian(memory.Span(new GuestPhysical(address), 2), value);

    private ushort ReadUInt16(ulong address) => BinaryPrimitives.ReadUInt16LittleEndian(memory.Span(new GuestPhysical(address), 2));

    /// <summary>Serves every available chain (one written byte each), as a device's batch does.</summary>
    private static int ServeAll(SplitVirtqueue queue)
    {
        int served = 0;
        while (queue.TryTake(out var chain))
        {
            queue.Complete(chain, (uint)chain.WritableLength);
            served++;
        }
        return served;
    }

    [Fact]
    public void With_event_idx_the_driver_is_notified_only_when_the_used_index_passes_used_event()
    {
        var queue = Queue(eventIndex: true);
        for (int i = 0; i < Size; i++)
        {
            Descriptor(i, Buffers + 0x100 * (ulong)i, 16, 2, 0);
        }
        ulong usedEvent = Available + 4 + 2 * Size, availableEvent = Used + 4 + 8 * Size;
        // Batch 1: three chains, used_event 2 (notify when the third is used): wanted.
        WriteUInt16(usedEvent, 2);
        Publish(3, 0, 1, 2);
        Assert.Equal(3, ServeAll(queue));
        Assert.True(queue.TakeNotification());
        Assert.Equal(3, ReadUInt16(availableEvent)); // notify me when entry 3 is made available
        Assert.Equal(3, ReadUInt16(Used + 2));
        // Batch 2: two chains, used_event still 2: already passed, so suppressed.
        Publish(5, 3, 4);
        Assert.Equal(2, ServeAll(queue));
        Assert.False(queue.TakeNotification());
        // Batch 3: one chain, used_event 5 (the index this one is placed at): wanted.
        WriteUInt16(usedEvent, 5);
        Publish(6, 5);
        Assert.Equal(1, ServeAll(queue));
        Assert.True(queue.TakeNotification());
        // The flag is ignored under EVENT_IDX (§2.7.7.1: the device MUST ignore its lower bit).
        WriteUInt16(Available, 1);
        WriteUInt16(usedEvent, 6);
        Publish(7, 6);
        ServeAll(queue);
        Assert.True(queue.TakeNotification());
        Assert.Equal((3L, 1L), (queue.NotificationsWanted, queue.NotificationsSuppressed));
        // Nothing new used: nothing to notify.
        Assert.False(queue.TakeNotification());
    }

    [Fact]
    public void Without_event_idx_the_no_interrupt_flag_decides_per_batch()
    {
        var queue = Queue(eventIndex: false);
        Descriptor(0, Buffers, 16, 2, 0);
        Descriptor(1, Buffers + 0x100, 16, 2, 0);
        Publish(2, 0, 1);
        Assert.Equal(2, ServeAll(queue));
        Assert.True(queue.TakeNotification()); // two chains, one notification
        WriteUInt16(Available, 1);          // VIRTQ_AVAIL_F_NO_INTERRUPT
        Publish(3, 0);
        ServeAll(queue);
        Assert.False(queue.TakeNotification());
        Assert.Equal((1L, 1L), (queue.NotificationsWanted, queue.NotificationsSuppressed));
    }

    [Fact]
    public void A_chain_holds_its_elements_in_order_and_copies_across_them()
    {
        var queue = Queue(eventIndex: false);
        Descriptor(0, Buffers, 3, 1, 1);
        Descriptor(1, Buffers + 0x100, 5, 1, 2);
        Descriptor(2, Buffers + 0x200, 4, 2 | 1, 3);
        Descriptor(3, Buffers + 0x300, 4, 2, 0);
        "abcdefgh"u8.ToArray().AsSpan(0, 3).CopyTo(memory.Span(new GuestPhysical(Buffers), 3));
        "defgh"u8.CopyTo(memory.Span(new GuestPhysical(Buffers + 0x100), 5));
        Publish(1, 0);
        Assert.True(queue.TryTake(out var chain));
        Assert.Equal((4, 2, 8L, 8L), (chain.Count, chain.ReadableCount, chain.ReadableLength, chain.WritableLength));
        Span<byte> read = stackalloc byte[6];
        Assert.True(chain.Read(1, read));
        Assert.Equal("bcdefg", System.Text.Encoding.ASCII.GetString(read));
        Assert.False(chain.Read(4, read)); // past the readable part
        Assert.True(chain.Write(2, "WXYZ"u8));
        Assert.Equal("WX", System.Text.Encoding.ASCII.GetString(memory.Span(new GuestPhysical(Buffers + 0x202), 2)));
        Assert.Equal("YZ", System.Text.Encoding.ASCII.GetString(memory.Span(new GuestPhysical(Buffers + 0x300), 2)));
        Assert.False(chain.Write(6, "abc"u8)); // past the writable part
    }

    [Fact]
    public void An_indirect_table_needs_the_feature_and_a_chain_longer_than_the_queue_is_refused()
    {
        var queue = Queue(eventIndex: false);
        Descriptor(0, Buffers, 16, 4, 0); // INDIRECT, not negotiated
        Publish(1, 0);
        Assert.False(queue.TryTake(out _));
        Assert.Equal(VirtqueueFault.BadIndirectTable, queue.Fault);
        Assert.False(queue.TryTake(out _)); // the queue stays stopped
        Assert.Equal(1, queue.TotalFaults);

        queue.Reset();
        queue.DescriptorArea = Descriptors;
        queue.DriverArea = Available;
        queue.DeviceArea = Used;
        queue.IndirectDescriptors = true;
        Assert.True(queue.SetReady(true));
        Descriptor(0, Buffers, 16 * (Size + 1), 4, 0); // a table of Size + 1 descriptors
        Publish(1, 0);
        Assert.False(queue.TryTake(out _));
        Assert.Equal(VirtqueueFault.BadIndirectTable, queue.Fault);
    }

    [Fact]
    public void A_ring_that_does_not_fit_in_ram_or_is_misaligned_is_not_made_ready()
    {
        var misaligned = new SplitVirtqueue(dma, memory, Size) { DescriptorArea = Descriptors + 8, DriverArea = Available, DeviceArea = Used };
        Assert.False(misaligned.SetReady(true));
        Assert.Equal(VirtqueueFault.BadConfiguration, misaligned.Fault);
        var outside = new SplitVirtqueue(dma, memory, Size) { DescriptorArea = (4UL << 20) - 64, DriverArea = Available, DeviceArea = Used };
        Assert.False(outside.SetReady(true));
        Assert.Equal(VirtqueueFault.OutsideRam, outside.Fault);
        var notPowerOfTwo = new SplitVirtqueue(dma, memory, Size) { Size = 6, DescriptorArea = Descriptors, DriverArea = Available, DeviceArea = Used };
        Assert.False(notPowerOfTwo.SetReady(true));
        Assert.False(notPowerOfTwo.Ready);
    }

    /// <summary>The request path allocates nothing: a notify that serves a 4 KiB IN (chain walk, backend read, DMA,
    /// used ring, interrupt decision), repeated after a warm-up, leaves the thread's allocation count unchanged.</summary>
    [Fact]
    public void Serving_a_request_allocates_nothing()
    {
        var disk = new MemoryBlockBackend(64);
        var transport = new VirtioMmioTransport(new VirtioBlock(disk), dma, memory, new Line(), VirtioSlots.FirstBase, 0);
        foreach (var (offset, value) in new (int, uint)[] { (0x70, 1), (0x70, 3), (0x24, 0), (0x20, (uint)VirtioFeatures.EventIndex), (0x24, 1), (0x20, 1),
                     (0x70, 0xB), (0x30, 0), (0x38, Size), (0x80, (uint)Descriptors), (0x90, (uint)Available), (0xA0, (uint)Used), (0x44, 1), (0x70, 0xF) })
        {
            transport.Write(VirtioSlots.FirstBase + (ulong)offset, 4, value);
        }
        memory.Span(new GuestPhysical(Buffers), 16).Clear();
        Descriptor(0, Buffers, 16, 1, 1);
        Descriptor(1, Buffers + 0x1000, 4096, 2 | 1, 2);
        Descriptor(2, Buffers + 0x100, 1, 2, 0);
        ushort index = 0;
        void Request()
        {
            // The ring entry and the index written directly (Publish's params array would be the test's own allocation).
            WriteUInt16(Available + 4 + 2 * (ulong)(index % Size), 0);
            index++;
            WriteUInt16(Available + 2, index);
            WriteUInt16(Available + 4 + 2 * Size, (ushort)(index - 1)); // used_event: this request, so each one interrupts
            transport.Write(VirtioSlots.FirstBase + 0x50, 4, 0);
            transport.Write(VirtioSlots.FirstBase + 0x64, 4, 1);
        }
        for (int i = 0; i < 10; i++)
        {
            Request();
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            Request();
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        Assert.Equal(110, ((VirtioBlock)transport.Device).Reads);
        Assert.Equal(110, transport.Interrupts);
    }

    private sealed class Line : IInterruptLine
    {
        public int Gsi => VirtioSlots.FirstGsi;
        public bool Asserted { get; private set; }
        public void Raise() => Asserted = true;
        public void Lower() => Asserted = false;
    }

    /// <summary>The transport's registers, its queue and the device's counters survive a snapshot: a transport set up
    /// by register writes, saved and restored into a fresh one, reads back the same and serves the next request.</summary>
    [Fact]
    public void The_transport_survives_a_snapshot()
    {
        var disk = new MemoryBlockBackend(16);
        disk.Contents.Fill(0x77);
        VirtioMmioTransport NewTransport() => new(new VirtioBlock(disk), dma, memory, new Line(), VirtioSlots.FirstBase, 0);
        var first = NewTransport();
        void Write(VirtioMmioTransport t, int offset, uint value) => t.Write(VirtioSlots.FirstBase + (ulong)offset, 4, value);
        uint Read(VirtioMmioTransport t, int offset) => (uint)t.Read(VirtioSlots.FirstBase + (ulong)offset, 4);
        foreach (var (offset, value) in new (int, uint)[] { (0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 0xB), (0x30, 0), (0x38, Size),
                     (0x80, (uint)Descriptors), (0x90, (uint)Available), (0xA0, (uint)Used), (0x44, 1), (0x70, 0xF) })
        {
            Write(first, offset, value);
        }
        // One request before the snapshot: IN of sector 0, 512 bytes.
        var header = memory.Span(new GuestPhysical(Buffers), 16);
        header.Clear();
        Descriptor(0, Buffers, 16, 1, 1);
        Descriptor(1, Buffers + 0x1000, 512, 2 | 1, 2);
        Descriptor(2, Buffers + 0x100, 1, 2, 0);
        Publish(1, 0);
        Write(first, 0x50, 0);
        Assert.Equal(VirtioMmioTransport.UsedBufferInterrupt, Read(first, 0x60));

        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(first);
        var second = NewTransport();
        var reader = new Persistence.SnapshotReader(writer.ToArray());
        reader.ReadSection(second);
        Assert.True(reader.AtEnd);
        foreach (int offset in new[] { 0x10, 0x34, 0x44, 0x60, 0x70, 0xFC })
        {
            Assert.Equal(Read(first, offset), Read(second, offset));
        }
        Assert.Equal(first.Notifies, second.Notifies);
        Assert.Equal(((VirtioBlock)first.Device).BytesRead, ((VirtioBlock)second.Device).BytesRead);
        Assert.Equal(first.Queues[0].NextUsed, second.Queues[0].NextUsed);
        // The restored transport goes on from the same ring position.
        Publish(2, 0);
        Write(second, 0x50, 0);
        Assert.Equal(2, ReadUInt16(Used + 2));
        Assert.Equal(2, ((VirtioBlock)second.Device).Reads);
    }
}
