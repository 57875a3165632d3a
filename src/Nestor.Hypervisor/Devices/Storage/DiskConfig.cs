namespace Nestor.Hypervisor.Devices.Storage;

/// <summary>The three ways the course names for giving a VM a disk.</summary>
public enum DiskInterface
{
    /// <summary>Emulated: an ATA disk on the primary IDE channel, programmed through I/O ports (PIO).</summary>
    Ata,

    /// <summary>Paravirtual: virtio-blk over virtio-mmio.</summary>
    Virtio,

    /// <summary>Dedicated: a DMA disk controller whose registers are mapped into the guest, its DMA confined by the
    /// IOMMU.</summary>
    Assigned,
}

/// <summary>One <c>--disk</c>: a raw image file on the host and the interface the guest sees it through.</summary>
/// <param name="Path">The raw disk image (its size a multiple of 512 bytes).</param>
/// <param name="Interface">How the guest sees it.</param>
/// <param name="ReadOnly">Writes are refused; the file is opened read-only.</param>
public sealed record DiskConfig(string Path, DiskInterface Interface = DiskInterface.Virtio, bool ReadOnly = false)
{
    /// <summary>A backend given directly instead of a file (tests, scratch disks); <see cref="Path"/> is then only a
    /// name.</summary>
    public IBlockBackend? Backend { get; init; }
}
