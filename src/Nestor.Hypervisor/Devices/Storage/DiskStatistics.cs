namespace Nestor.Hypervisor.Devices.Storage;

/// <summary>What one disk's controller did for the guest, counted the same way for every interface so that
/// <c>--stats</c> can put them side by side: a request is one command (ATA) or one request (virtio-blk, the assigned
/// controller), whatever its length.</summary>
public sealed class DiskStatistics
{
    /// <summary>Read requests completed.</summary>
    public long Reads { get; set; }

    /// <summary>Write requests completed.</summary>
    public long Writes { get; set; }

    /// <summary>Flush requests completed (each one an fdatasync of a file-backed disk).</summary>
    public long Flushes { get; set; }

    /// <summary>Other requests completed (IDENTIFY, GET_ID, SET MULTIPLE MODE).</summary>
    public long Other { get; set; }

    /// <summary>Requests that ended in an error the guest saw (aborted, out of range, write-protected, I/O error).</summary>
    public long Errors { get; set; }

    /// <summary>Bytes read from the disk into the guest.</summary>
    public long BytesRead { get; set; }

    /// <summary>Bytes the guest wrote to the disk.</summary>
    public long BytesWritten { get; set; }

    /// <summary>Interrupts the controller raised for this disk.</summary>
    public long Interrupts { get; set; }

    /// <summary>All requests, successful or not.</summary>
    public long Requests => Reads + Writes + Flushes + Other + Errors;
}

/// <summary>A disk as the VM has it: its backend, the interface and place it was attached at, and its counters.</summary>
/// <param name="Backend">What holds the sectors.</param>
/// <param name="Interface">How the guest sees it.</param>
/// <param name="Index">Its place among the disks of its interface (ATA: 0 master, 1 slave; virtio-mmio slot;
/// assigned-controller slot).</param>
/// <param name="Statistics">Its controller's counters.</param>
public sealed record AttachedDisk(IBlockBackend Backend, DiskInterface Interface, int Index, DiskStatistics Statistics)
{
    /// <summary>Where the guest finds it, for tables: "ata0 (master)", "virtio slot 1", "assigned 0".</summary>
    public string Place => Interface switch
    {
        DiskInterface.Ata => $"ata{Index} ({(Index == 0 ? "master" : "slave")})",
        DiskInterface.Virtio => $"virtio slot {Index}",
        _ => $"assigned {Index}",
    };
}
