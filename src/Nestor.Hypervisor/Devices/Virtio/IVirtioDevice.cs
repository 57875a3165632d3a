namespace Nestor.Hypervisor.Devices.Virtio;

/// <summary>A virtio device type behind a transport (virtio 1.2 §5): what it is, what it offers, its configuration
/// space and what it does with its queues. The transport (<see cref="VirtioMmioTransport"/>) owns the registers, the
/// status and feature negotiation, the queues and the interrupt; the device only serves chains.</summary>
public interface IVirtioDevice
{
    /// <summary>A short name for diagnostics and statistics (e.g. <c>virtio-blk</c>).</summary>
    string Name { get; }

    /// <summary>The virtio device ID (§5).</summary>
    VirtioDeviceType DeviceType { get; }

    /// <summary>The device type's own feature bits (0–23); the transport adds its own (<see cref="VirtioFeatures.Transport"/>).</summary>
    ulong DeviceFeatures { get; }

    /// <summary>How many virtqueues the device has.</summary>
    int QueueCount { get; }

    /// <summary>The largest size of queue <paramref name="queue"/> (a power of two).</summary>
    ushort MaximumQueueSize(int queue);

    /// <summary>The device-specific configuration space's size in bytes.</summary>
    int ConfigSize { get; }

    /// <summary>Reads configuration bytes from <paramref name="offset"/> (inside <see cref="ConfigSize"/>).</summary>
    void ReadConfig(int offset, Span<byte> destination);

    /// <summary>The driver writes configuration bytes at <paramref name="offset"/> (inside <see cref="ConfigSize"/>).</summary>
    void WriteConfig(int offset, ReadOnlySpan<byte> source);

    /// <summary>Feature negotiation ended (FEATURES_OK accepted) with <paramref name="negotiated"/>.</summary>
    void Activate(ulong negotiated);

    /// <summary>The device was reset (status 0 written): back to its state before the driver found it.</summary>
    void Reset();

    /// <summary>Serves what queue <paramref name="index"/> has available: takes chains with
    /// <see cref="SplitVirtqueue.TryTake"/> and returns them with <see cref="SplitVirtqueue.Complete"/>. Called after a
    /// notify and when the driver sets DRIVER_OK; a malformed request is <see cref="SplitVirtqueue.Fail"/>.</summary>
    void Process(int index, SplitVirtqueue queue);

    /// <summary>Writes the device type's own state (counters, buffered data) into the transport's snapshot section.</summary>
    void Save(Persistence.SnapshotWriter writer);

    /// <summary>Reads what <see cref="Save"/> wrote.</summary>
    void Restore(Persistence.SnapshotReader reader);
}
