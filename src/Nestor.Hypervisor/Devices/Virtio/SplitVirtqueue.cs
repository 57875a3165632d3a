using System.Buffers.Binary;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Virtio;

/// <summary>The ways a driver can break a split virtqueue. Each is counted and ends the queue's use: the transport sets
/// DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2) instead of the device throwing or looping.</summary>
public enum VirtqueueFault
{
    /// <summary>The available index moved more than the queue size past the device's own (§2.7.6: the driver MUST
    /// NOT make more buffers available than the queue holds).</summary>
    AvailableIndexTooFar,

    /// <summary>A descriptor index (a chain head or a <c>next</c>) at or past the table's size.</summary>
    DescriptorIndexOutOfRange,

    /// <summary>A chain longer than the queue size: a loop, or a chain §2.7.5.2 forbids.</summary>
    ChainTooLong,

    /// <summary>An indirect descriptor without VIRTIO_F_INDIRECT_DESC negotiated, one with NEXT also set, one inside an
    /// indirect table, or a table whose length is zero, not a multiple of 16 or longer than the queue (§2.7.5.3.1).</summary>
    BadIndirectTable,

    /// <summary>A device-readable element after a device-writable one (§2.7.4: readable elements come first).</summary>
    ReadableAfterWritable,

    /// <summary>A ring, table or buffer that is not entirely in guest RAM.</summary>
    OutsideRam,

    /// <summary>A chain whose elements add up to more than 2³² bytes (§2.7.5.1).</summary>
    ChainTooLarge,

    /// <summary>A ring configuration the device cannot use: size zero, not a power of two or above the maximum, areas
    /// misaligned (§2.7: 16, 2 and 4 bytes).</summary>
    BadConfiguration,

    /// <summary>A request the device type cannot even answer (e.g. a virtio-blk request with no room for its status
    /// byte).</summary>
    MalformedRequest,
}

/// <summary>One descriptor chain taken from the available ring, resolved into its elements (direct and indirect) and
/// checked: every element is inside guest RAM, readable elements come before writable ones. The device reads its
/// readable part and writes its writable part by offset, through <see cref="GuestDma"/>. The arrays are allocated
/// once with the queue (a chain is never longer than the queue), so taking a chain allocates nothing.</summary>
public sealed class DescriptorChain
{
    private readonly GuestDma dma;
    private readonly ulong[] addresses;
    private readonly uint[] lengths;

    internal DescriptorChain(GuestDma dma, int capacity)
    {
        this.dma = dma;
        addresses = new ulong[capacity];
        lengths = new uint[capacity];
    }

    /// <summary>The head's descriptor index: the id the used ring returns.</summary>
    public ushort Head { get; private set; }

    /// <summary>Elements in the chain.</summary>
    public int Count { get; private set; }

    /// <summary>Elements the device may only read (the first ones).</summary>
    public int ReadableCount { get; private set; }

    /// <summary>Bytes the device may read.</summary>
    public long ReadableLength { get; private set; }

    /// <summary>Bytes the device may write.</summary>
    public long WritableLength { get; private set; }

    /// <summary>Whether the chain went through an indirect table.</summary>
    public bool Indirect { get; private set; }

    internal void Start(ushort head)
    {
        Head = head;
        Count = ReadableCount = 0;
        ReadableLength = WritableLength = 0;
        Indirect = false;
    }

    internal void MarkIndirect() => Indirect = true;

    /// <summary>Adds an element; false when a readable one follows a writable one.</summary>
    internal bool Add(ulong address, uint length, bool writable)
    {
        if (!writable && WritableLength > 0)
        {
            return false;
        }
        addresses[Count] = address;
        lengths[Count] = length;
        Count++;
        if (writable)
        {
            WritableLength += length;
        }
        else
        {
            ReadableCount++;
            ReadableLength += length;
        }
        return true;
    }

    internal bool Full => Count == addresses.Length;

    /// <summary>Copies the readable part from byte <paramref name="offset"/> into <paramref name="destination"/>;
    /// false when the range is beyond the readable part or the memory is not RAM.</summary>
    public bool Read(long offset, Span<byte> destination)
    {
        if (offset < 0 || offset + destination.Length > ReadableLength)
        {
            return false;
        }
        return Copy(0, ReadableCount, offset, destination, default, write: false);
    }

    /// <summary>Copies <paramref name="source"/> into the writable part at byte <paramref name="offset"/>; false when
    /// the range is beyond the writable part or the memory is not RAM.</summary>
    public bool Write(long offset, ReadOnlySpan<byte> source)
    {
        if (offset < 0 || offset + source.Length > WritableLength)
        {
            return false;
        }
        return Copy(ReadableCount, Count, offset, default, source, write: true);
    }

    private bool Copy(int first, int end, long offset, Span<byte> destination, ReadOnlySpan<byte> source, bool write)
    {
        int done = 0, total = write ? source.Length : destination.Length;
        for (int i = first; i < end && done < total; i++)
        {
            long length = lengths[i];
            if (offset >= length)
            {
                offset -= length;
                continue;
            }
            int n = (int)Math.Min(length - offset, total - done);
            var address = new GuestPhysical(addresses[i] + (ulong)offset);
            bool ok = write ? dma.TryWrite(address, source.Slice(done, n)) : dma.TryRead(address, destination.Slice(done, n));
            if (!ok)
            {
                return false;
            }
            done += n;
            offset = 0;
        }
        return done == total;
    }
}

/// <summary>A split virtqueue as the device sees it (virtio 1.2 §2.7): the descriptor table, the available (driver)
/// ring and the used (device) ring in guest memory, which the device reads and writes only through
/// <see cref="GuestDma"/>. It takes chains in order from the available ring (<see cref="TryTake"/>), returns them to
/// the used ring (<see cref="Complete"/>) and decides, once per batch, whether the driver wants a used buffer
/// notification (<see cref="TakeNotification"/>): with VIRTIO_F_EVENT_IDX by the driver's used_event (§2.7.10), else by
/// VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7). Anything malformed is a <see cref="VirtqueueFault"/>: counted, and the queue
/// stops (<see cref="Fault"/>) until the device is reset.</summary>
public sealed class SplitVirtqueue
{
    private const ushort DescriptorNext = 1, DescriptorWrite = 2, DescriptorIndirect = 4;
    private const ushort AvailableNoInterrupt = 1;
    private const int DescriptorSize = 16;

    private readonly GuestDma dma;
    private readonly GuestMemory memory;
    private readonly long[] faults = new long[Enum.GetValues<VirtqueueFault>().Length];
    private readonly DescriptorChain chain;
    private ushort nextAvailable, nextUsed, usedAtLastNotification;

    /// <summary>A queue of at most <paramref name="maximumSize"/> entries (a power of two, at most 32768).</summary>
    public SplitVirtqueue(GuestDma dma, GuestMemory memory, ushort maximumSize)
    {
        if (maximumSize == 0 || maximumSize > 32768 || (maximumSize & (maximumSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(maximumSize), maximumSize, "a split virtqueue's size is a power of two up to 32768 (§2.7)");
        }
        this.dma = dma;
        this.memory = memory;
        MaximumSize = maximumSize;
        chain = new DescriptorChain(dma, maximumSize);
        Size = maximumSize;
    }

    /// <summary>The largest size the driver may choose (QueueSizeMax).</summary>
    public ushort MaximumSize { get; }

    /// <summary>The size the driver chose (QueueSize), defaulting to the maximum.</summary>
    public ushort Size { get; set; }

    /// <summary>Guest-physical address of the descriptor table (QueueDesc).</summary>
    public ulong DescriptorArea { get; set; }

    /// <summary>Guest-physical address of the available ring (QueueDriver).</summary>
    public ulong DriverArea { get; set; }

    /// <summary>Guest-physical address of the used ring (QueueDevice).</summary>
    public ulong DeviceArea { get; set; }

    /// <summary>The driver set QueueReady and the configuration was usable.</summary>
    public bool Ready { get; private set; }

    /// <summary>VIRTIO_F_EVENT_IDX was negotiated.</summary>
    public bool EventIndex { get; set; }

    /// <summary>VIRTIO_F_INDIRECT_DESC was negotiated.</summary>
    public bool IndirectDescriptors { get; set; }

    /// <summary>The first fault, once the queue has one: it is then no longer used.</summary>
    public VirtqueueFault? Fault { get; private set; }

    /// <summary>Chains taken from the available ring.</summary>
    public long ChainsTaken { get; private set; }

    /// <summary>Chains that went through an indirect table.</summary>
    public long IndirectChains { get; private set; }

    /// <summary>Used buffer notifications the driver asked for (one per batch at most).</summary>
    public long NotificationsWanted { get; private set; }

    /// <summary>Batches after which the driver did not want a notification (suppressed by used_event or the flag).</summary>
    public long NotificationsSuppressed { get; private set; }

    /// <summary>How many times <paramref name="fault"/> happened.</summary>
    public long Faults(VirtqueueFault fault) => faults[(int)fault];

    /// <summary>Faults of every kind.</summary>
    public long TotalFaults => faults.Sum();

    /// <summary>The device's next index into the available ring.</summary>
    public ushort NextAvailable => nextAvailable;

    /// <summary>The device's next index into the used ring (what the used ring's idx says).</summary>
    public ushort NextUsed => nextUsed;

    /// <summary>Back to the state after a device reset: not ready, default size, no addresses, no fault.</summary>
    public void Reset()
    {
        Ready = false;
        Size = MaximumSize;
        DescriptorArea = DriverArea = DeviceArea = 0;
        EventIndex = IndirectDescriptors = false;
        nextAvailable = nextUsed = usedAtLastNotification = 0;
        Fault = null;
    }

    /// <summary>The driver wrote QueueReady: 1 checks the configuration and starts the rings from index 0, as a newly
    /// set-up ring has them; 0 stops using the queue. False (and a fault) for a configuration the device cannot use.</summary>
    public bool SetReady(bool ready)
    {
        if (!ready)
        {
            Ready = false;
            return true;
        }
        ulong size = Size;
        if (Size == 0 || Size > MaximumSize || (Size & (Size - 1)) != 0
            || (DescriptorArea & 15) != 0 || (DriverArea & 1) != 0 || (DeviceArea & 3) != 0)
        {
            Record(VirtqueueFault.BadConfiguration);
            return false;
        }
        int eventBytes = 2; // used_event / avail_event, present whether or not EVENT_IDX is negotiated (§2.7)
        if (!InRam(DescriptorArea, DescriptorSize * size) || !InRam(DriverArea, 4 + 2 * size + (ulong)eventBytes)
            || !InRam(DeviceArea, 4 + 8 * size + (ulong)eventBytes))
        {
            Record(VirtqueueFault.OutsideRam);
            return false;
        }
        nextAvailable = nextUsed = usedAtLastNotification = 0;
        Ready = true;
        return true;
    }

    /// <summary>Whether the driver has made a chain available that the device has not taken.</summary>
    public bool HasAvailable => Ready && Fault is null && TryReadUInt16(DriverArea + 2, out ushort index) && index != nextAvailable;

    /// <summary>Takes the next available chain into <paramref name="taken"/> (valid until the next call); false when
    /// there is none, the queue is not ready, or the chain is malformed (then <see cref="Fault"/> says why).</summary>
    public bool TryTake(out DescriptorChain taken)
    {
        taken = chain;
        if (!Ready || Fault is not null)
        {
            return false;
        }
        if (!TryReadUInt16(DriverArea + 2, out ushort availableIndex))
        {
            return Record(VirtqueueFault.OutsideRam);
        }
        ushort pending = (ushort)(availableIndex - nextAvailable);
        if (pending == 0)
        {
            return false;
        }
        if (pending > Size)
        {
            return Record(VirtqueueFault.AvailableIndexTooFar);
        }
        if (!TryReadUInt16(DriverArea + 4 + 2UL * (ulong)(nextAvailable % Size), out ushort head))
        {
            return Record(VirtqueueFault.OutsideRam);
        }
        if (head >= Size)
        {
            return Record(VirtqueueFault.DescriptorIndexOutOfRange);
        }
        chain.Start(head);
        if (Walk(head) is { } fault)
        {
            return Record(fault);
        }
        nextAvailable++;
        ChainsTaken++;
        if (chain.Indirect)
        {
            IndirectChains++;
        }
        return true;
    }

    /// <summary>Resolves the chain from <paramref name="head"/>: zero or more direct descriptors, the last of which may
    /// point at an indirect table (§2.7.5.3.2), at most <see cref="Size"/> elements in all.</summary>
    private VirtqueueFault? Walk(ushort head)
    {
        Span<byte> descriptor = stackalloc byte[DescriptorSize];
        ulong table = DescriptorArea;
        uint tableSize = Size;
        uint index = head;
        int steps = 0;
        long total = 0;
        bool inIndirect = false;
        while (true)
        {
            if (++steps > Size)
            {
                return VirtqueueFault.ChainTooLong;
            }
            if (!dma.TryRead(new GuestPhysical(table + index * DescriptorSize), descriptor))
            {
                return VirtqueueFault.OutsideRam;
            }
            ulong address = BinaryPrimitives.ReadUInt64LittleEndian(descriptor);
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(descriptor[8..]);
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(descriptor[12..]);
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(descriptor[14..]);
            if ((flags & DescriptorIndirect) != 0)
            {
                // §2.7.5.3.1: only with the feature, never together with NEXT, never inside a table; the table holds
                // len/16 descriptors, which count towards the chain's length like direct ones.
                if (!IndirectDescriptors || inIndirect || (flags & DescriptorNext) != 0 || length == 0
                    || length % DescriptorSize != 0 || length / DescriptorSize > Size)
                {
                    return VirtqueueFault.BadIndirectTable;
                }
                if (!InRam(address, length))
                {
                    return VirtqueueFault.OutsideRam;
                }
                chain.MarkIndirect();
                inIndirect = true;
                table = address;
                tableSize = length / DescriptorSize;
                index = 0;
                steps--; // the indirect descriptor itself is not an element
                continue;
            }
            if (chain.Full)
            {
                return VirtqueueFault.ChainTooLong;
            }
            if (!InRam(address, length))
            {
                return VirtqueueFault.OutsideRam;
            }
            total += length;
            if (total > uint.MaxValue)
            {
                return VirtqueueFault.ChainTooLarge;
            }
            if (!chain.Add(address, length, (flags & DescriptorWrite) != 0))
            {
                return VirtqueueFault.ReadableAfterWritable;
            }
            if ((flags & DescriptorNext) == 0)
            {
                return null;
            }
            if (next >= tableSize)
            {
                return VirtqueueFault.DescriptorIndexOutOfRange;
            }
            index = next;
        }
    }

    /// <summary>Returns <paramref name="completed"/> to the used ring with <paramref name="written"/> bytes written
    /// into its writable part (§2.7.8: the element before the index).</summary>
    public void Complete(DescriptorChain completed, uint written)
    {
        if (!Ready || Fault is not null)
        {
            return;
        }
        Span<byte> element = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(element, completed.Head);
        BinaryPrimitives.WriteUInt32LittleEndian(element[4..], written);
        Span<byte> index = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(index, (ushort)(nextUsed + 1));
        if (!dma.TryWrite(new GuestPhysical(DeviceArea + 4 + 8UL * (ulong)(nextUsed % Size)), element)
            || !dma.TryWrite(new GuestPhysical(DeviceArea + 2), index))
        {
            Record(VirtqueueFault.OutsideRam);
            return;
        }
        nextUsed++;
    }

    /// <summary>After a batch: with EVENT_IDX, tells the driver through avail_event that it need notify only once it
    /// makes the entry after the last one taken available (§2.7.10); then whether the driver wants a used buffer
    /// notification for what the batch returned: with EVENT_IDX when the used index passed used_event (§2.7.10, the
    /// vring_need_event test), else unless VIRTQ_AVAIL_F_NO_INTERRUPT is set (§2.7.7).</summary>
    public bool TakeNotification()
    {
        if (!Ready || Fault is not null)
        {
            return false;
        }
        if (EventIndex)
        {
            Span<byte> value = stackalloc byte[2];
            BinaryPrimitives.WriteUInt16LittleEndian(value, nextAvailable);
            if (!dma.TryWrite(new GuestPhysical(DeviceArea + 4 + 8UL * Size), value))
            {
                return Record(VirtqueueFault.OutsideRam);
            }
        }
        ushort old = usedAtLastNotification;
        if (old == nextUsed)
        {
            return false;
        }
        usedAtLastNotification = nextUsed;
        bool wanted;
        if (EventIndex)
        {
            if (!TryReadUInt16(DriverArea + 4 + 2UL * Size, out ushort usedEvent))
            {
                return Record(VirtqueueFault.OutsideRam);
            }
            // Notify when used_event lies in [old, new): (new - event - 1) < (new - old), in 16-bit arithmetic.
            wanted = (ushort)(nextUsed - usedEvent - 1) < (ushort)(nextUsed - old);
        }
        else
        {
            if (!TryReadUInt16(DriverArea, out ushort flags))
            {
                return Record(VirtqueueFault.OutsideRam);
            }
            wanted = (flags & AvailableNoInterrupt) == 0;
        }
        if (wanted)
        {
            NotificationsWanted++;
        }
        else
        {
            NotificationsSuppressed++;
        }
        return wanted;
    }

    /// <summary>Records a fault found by the device type (<see cref="VirtqueueFault.MalformedRequest"/>, a DMA refused
    /// while serving a chain): the queue stops.</summary>
    public void Fail(VirtqueueFault fault) => Record(fault);

    private bool Record(VirtqueueFault fault)
    {
        faults[(int)fault]++;
        Fault ??= fault;
        return false;
    }

    private bool InRam(ulong address, ulong length) =>
        address + length >= address && (length == 0 || memory.IsRam(new GuestPhysical(address), length));

    private bool TryReadUInt16(ulong address, out ushort value)
    {
        Span<byte> bytes = stackalloc byte[2];
        if (!dma.TryRead(new GuestPhysical(address), bytes))
        {
            value = 0;
            return false;
        }
        value = BinaryPrimitives.ReadUInt16LittleEndian(bytes);
        return true;
    }

    /// <summary>The queue's registers and indices, for a snapshot.</summary>
    internal void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteUInt16(Size);
        writer.WriteBoolean(Ready);
        writer.WriteUInt64(DescriptorArea);
        writer.WriteUInt64(DriverArea);
        writer.WriteUInt64(DeviceArea);
        writer.WriteBoolean(EventIndex);
        writer.WriteBoolean(IndirectDescriptors);
        writer.WriteUInt16(nextAvailable);
        writer.WriteUInt16(nextUsed);
        writer.WriteUInt16(usedAtLastNotification);
        writer.WriteInt32(Fault is { } f ? (int)f : -1);
        writer.WriteInt64(ChainsTaken);
        writer.WriteInt64(IndirectChains);
        writer.WriteInt64(NotificationsWanted);
        writer.WriteInt64(NotificationsSuppressed);
        writer.WriteInt32(faults.Length);
        foreach (long count in faults)
        {
            writer.WriteInt64(count);
        }
    }

    internal void Restore(Persistence.SnapshotReader reader)
    {
        ushort size = reader.ReadUInt16();
        if (size == 0 || size > MaximumSize)
        {
            throw reader.Invalid($"a queue of {size} entries where at most {MaximumSize} are possible");
        }
        Size = size;
        Ready = reader.ReadBoolean();
        DescriptorArea = reader.ReadUInt64();
        DriverArea = reader.ReadUInt64();
        DeviceArea = reader.ReadUInt64();
        EventIndex = reader.ReadBoolean();
        IndirectDescriptors = reader.ReadBoolean();
        nextAvailable = reader.ReadUInt16();
        nextUsed = reader.ReadUInt16();
        usedAtLastNotification = reader.ReadUInt16();
        int fault = reader.ReadInt32();
        if (fault < -1 || fault >= faults.Length)
        {
            throw reader.Invalid($"virtqueue fault {fault}");
        }
        Fault = fault < 0 ? null : (VirtqueueFault)fault;
        ChainsTaken = reader.ReadInt64();
        IndirectChains = reader.ReadInt64();
        NotificationsWanted = reader.ReadInt64();
        NotificationsSuppressed = reader.ReadInt64();
        int kinds = reader.ReadInt32();
        if (kinds != faults.Length)
        {
            throw reader.Invalid($"{kinds} virtqueue fault counters where {faults.Length} are known");
        }
        for (int i = 0; i < faults.Length; i++)
        {
            faults[i] = reader.ReadInt64();
        }
    }
}
