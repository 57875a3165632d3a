namespace Nestor.Hypervisor.Devices.Storage;

/// <summary>What a virtual disk controller (ATA, virtio-blk, the assigned controller, the service VM's back end)
/// reads and writes: a store of 512-byte sectors. One backend may sit behind any of them, so the same disk image can
/// be driven the three ways the course names and the results compared.</summary>
/// <remarks>Durability follows the guest's flush semantics (ATA FLUSH CACHE, VIRTIO_BLK_T_FLUSH): a write may sit in
/// a cache until <see cref="Flush"/>, which returns only when every earlier write is stable on the host (fsync), so
/// that no write acknowledged before a guest flush is lost even if the VMM is killed right after.</remarks>
public interface IBlockBackend : IDisposable
{
    /// <summary>Bytes per sector: always 512 (the unit of ATA LBAs and of virtio-blk's capacity).</summary>
    const int SectorSize = 512;

    /// <summary>A short name for diagnostics and statistics (the file name).</summary>
    string Name { get; }

    /// <summary>Capacity in 512-byte sectors.</summary>
    long SectorCount { get; }

    /// <summary>Writes are refused (the guest sees a write-protect error).</summary>
    bool ReadOnly { get; }

    /// <summary>Up to 20 ASCII characters naming this disk (ATA IDENTIFY's serial number, virtio-blk's GET_ID).</summary>
    string Serial { get; }

    /// <summary>Reads <paramref name="destination"/>.Length bytes (a multiple of 512) from <paramref name="sector"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is beyond <see cref="SectorCount"/>.</exception>
    /// <exception cref="IOException">The host could not read.</exception>
    void Read(long sector, Span<byte> destination);

    /// <summary>Writes <paramref name="source"/> (a multiple of 512 bytes) at <paramref name="sector"/>; stable only
    /// after the next <see cref="Flush"/>.</summary>
    /// <exception cref="InvalidOperationException">The backend is read-only.</exception>
    void Write(long sector, ReadOnlySpan<byte> source);

    /// <summary>Makes every earlier write stable on the host before returning.</summary>
    void Flush();
}

/// <summary>A disk held in memory: for tests and for scratch disks; <see cref="Flush"/> only counts.</summary>
public sealed class MemoryBlockBackend : IBlockBackend
{
    private readonly byte[] data;

    public MemoryBlockBackend(long sectorCount, bool readOnly = false, string name = "memory", string serial = "NESTOR-MEMORY")
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sectorCount);
        data = new byte[checked(sectorCount * IBlockBackend.SectorSize)];
        SectorCount = sectorCount;
        ReadOnly = readOnly;
        Name = name;
        Serial = serial;
    }

    public string Name { get; }

    public long SectorCount { get; }

    public bool ReadOnly { get; }

    public string Serial { get; }

    /// <summary>The disk's bytes, for tests to fill and inspect.</summary>
    public Span<byte> Contents => data;

    /// <summary>Flushes so far.</summary>
    public int Flushes { get; private set; }

    public void Read(long sector, Span<byte> destination) => Range(sector, destination.Length).CopyTo(destination);

    public void Write(long sector, ReadOnlySpan<byte> source)
    {
        if (ReadOnly)
        {
            throw new InvalidOperationException($"{Name} is read-only");
        }
        source.CopyTo(Range(sector, source.Length));
    }

    public void Flush() => Flushes++;

    public void Dispose()
    {
    }

    private Span<byte> Range(long sector, int length)
    {
        if (length % IBlockBackend.SectorSize != 0 || sector < 0 || sector + length / IBlockBackend.SectorSize > SectorCount)
        {
            throw new ArgumentOutOfRangeException(nameof(sector), $"sectors {sector}+{length / IBlockBackend.SectorSize} are outside {Name} ({SectorCount} sectors)");
        }
        return data.AsSpan(checked((int)(sector * IBlockBackend.SectorSize)), length);
    }
}
