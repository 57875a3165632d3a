using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Nestor.Host;

/// <summary>The identity of an open file: the device it lives on and its inode number (statx(2)'s stx_dev_major,
/// stx_dev_minor and stx_ino).</summary>
public readonly record struct FileIdentity(uint DeviceMajor, uint DeviceMinor, ulong Inode);

/// <summary>Opening a file by open(2) with exactly the flags asked (no lock of .NET's own), whole-file advisory locks
/// (flock(2)), fdatasync(2), and who holds a lock (/proc/locks, proc(5)). For files a process must own alone while it
/// runs, such as a VM's disk image: a flock lasts as long as the open file description and goes away with the
/// process, however it ends.</summary>
public static partial class FileLockCalls
{
    private const int OpenReadOnly = 0x0, OpenReadWrite = 0x2, OpenCloseOnExec = 0x80000;
    private const int LockShared = 1, LockExclusive = 2, LockNonBlocking = 4; // flock(2)'s LOCK_SH, LOCK_EX, LOCK_NB
    private const int AtEmptyPath = 0x1000;
    private const uint StatxInode = 0x100;
    private const int ErrorInterrupted = 4;

    /// <summary>Opens <paramref name="path"/> for reading, or for reading and writing, close-on-exec.</summary>
    /// <returns>The handle, or null and the errno.</returns>
    public static (SafeFileHandle? Handle, int Error) Open(string path, bool writable)
    {
        int fd;
        do
        {
            fd = OpenNative(path, (writable ? OpenReadWrite : OpenReadOnly) | OpenCloseOnExec, 0);
        }
        while (fd < 0 && Marshal.GetLastPInvokeError() == ErrorInterrupted);
        return fd < 0 ? (null, Marshal.GetLastPInvokeError()) : (new SafeFileHandle(fd, ownsHandle: true), 0);
    }

    /// <summary>Takes flock(2)'s lock on the whole file without waiting: exclusive (no other lock of either kind may
    /// exist) or shared (only other shared locks may). Returns 0, or the errno: EWOULDBLOCK (11) when another open
    /// file description holds a conflicting lock.</summary>
    public static int TryLock(SafeFileHandle handle, bool exclusive)
    {
        int result;
        do
        {
            result = FlockNative(Descriptor(handle), (exclusive ? LockExclusive : LockShared) | LockNonBlocking);
        }
        while (result != 0 && Marshal.GetLastPInvokeError() == ErrorInterrupted);
        return result == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>fdatasync(2): returns when every write to the file before the call is on stable storage (the data and
    /// the metadata needed to read it back, such as a grown size).</summary>
    /// <exception cref="HostCallException">The file system reported a write-back error (EIO, ENOSPC).</exception>
    public static void SyncData(SafeFileHandle handle)
    {
        int result;
        do
        {
            result = FdatasyncNative(Descriptor(handle));
        }
        while (result != 0 && Marshal.GetLastPInvokeError() == ErrorInterrupted);
        if (result != 0)
        {
            throw HostCallException.LastError("fdatasync");
        }
    }

    /// <summary>The device and inode of an open file.</summary>
    /// <exception cref="HostCallException">statx failed.</exception>
    public static unsafe FileIdentity Identity(SafeFileHandle handle)
    {
        // struct statx (linux/stat.h): stx_ino is the u64 at offset 32, stx_dev_major and stx_dev_minor the u32s at
        // 136 and 140; 256 bytes in all.
        byte* buffer = stackalloc byte[256];
        if (StatxNative(Descriptor(handle), "", AtEmptyPath, StatxInode, buffer) != 0)
        {
            throw HostCallException.LastError("statx");
        }
        return new FileIdentity(*(uint*)(buffer + 136), *(uint*)(buffer + 140), *(ulong*)(buffer + 32));
    }

    /// <summary>The process holding a flock(2) or POSIX lock on the file <paramref name="file"/>, as /proc/locks
    /// tells it, or null when none is listed (or the holder is an open-file-description lock, which has no
    /// process).</summary>
    public static int? LockHolder(FileIdentity file)
    {
        try
        {
            return LockHolder(file, File.ReadLines("/proc/locks"));
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>The holder's pid in lines of /proc/locks' format (proc(5)): "1: FLOCK ADVISORY WRITE 1234
    /// 08:01:131074 0 EOF", with the device's major and minor in hex and the inode in decimal; lines of waiters
    /// ("1: -> FLOCK ...") are skipped.</summary>
    internal static int? LockHolder(FileIdentity file, IEnumerable<string> lines)
    {
        string where = $"{file.DeviceMajor:x2}:{file.DeviceMinor:x2}:{file.Inode}";
        foreach (string line in lines)
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 6 || fields[1] == "->")
            {
                continue;
            }
            if (string.Equals(fields[5], where, StringComparison.OrdinalIgnoreCase) &&
                int.TryParse(fields[4], NumberStyles.Integer, CultureInfo.InvariantCulture, out int pid) && pid > 0)
            {
                return pid;
            }
        }
        return null;
    }

    private static int Descriptor(SafeFileHandle handle) => (int)handle.DangerousGetHandle();

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenNative(string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int FlockNative(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int FdatasyncNative(int fd);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int StatxNative(int directory, string path, int flags, uint mask, byte* buffer);
}
