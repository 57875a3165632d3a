using System.Buffers.Binary;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Memory;

namespace Nestor.Hypervisor.Devices.Virtio;

/// <summary>The virtio-over-MMIO transport, version 2 (virtio 1.2 §4.2.2; no legacy interface): the register block of
/// one virtio-mmio slot (docs/devices.md), the device status and its initialization sequence (§3.1), feature
/// negotiation, the split virtqueues and the interrupt. The interrupt line is level-triggered and asserted exactly
/// while InterruptStatus is not 0 (§4.2.3.4). A driver's mistake never throws: a register access of the wrong size or
/// direction is ignored and counted (<see cref="BadAccesses"/>), a malformed ring or request sets DEVICE_NEEDS_RESET
/// (§2.1.2) with a configuration change notification, and the queues stay unused until the driver resets the device.</summary>
/// <remarks>VendorID reads 0x5453454E, "NEST" in little-endian ASCII: the device is Nestor's own, and §4.2.2 leaves the
/// vendor to the implementation (drivers match on DeviceID only; QEMU's devices say 0x554D4551, "QEMU").</remarks>
public sealed class VirtioMmioTransport : IMmioDevice, Persistence.ISnapshottable
{
    /// <summary>MagicValue: "virt" in little-endian ASCII.</summary>
    public const uint MagicValue = 0x7472_6976;

    /// <summary>The register layout's version: 2, the non-legacy one.</summary>
    public const uint Version = 2;

    /// <summary>VendorID: "NEST".</summary>
    public const uint VendorId = 0x5453_454E;

    /// <summary>Where the device-specific configuration space starts.</summary>
    public const int ConfigOffset = 0x100;

    /// <summary>InterruptStatus bit 0: a used buffer notification.</summary>
    public const uint UsedBufferInterrupt = 1;

    /// <summary>InterruptStatus bit 1: a configuration change notification.</summary>
    public const uint ConfigurationChangeInterrupt = 2;

    // Register offsets (§4.2.2, table "MMIO Device Register Layout").
    private const int RegMagic = 0x000, RegVersion = 0x004, RegDeviceId = 0x008, RegVendorId = 0x00C,
        RegDeviceFeatures = 0x010, RegDeviceFeaturesSel = 0x014, RegDriverFeatures = 0x020, RegDriverFeaturesSel = 0x024,
        RegQueueSel = 0x030, RegQueueSizeMax = 0x034, RegQueueSize = 0x038, RegQueueReady = 0x044, RegQueueNotify = 0x050,
        RegInterruptStatus = 0x060, RegInterruptAck = 0x064, RegStatus = 0x070,
        RegQueueDescLow = 0x080, RegQueueDescHigh = 0x084, RegQueueDriverLow = 0x090, RegQueueDriverHigh = 0x094,
        RegQueueDeviceLow = 0x0A0, RegQueueDeviceHigh = 0x0A4, RegShmSel = 0x0AC, RegShmLenLow = 0x0B0,
        RegShmBaseHigh = 0x0BC, RegQueueReset = 0x0C0, RegConfigGeneration = 0x0FC;

    private readonly ulong baseAddress;
    private readonly IInterruptLine line;
    private readonly SplitVirtqueue[] queues;
    private readonly ulong offered;
    private VirtioDeviceStatus status;
    private uint deviceFeaturesSel, driverFeaturesSel, queueSel, interruptStatus, configGeneration;
    private ulong driverFeatures;

    /// <summary>The transport for <paramref name="device"/> at <paramref name="baseAddress"/>, raising
    /// <paramref name="line"/>; its queues reach guest memory through <paramref name="dma"/>.</summary>
    public VirtioMmioTransport(IVirtioDevice device, GuestDma dma, GuestMemory memory, IInterruptLine line, ulong baseAddress, int slot)
    {
        Device = device;
        this.line = line;
        this.baseAddress = baseAddress;
        Slot = slot;
        offered = device.DeviceFeatures | VirtioFeatures.Transport;
        queues = new SplitVirtqueue[device.QueueCount];
        for (int i = 0; i < queues.Length; i++)
        {
            queues[i] = new SplitVirtqueue(dma, memory, device.MaximumQueueSize(i));
        }
    }

    /// <summary>The device type behind the registers.</summary>
    public IVirtioDevice Device { get; }

    /// <summary>The virtio-mmio slot (0–7).</summary>
    public int Slot { get; }

    /// <summary>The interrupt line (GSI 16 + slot).</summary>
    public IInterruptLine Line => line;

    public string Name => $"{Device.Name}@virtio{Slot}";

    /// <summary>The device status register.</summary>
    public VirtioDeviceStatus Status => status;

    /// <summary>The features the device offers (device type's and the transport's).</summary>
    public ulong OfferedFeatures => offered;

    /// <summary>The features the driver accepted, valid once FEATURES_OK is set.</summary>
    public ulong NegotiatedFeatures => (status & VirtioDeviceStatus.FeaturesOk) != 0 ? driverFeatures : 0;

    /// <summary>The InterruptStatus register.</summary>
    public uint InterruptStatus => interruptStatus;

    /// <summary>The device's queues.</summary>
    public IReadOnlyList<SplitVirtqueue> Queues => queues;

    /// <summary>Writes to QueueNotify (available buffer notifications).</summary>
    public long Notifies { get; private set; }

    /// <summary>Times the interrupt line was asserted (InterruptStatus going from 0 to not 0).</summary>
    public long Interrupts { get; private set; }

    /// <summary>Used buffer notifications sent (at most one per batch, whatever the line's state).</summary>
    public long UsedBufferNotifications { get; private set; }

    /// <summary>Times the device entered DEVICE_NEEDS_RESET.</summary>
    public long NeedsResetCount { get; private set; }

    /// <summary>Feature sets refused at FEATURES_OK (without VIRTIO_F_VERSION_1, or with bits not offered).</summary>
    public long FeaturesRefused { get; private set; }

    /// <summary>Register accesses the spec forbids (wrong size, a write-only register read, a read-only one written,
    /// a queue register written while the queue is ready, an offset with no register), ignored.</summary>
    public long BadAccesses { get; private set; }

    /// <summary>Device resets (status 0 written).</summary>
    public long Resets { get; private set; }

    public ulong Read(ulong address, int size)
    {
        int offset = (int)(address - baseAddress);
        if (offset >= ConfigOffset)
        {
            return ReadConfig(offset - ConfigOffset, size);
        }
        if (size != 4 || (offset & 3) != 0)
        {
            // §4.2.2.2: the control registers take 32-bit aligned accesses only.
            BadAccesses++;
            return 0;
        }
        switch (offset)
        {
            case RegMagic:
                return MagicValue;
            case RegVersion:
                return Version;
            case RegDeviceId:
                return (uint)Device.DeviceType;
            case RegVendorId:
                return VendorId;
            case RegDeviceFeatures:
                return deviceFeaturesSel < 2 ? (uint)(offered >> (int)(32 * deviceFeaturesSel)) : 0u;
            case RegQueueSizeMax:
                return Selected is { } q ? q.MaximumSize : 0u;
            case RegQueueReady:
                return Selected is { Ready: true } ? 1u : 0u;
            case RegInterruptStatus:
                return interruptStatus;
            case RegStatus:
                return (uint)status;
            case >= RegShmLenLow and <= RegShmBaseHigh:
                return uint.MaxValue; // no shared memory regions: length and base read all ones (§4.2.2)
            case RegQueueReset:
                return 0; // VIRTIO_F_RING_RESET is not offered
            case RegConfigGeneration:
                return configGeneration;
            default:
                BadAccesses++; // write-only or no register
                return 0;
        }
    }

    public void Write(ulong address, int size, ulong value)
    {
        int offset = (int)(address - baseAddress);
        if (offset >= ConfigOffset)
        {
            WriteConfig(offset - ConfigOffset, size, value);
            return;
        }
        if (size != 4 || (offset & 3) != 0)
        {
            BadAccesses++;
            return;
        }
        uint v = (uint)value;
        switch (offset)
        {
            case RegDeviceFeaturesSel:
                deviceFeaturesSel = v;
                break;
            case RegDriverFeatures:
                if (driverFeaturesSel < 2 && (status & VirtioDeviceStatus.FeaturesOk) == 0)
                {
                    int shift = (int)(32 * driverFeaturesSel);
                    driverFeatures = (driverFeatures & ~(0xFFFF_FFFFUL << shift)) | ((ulong)v << shift);
                }
                else
                {
                    BadAccesses++; // §3.1.1: features are fixed once FEATURES_OK is set
                }
                break;
            case RegDriverFeaturesSel:
                driverFeaturesSel = v;
                break;
            case RegQueueSel:
                queueSel = v;
                break;
            case RegQueueSize:
                if (Configurable() is { } sized)
                {
                    sized.Size = v <= sized.MaximumSize ? (ushort)v : (ushort)0; // 0 is refused when the queue is made ready
                }
                break;
            case RegQueueReady:
                WriteQueueReady(v);
                break;
            case RegQueueNotify:
                Notify(v);
                break;
            case RegInterruptAck:
                interruptStatus &= ~v;
                if (interruptStatus == 0)
                {
                    line.Lower();
                }
                break;
            case RegStatus:
                WriteStatus(v);
                break;
            case RegQueueDescLow:
            case RegQueueDescHigh:
            case RegQueueDriverLow:
            case RegQueueDriverHigh:
            case RegQueueDeviceLow:
            case RegQueueDeviceHigh:
                WriteQueueAddress(offset, v);
                break;
            case RegShmSel:
                break;
            default:
                BadAccesses++; // read-only or no register
                break;
        }
    }

    /// <summary>Serves queue <paramref name="index"/> as a notify would (when the device is live), then raises the
    /// interrupt if the driver wants one for the batch.</summary>
    public void ProcessQueue(int index)
    {
        if ((uint)index >= (uint)queues.Length || !Live)
        {
            return;
        }
        var queue = queues[index];
        if (!queue.Ready)
        {
            return;
        }
        Device.Process(index, queue);
        if (queue.Fault is not null)
        {
            NeedsReset();
            return;
        }
        // With EVENT_IDX the device publishes avail_event in TakeNotification; a chain made available meanwhile
        // would have been taken by Process, since the guest does not run while the device works.
        if (queue.TakeNotification())
        {
            UsedBufferNotifications++;
            Interrupt(UsedBufferInterrupt);
        }
        if (queue.Fault is not null)
        {
            NeedsReset();
        }
    }

    /// <summary>The device's configuration changed (or it needs a reset): a new ConfigGeneration and a configuration
    /// change notification once the driver is running (§4.2.3.4).</summary>
    public void ConfigurationChanged()
    {
        configGeneration++;
        if ((status & VirtioDeviceStatus.DriverOk) != 0)
        {
            Interrupt(ConfigurationChangeInterrupt);
        }
    }

    private bool Live => (status & (VirtioDeviceStatus.DriverOk | VirtioDeviceStatus.DeviceNeedsReset | VirtioDeviceStatus.Failed))
        == VirtioDeviceStatus.DriverOk;

    private SplitVirtqueue? Selected => queueSel < (uint)queues.Length ? queues[queueSel] : null;

    /// <summary>The selected queue if its registers may be written now (§4.2.2.2: not while it is ready).</summary>
    private SplitVirtqueue? Configurable()
    {
        if (Selected is { Ready: false } queue)
        {
            return queue;
        }
        BadAccesses++;
        return null;
    }

    private void WriteQueueAddress(int offset, uint value)
    {
        if (Configurable() is not { } queue)
        {
            return;
        }
        static ulong Set(ulong old, uint v, bool high) => high ? (old & 0xFFFF_FFFFUL) | ((ulong)v << 32) : (old & ~0xFFFF_FFFFUL) | v;
        bool high = (offset & 4) != 0;
        switch (offset & ~4)
        {
            case RegQueueDescLow:
                queue.DescriptorArea = Set(queue.DescriptorArea, value, high);
                break;
            case RegQueueDriverLow:
                queue.DriverArea = Set(queue.DriverArea, value, high);
                break;
            default:
                queue.DeviceArea = Set(queue.DeviceArea, value, high);
                break;
        }
    }

    private void WriteQueueReady(uint value)
    {
        if (Selected is not { } queue)
        {
            BadAccesses++;
            return;
        }
        if (value == 0)
        {
            queue.SetReady(false);
            return;
        }
        if (queue.Ready)
        {
            return;
        }
        queue.EventIndex = (driverFeatures & VirtioFeatures.EventIndex) != 0;
        queue.IndirectDescriptors = (driverFeatures & VirtioFeatures.IndirectDescriptors) != 0;
        if (!queue.SetReady(true))
        {
            NeedsReset();
        }
    }

    private void Notify(uint value)
    {
        Notifies++;
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue's index (§4.2.3.3).
        if (value >= (uint)queues.Length)
        {
            BadAccesses++;
            return;
        }
        ProcessQueue((int)value);
    }

    private void WriteStatus(uint value)
    {
        if (value == 0)
        {
            Reset();
            return;
        }
        var requested = (VirtioDeviceStatus)(value & 0xFF) & ~VirtioDeviceStatus.DeviceNeedsReset;
        if ((requested & status & ~VirtioDeviceStatus.DeviceNeedsReset) != (status & ~VirtioDeviceStatus.DeviceNeedsReset))
        {
            BadAccesses++; // §2.1.1: the driver MUST NOT clear a status bit (only a reset does)
        }
        var before = status;
        var next = status | requested;
        if ((next & VirtioDeviceStatus.FeaturesOk) != 0 && (before & VirtioDeviceStatus.FeaturesOk) == 0)
        {
            // §3.1.1 step 5-6 and §2.2.1: a subset of what was offered, and VIRTIO_F_VERSION_1 among it, or the bit
            // stays clear and the driver, reading it back, knows the device is unusable with these features.
            if ((driverFeatures & ~offered) != 0 || (driverFeatures & VirtioFeatures.Version1) == 0)
            {
                FeaturesRefused++;
                next &= ~VirtioDeviceStatus.FeaturesOk;
            }
            else
            {
                Device.Activate(driverFeatures);
            }
        }
        if ((next & VirtioDeviceStatus.DriverOk) != 0 && (next & VirtioDeviceStatus.FeaturesOk) == 0)
        {
            BadAccesses++; // DRIVER_OK without negotiated features: the device does not go live
            next &= ~VirtioDeviceStatus.DriverOk;
        }
        status = next;
        if ((next & VirtioDeviceStatus.DriverOk) != 0 && (before & VirtioDeviceStatus.DriverOk) == 0)
        {
            // Buffers made available before DRIVER_OK are served now (§3.1.1: the device uses no buffer before it).
            for (int i = 0; i < queues.Length; i++)
            {
                if (queues[i].HasAvailable)
                {
                    ProcessQueue(i);
                }
            }
        }
    }

    private void Reset()
    {
        Resets++;
        status = VirtioDeviceStatus.None;
        deviceFeaturesSel = driverFeaturesSel = queueSel = 0;
        driverFeatures = 0;
        foreach (var queue in queues)
        {
            queue.Reset();
        }
        Device.Reset();
        // §4.2.2.1: reset clears InterruptStatus, so the level-triggered line goes down.
        interruptStatus = 0;
        line.Lower();
    }

    private void NeedsReset()
    {
        if ((status & VirtioDeviceStatus.DeviceNeedsReset) != 0)
        {
            return;
        }
        NeedsResetCount++;
        status |= VirtioDeviceStatus.DeviceNeedsReset;
        // §2.1.2: with DRIVER_OK set, the device MUST send a configuration change notification after setting it.
        ConfigurationChanged();
    }

    private void Interrupt(uint reason)
    {
        bool wasQuiet = interruptStatus == 0;
        interruptStatus |= reason;
        if (wasQuiet)
        {
            Interrupts++;
            line.Raise();
        }
    }

    private ulong ReadConfig(int offset, int size)
    {
        if (size is not (1 or 2 or 4 or 8) || offset + size > Device.ConfigSize)
        {
            BadAccesses++;
            return 0;
        }
        Span<byte> bytes = stackalloc byte[8];
        bytes.Clear();
        Device.ReadConfig(offset, bytes[..size]);
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    private void WriteConfig(int offset, int size, ulong value)
    {
        if (size is not (1 or 2 or 4 or 8) || offset + size > Device.ConfigSize)
        {
            BadAccesses++;
            return;
        }
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        Device.WriteConfig(offset, bytes[..size]);
    }

    /// <inheritdoc/>
    public string SectionTag => $"VIO{Slot}";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <summary>The registers, every queue, the counters, then the device type's own state.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteUInt32((uint)Device.DeviceType);
        writer.WriteUInt32((uint)status);
        writer.WriteUInt32(deviceFeaturesSel);
        writer.WriteUInt32(driverFeaturesSel);
        writer.WriteUInt64(driverFeatures);
        writer.WriteUInt32(queueSel);
        writer.WriteUInt32(interruptStatus);
        writer.WriteUInt32(configGeneration);
        foreach (long counter in (ReadOnlySpan<long>)[Notifies, Interrupts, UsedBufferNotifications, NeedsResetCount, FeaturesRefused, BadAccesses, Resets])
        {
            writer.WriteInt64(counter);
        }
        writer.WriteInt32(queues.Length);
        foreach (var queue in queues)
        {
            queue.Save(writer);
        }
        Device.Save(writer);
    }

    /// <summary>Reads what <see cref="Save"/> wrote; the line's level is the interrupt controllers' own section.</summary>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        uint type = reader.ReadUInt32();
        if (type != (uint)Device.DeviceType)
        {
            throw reader.Invalid($"a virtio device of type {type} restored into slot {Slot}, which holds {Device.Name}");
        }
        status = (VirtioDeviceStatus)reader.ReadUInt32();
        deviceFeaturesSel = reader.ReadUInt32();
        driverFeaturesSel = reader.ReadUInt32();
        driverFeatures = reader.ReadUInt64();
        queueSel = reader.ReadUInt32();
        interruptStatus = reader.ReadUInt32();
        configGeneration = reader.ReadUInt32();
        Notifies = reader.ReadInt64();
        Interrupts = reader.ReadInt64();
        UsedBufferNotifications = reader.ReadInt64();
        NeedsResetCount = reader.ReadInt64();
        FeaturesRefused = reader.ReadInt64();
        BadAccesses = reader.ReadInt64();
        Resets = reader.ReadInt64();
        int count = reader.ReadInt32();
        if (count != queues.Length)
        {
            throw reader.Invalid($"{count} queues for {Device.Name}, which has {queues.Length}");
        }
        foreach (var queue in queues)
        {
            queue.Restore(reader);
        }
        Device.Restore(reader);
    }
}
