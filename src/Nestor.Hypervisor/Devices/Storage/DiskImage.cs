using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Nestor.Host;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Devices.Storage;

/// <summary>A raw disk image: a regular file on the host whose bytes are the disk's sectors, sector <c>n</c> at offset
/// <c>n × 512</c>. It is owned by one VM: opened with an exclusive flock(2) (a shared one when read-only), so a second
/// nestor given the same file is refused while the first runs, and the lock goes away with the process however it
/// ends. Reads and writes are pread/pwrite at offsets; a write is in the host's page cache until <see cref="Flush"/>
/// (fdatasync), which is what the guest's flush command (ATA FLUSH CACHE, VIRTIO_BLK_T_FLUSH) becomes, so that a write
/// acknowledged before a guest flush survives even the host's crash, and certainly the VMM's death.</summary>
public sealed class DiskImage : IBlockBackend
{
    /// <summary>The most sectors a disk may have: ATA's 48-bit LBA (ATA/ATAPI-6 §6.16) counts them in IDENTIFY words
    /// 100–103, whose largest value, 2⁴⁸ − 1, is the highest LBA plus one.</summary>
    public const long MaximumSectors = (1L << 48) - 1;

    private const int ErrorNoEntry = 2, ErrorAccess = 13, ErrorWouldBlock = 11, ErrorReadOnlyFileSystem = 30, ErrorPermission = 1;

    private readonly SafeFileHandle handle;
    private bool unflushedWrites;
    private bool disposed;

    private DiskImage(string path, SafeFileHandle handle, long sectors, bool readOnly, string serial)
    {
        Path = path;
        Name = System.IO.Path.GetFileName(path);
        this.handle = handle;
        SectorCount = sectors;
        ReadOnly = readOnly;
        Serial = serial;
    }

    /// <summary>The image file as given.</summary>
    public string Path { get; }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public long SectorCount { get; }

    /// <inheritdoc/>
    public bool ReadOnly { get; }

    /// <summary>"NESTOR-" and the file's inode number in hex: the same file shows the same serial number run after
    /// run, and two files on one file system never the same.</summary>
    public string Serial { get; }

    /// <summary>fdatasync calls made (by <see cref="Flush"/> and by <see cref="Dispose"/>).</summary>
    public long Syncs { get; private set; }

    /// <summary>Opens <paramref name="path"/> as a disk, writable unless <paramref name="readOnly"/>.</summary>
    /// <exception cref="BadInputException">The file is missing, not a regular file, not readable, not writable
    /// (without <paramref name="readOnly"/>), not a whole number of sectors, too large, or in use by another
    /// process.</exception>
    public static DiskImage Open(string path, bool readOnly)
    {
        var (kind, _, statError) = HostFile.Stat(path);
        if (statError != 0)
        {
            throw statError == ErrorNoEntry
                ? new BadInputException($"disk '{path}' does not exist",
                    $"Give the path of a raw disk image; an empty one is made with: truncate -s 64M {path}")
                : new BadInputException($"disk '{path}' cannot be read: {Marshal.GetPInvokeErrorMessage(statError)}",
                    "Give the path of a raw disk image this user can read");
        }
        if (kind != HostFileKind.Regular)
        {
            throw new BadInputException($"disk '{path}' is {HostFile.Describe(kind)}, not a disk image file",
                "Give the path of a raw disk image: a regular file whose bytes are the disk's sectors");
        }
        var (opened, openError) = FileLockCalls.Open(path, writable: !readOnly);
        if (opened is null)
        {
            throw OpenFailure(path, readOnly, openError);
        }
        try
        {
            // Checked again on the open file: the path may have been replaced since the stat.
            long length = RandomAccess.GetLength(opened);
            CheckSize(path, length);
            var identity = FileLockCalls.Identity(opened);
            int lockError = FileLockCalls.TryLock(opened, exclusive: !readOnly);
            if (lockError != 0)
            {
                throw LockFailure(path, readOnly, lockError, identity);
            }
            return new DiskImage(path, opened, length / IBlockBackend.SectorSize, readOnly, $"NESTOR-{identity.Inode:X}");
        }
        catch
        {
            opened.Dispose();
            throw;
        }
    }

    /// <summary>Refuses a size that is not a disk: empty, not a whole number of 512-byte sectors, or beyond ATA's 48-bit
    /// addressing.</summary>
    internal static void CheckSize(string path, long bytes)
    {
        const int sector = IBlockBackend.SectorSize;
        if (bytes == 0)
        {
            throw new BadInputException($"disk '{path}' is empty (0 bytes)",
                $"Give it a size first, e.g.: truncate -s 64M {path}");
        }
        if (bytes % sector != 0)
        {
            long up = (bytes / sector + 1) * sector;
            throw new BadInputException($"disk '{path}' is {bytes} bytes, not a whole number of {sector}-byte sectors",
                $"Resize it to a multiple of {sector} bytes, e.g.: truncate -s {up} {path}");
        }
        if (bytes / sector > MaximumSectors)
        {
            throw new BadInputException(
                $"disk '{path}' is {bytes} bytes ({bytes / sector} sectors), more than the {MaximumSectors} sectors ATA's 48-bit LBA can address",
                $"Give a disk of at most {MaximumSectors * sector} bytes (128 PiB)");
        }
    }

    private static BadInputException OpenFailure(string path, bool readOnly, int error)
    {
        string reason = Marshal.GetPInvokeErrorMessage(error);
        if (error is ErrorAccess or ErrorPermission or ErrorReadOnlyFileSystem && !readOnly)
        {
            // Writable failed: say which it is, since ",ro" cures the one and not the other.
            var (probe, probeError) = FileLockCalls.Open(path, writable: false);
            probe?.Dispose();
            if (probe is not null)
            {
                return new BadInputException($"disk '{path}' is not writable ({reason})",
                    $"Add ,ro to attach it read-only (--disk {path},ro; the guest's writes then fail), or make it writable");
            }
            error = probeError;
            reason = Marshal.GetPInvokeErrorMessage(error);
        }
        return error is ErrorAccess or ErrorPermission
            ? new BadInputException($"disk '{path}' is not readable ({reason})",
                "Make it readable by this user (chmod, chown), or run nestor as a user who can read it")
            : new BadInputException($"disk '{path}' cannot be opened: {reason}", "Give the path of a raw disk image");
    }

    private static BadInputException LockFailure(string path, bool readOnly, int error, FileIdentity identity)
    {
        if (error != ErrorWouldBlock)
        {
            return new BadInputException($"disk '{path}' cannot be locked: {Marshal.GetPInvokeErrorMessage(error)}",
                "Give a disk image on a local file system, which supports flock(2)");
        }
        int? holder = FileLockCalls.LockHolder(identity);
        if (holder == Environment.ProcessId)
        {
            return new BadInputException($"disk '{path}' is in use by another process (pid {holder}, this nestor: is the file given twice?)",
                "Give each image file once: two disks of one VM on one file would corrupt it");
        }
        string who = holder is { } pid ? $" (pid {pid})" : "";
        return new BadInputException($"disk '{path}' is in use by another process{who}",
            readOnly
                ? "Wait until the process writing it has ended; read-only users can share a disk (,ro on every one)"
                : "Give this VM its own copy (cp --reflink=auto), or attach it with ,ro everywhere: two VMs writing one disk would corrupt it");
    }

    /// <inheritdoc/>
    public void Read(long sector, Span<byte> destination)
    {
        long offset = Offset(sector, destination.Length);
        while (destination.Length > 0)
        {
            int read = RandomAccess.Read(handle, destination, offset);
            if (read == 0)
            {
                throw new IOException($"{Name}: the file ended at byte {offset}, inside the disk (was it truncated?)");
            }
            destination = destination[read..];
            offset += read;
        }
    }

    /// <inheritdoc/>
    public void Write(long sector, ReadOnlySpan<byte> source)
    {
        if (ReadOnly)
        {
            throw new InvalidOperationException($"{Name} is read-only");
        }
        long offset = Offset(sector, source.Length);
        RandomAccess.Write(handle, source, offset);
        unflushedWrites = true;
    }

    /// <inheritdoc/>
    /// <exception cref="IOException">The host could not make the writes stable (fdatasync failed).</exception>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (ReadOnly)
        {
            return; // nothing was written through this handle
        }
        try
        {
            FileLockCalls.SyncData(handle);
        }
        catch (HostCallException e)
        {
            throw new IOException($"{Name}: {e.Message}", e);
        }
        Syncs++;
        unflushedWrites = false;
    }

    /// <summary>Flushes what is unflushed and closes the file, releasing its lock.</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }
        try
        {
            if (unflushedWrites)
            {
                Flush();
            }
        }
        catch (IOException)
        {
            // Nothing is left to tell at the VM's end: the guest had its chance to flush and see the error.
        }
        finally
        {
            disposed = true;
            handle.Dispose();
        }
    }

    private long Offset(long sector, int length)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (length % IBlockBackend.SectorSize != 0 || sector < 0 || sector > SectorCount - length / IBlockBackend.SectorSize)
        {
            throw new ArgumentOutOfRangeException(nameof(sector),
                $"sectors {sector}+{length / IBlockBackend.SectorSize} are outside {Name} ({SectorCount} sectors)");
        }
        return sector * IBlockBackend.SectorSize;
    }
}
