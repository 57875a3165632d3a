namespace Nestor.Hypervisor.Devices.Virtio;

/// <summary>The device status bits the driver and the device set during initialization and operation (virtio 1.2
/// §2.1).</summary>
[Flags]
public enum VirtioDeviceStatus : uint
{
    /// <summary>Nothing: the value after a reset.</summary>
    None = 0,

    /// <summary>The guest has noticed the device.</summary>
    Acknowledge = 1,

    /// <summary>The guest knows how to drive the device.</summary>
    Driver = 2,

    /// <summary>The driver is set up and ready to drive the device: the device may use its queues.</summary>
    DriverOk = 4,

    /// <summary>The driver has acknowledged the features it understands; feature negotiation is complete (the device
    /// refuses the bit, leaving it clear, for a feature set it cannot work with).</summary>
    FeaturesOk = 8,

    /// <summary>Set by the device: it met an error from which only a reset recovers (§2.1.2).</summary>
    DeviceNeedsReset = 64,

    /// <summary>The driver gave up on the device.</summary>
    Failed = 128,
}

/// <summary>Feature bits that belong to the transport and the virtqueues rather than to a device type (virtio 1.2
/// §6, "Reserved Feature Bits").</summary>
public static class VirtioFeatures
{
    /// <summary>VIRTIO_F_INDIRECT_DESC (28): descriptors may point at a table of descriptors (§2.7.5.3).</summary>
    public const ulong IndirectDescriptors = 1UL << 28;

    /// <summary>VIRTIO_F_EVENT_IDX (29): the used_event and avail_event fields suppress notifications (§2.7.7,
    /// §2.7.10).</summary>
    public const ulong EventIndex = 1UL << 29;

    /// <summary>VIRTIO_F_VERSION_1 (32): the device follows virtio 1.x, not the legacy interface. A driver that does
    /// not accept it is refused at FEATURES_OK (§6.1: a device may fail to operate further without it).</summary>
    public const ulong Version1 = 1UL << 32;

    /// <summary>What every Nestor virtio device offers besides its own bits.</summary>
    public const ulong Transport = IndirectDescriptors | EventIndex | Version1;
}

/// <summary>The virtio device IDs Nestor implements (virtio 1.2 §5).</summary>
public enum VirtioDeviceType : uint
{
    /// <summary>virtio-blk (§5.2).</summary>
    Block = 2,

    /// <summary>virtio-console (§5.3).</summary>
    Console = 3,

    /// <summary>virtio-balloon, the traditional memory balloon (§5.5).</summary>
    Balloon = 5,
}
