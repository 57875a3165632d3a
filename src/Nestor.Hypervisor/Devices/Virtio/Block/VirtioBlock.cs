using System.Buffers.Binary;
using Nestor.Hypervisor.Devices.Storage;

namespace Nestor.Hypervisor.Devices.Virtio.Block;

/// <summary>virtio-blk (virtio 1.2 §5.2, device ID 2) over an <see cref="IBlockBackend"/>: one request queue; the
/// configuration space gives the capacity in 512-byte sectors, seg_max and size_max; it offers VIRTIO_BLK_F_FLUSH
/// (a write is volatile until a flush, which makes every earlier write stable on the host, §5.2.6.3), and
/// VIRTIO_BLK_F_RO for a read-only disk. Requests IN, OUT, FLUSH and GET_ID end with status OK, IOERR (out of range,
/// a length not a multiple of 512, a write to a read-only disk, a host I/O error) or UNSUPP (any other type). A
/// driver that did not negotiate FLUSH gets writethrough: each OUT is flushed before it completes (§5.2.6.3, the
/// device MAY commit writes before completion). Data moves through one bounce buffer of
/// <see cref="BounceBytes"/> allocated with the device, so a request allocates nothing.</summary>
public sealed class VirtioBlock : IVirtioDevice
{
    /// <summary>VIRTIO_BLK_F_SIZE_MAX (1): <see cref="SizeMax"/> is valid.</summary>
    public const ulong FeatureSizeMax = 1UL << 1;

    /// <summary>VIRTIO_BLK_F_SEG_MAX (2): <see cref="SegmentMax"/> is valid.</summary>
    public const ulong FeatureSegmentMax = 1UL << 2;

    /// <summary>VIRTIO_BLK_F_RO (5): the device is read-only.</summary>
    public const ulong FeatureReadOnly = 1UL << 5;

    /// <summary>VIRTIO_BLK_F_FLUSH (9): the FLUSH command is supported (a writeback cache).</summary>
    public const ulong FeatureFlush = 1UL << 9;

    /// <summary>Request types (§5.2.6).</summary>
    public const uint TypeIn = 0, TypeOut = 1, TypeFlush = 4, TypeGetId = 8;

    /// <summary>Request status values (§5.2.6).</summary>
    public const byte StatusOk = 0, StatusIoError = 1, StatusUnsupported = 2;

    /// <summary>The request queue's size.</summary>
    public const ushort QueueSize = 256;

    /// <summary>Largest single segment (size_max): 1 MiB.</summary>
    public const uint SizeMax = 1u << 20;

    /// <summary>Most data segments in one request (seg_max): the queue size less the header and the status, as
    /// Linux's driver assumes without indirect descriptors.</summary>
    public const uint SegmentMax = QueueSize - 2;

    /// <summary>Bytes of the device's bounce buffer between the backend and guest memory.</summary>
    public const int BounceBytes = 64 * 1024;

    /// <summary>The GET_ID string's length (§5.2.6: 20 bytes, NUL-padded).</summary>
    public const int IdLength = 20;

    private const int HeaderLength = 16;
    private const int ConfigLength = 60; // struct virtio_blk_config through unused1; what follows belongs to features not offered

    private readonly IBlockBackend backend;
    private readonly byte[] bounce = new byte[BounceBytes];
    private readonly byte[] identifier = new byte[IdLength];
    private bool flushNegotiated;

    public VirtioBlock(IBlockBackend backend)
    {
        this.backend = backend;
        var serial = System.Text.Encoding.ASCII.GetBytes(backend.Serial);
        serial.AsSpan(0, Math.Min(serial.Length, IdLength)).CopyTo(identifier);
    }

    /// <summary>The disk behind the device.</summary>
    public IBlockBackend Backend => backend;

    public string Name => "virtio-blk";

    public VirtioDeviceType DeviceType => VirtioDeviceType.Block;

    public ulong DeviceFeatures => FeatureSizeMax | FeatureSegmentMax | FeatureFlush | (backend.ReadOnly ? FeatureReadOnly : 0);

    public int QueueCount => 1;

    public ushort MaximumQueueSize(int queue) => QueueSize;

    public int ConfigSize => ConfigLength;

    /// <summary>Requests taken from the queue.</summary>
    public long Requests { get; private set; }

    /// <summary>IN requests served.</summary>
    public long Reads { get; private set; }

    /// <summary>OUT requests served.</summary>
    public long Writes { get; private set; }

    /// <summary>FLUSH requests served, and flushes of a writethrough OUT.</summary>
    public long Flushes { get; private set; }

    /// <summary>GET_ID requests served.</summary>
    public long IdRequests { get; private set; }

    /// <summary>Requests completed with IOERR.</summary>
    public long IoErrors { get; private set; }

    /// <summary>Requests completed with UNSUPP.</summary>
    public long Unsupported { get; private set; }

    /// <summary>Bytes read from the disk into guest memory.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Bytes written from guest memory to the disk.</summary>
    public long BytesWritten { get; private set; }

    public void ReadConfig(int offset, Span<byte> destination)
    {
        // struct virtio_blk_config (§5.2.4): capacity at 0, size_max at 8, seg_max at 12; geometry, blk_size, topology,
        // writeback and the discard and write-zeroes limits read 0 (their features are not offered).
        Span<byte> config = stackalloc byte[ConfigLength];
        config.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(config, (ulong)backend.SectorCount);
        BinaryPrimitives.WriteUInt32LittleEndian(config[8..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(config[12..], SegmentMax);
        BinaryPrimitives.WriteUInt16LittleEndian(config[34..], 1); // num_queues (valid with VIRTIO_BLK_F_MQ only)
        config.Slice(offset, destination.Length).CopyTo(destination);
    }

    public void WriteConfig(int offset, ReadOnlySpan<byte> source)
    {
        // Nothing is writable: writeback is VIRTIO_BLK_F_CONFIG_WCE's, which is not offered.
    }

    public void Activate(ulong negotiated) => flushNegotiated = (negotiated & FeatureFlush) != 0;

    public void Reset() => flushNegotiated = false;

    public void Process(int index, SplitVirtqueue queue)
    {
        Span<byte> header = stackalloc byte[HeaderLength];
        Span<byte> status = stackalloc byte[1];
        while (queue.TryTake(out var chain))
        {
            Requests++;
            if (chain.WritableLength < 1)
            {
                // No room for the status byte: the request cannot even be answered (§5.2.6: status is the last,
                // device-writable byte).
                queue.Fail(VirtqueueFault.MalformedRequest);
                return;
            }
            uint written = 1;
            byte result;
            if (!chain.Read(0, header))
            {
                result = StatusIoError;
            }
            else
            {
                uint type = BinaryPrimitives.ReadUInt32LittleEndian(header);
                ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
                long dataIn = chain.WritableLength - 1, dataOut = chain.ReadableLength - HeaderLength;
                (result, uint data) = type switch
                {
                    TypeIn => In(chain, sector, dataIn),
                    TypeOut => Out(chain, sector, dataOut),
                    TypeFlush => (Flush(), 0u),
                    TypeGetId => GetId(chain, dataIn),
                    _ => (StatusUnsupported, 0u),
                };
                if (queue.Fault is not null)
                {
                    return;
                }
                written += data;
            }
            if (result == StatusIoError)
            {
                IoErrors++;
            }
            else if (result == StatusUnsupported)
            {
                Unsupported++;
            }
            status[0] = result;
            if (!chain.Write(chain.WritableLength - 1, status))
            {
                queue.Fail(VirtqueueFault.OutsideRam);
                return;
            }
            queue.Complete(chain, written);
        }
    }

    /// <summary>Whether <paramref name="bytes"/> from <paramref name="sector"/> is a whole number of sectors inside
    /// the disk.</summary>
    private bool InRange(ulong sector, long bytes) =>
        bytes % IBlockBackend.SectorSize == 0 && sector <= (ulong)backend.SectorCount
        && (ulong)(bytes / IBlockBackend.SectorSize) <= (ulong)backend.SectorCount - sector;

    private (byte, uint) In(DescriptorChain chain, ulong sector, long bytes)
    {
        if (!InRange(sector, bytes))
        {
            return (StatusIoError, 0);
        }
        for (long done = 0; done < bytes;)
        {
            int n = (int)Math.Min(BounceBytes, bytes - done);
            var buffer = bounce.AsSpan(0, n);
            try
            {
                backend.Read((long)sector + done / IBlockBackend.SectorSize, buffer);
            }
            catch (IOException)
            {
                return (StatusIoError, (uint)done);
            }
            if (!chain.Write(done, buffer))
            {
                return (StatusIoError, (uint)done);
            }
            done += n;
            BytesRead += n;
        }
        Reads++;
        return (StatusOk, (uint)bytes);
    }

    private (byte, uint) Out(DescriptorChain chain, ulong sector, long bytes)
    {
        if (backend.ReadOnly)
        {
            return (StatusIoError, 0); // §5.2.6.2: IOERR and no data written, with VIRTIO_BLK_F_RO offered
        }
        if (bytes < 0 || !InRange(sector, bytes))
        {
            return (StatusIoError, 0);
        }
        for (long done = 0; done < bytes;)
        {
            int n = (int)Math.Min(BounceBytes, bytes - done);
            var buffer = bounce.AsSpan(0, n);
            if (!chain.Read(HeaderLength + done, buffer))
            {
                return (StatusIoError, 0);
            }
            try
            {
                backend.Write((long)sector + done / IBlockBackend.SectorSize, buffer);
            }
            catch (IOException)
            {
                return (StatusIoError, 0);
            }
            done += n;
            BytesWritten += n;
        }
        Writes++;
        if (!flushNegotiated && Flush() != StatusOk)
        {
            return (StatusIoError, 0);
        }
        return (StatusOk, 0);
    }

    private byte Flush()
    {
        try
        {
            backend.Flush();
        }
        catch (IOException)
        {
            return StatusIoError;
        }
        Flushes++;
        return StatusOk;
    }

    private (byte, uint) GetId(DescriptorChain chain, long bytes)
    {
        if (bytes < IdLength || !chain.Write(0, identifier))
        {
            return (StatusIoError, 0);
        }
        IdRequests++;
        return (StatusOk, IdLength);
    }

    /// <summary>The counters and the negotiated cache mode.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteBoolean(flushNegotiated);
        foreach (long counter in (ReadOnlySpan<long>)[Requests, Reads, Writes, Flushes, IdRequests, IoErrors, Unsupported, BytesRead, BytesWritten])
        {
            writer.WriteInt64(counter);
        }
    }

    public void Restore(Persistence.SnapshotReader reader)
    {
        flushNegotiated = reader.ReadBoolean();
        Requests = reader.ReadInt64();
        Reads = reader.ReadInt64();
        Writes = reader.ReadInt64();
        Flushes = reader.ReadInt64();
        IdRequests = reader.ReadInt64();
        IoErrors = reader.ReadInt64();
        Unsupported = reader.ReadInt64();
        BytesRead = reader.ReadInt64();
        BytesWritten = reader.ReadInt64();
    }
}
