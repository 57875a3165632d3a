using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Nestor.Host;

/// <summary>The file-system system calls that image layers and overlays need and .NET does not offer: lstat(2) with
/// owner, inode and device numbers, owners of symbolic links (lchown(2)), all twelve mode bits (chmod(2)), device nodes
/// (mknod(2)), hard links (link(2)), times of links (utimensat(2)), extended attributes (lsetxattr(2), lgetxattr(2),
/// llistxattr(2)), a directory's fsync(2), and a lock file held with flock(2) (waiting, or tried without waiting).
/// Mounting is <see cref="MountCalls"/>'s.</summary>
public static unsafe partial class FileSystemCalls
{
    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const uint S_IFMT = 0xF000;
    public const uint S_IFSOCK = 0xC000;
    public const uint S_IFLNK = 0xA000;
    public const uint S_IFREG = 0x8000;
    public const uint S_IFBLK = 0x6000;
    public const uint S_IFDIR = 0x4000;
    public const uint S_IFCHR = 0x2000;
    public const uint S_IFIFO = 0x1000;
    public const int ENODATA = 61;
    public const int ENOTSUP = 95;
    public const int EPERM = 1;

    /// <summary>struct stat of x86-64 Linux (asm/stat.h), 144 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Stat
    {
        public ulong Device;
        public ulong Inode;
        public ulong LinkCount;
        public uint Mode;
        public uint Uid;
        public uint Gid;
        private readonly int padding0;
        public ulong RawDevice;
        public long Size;
        public long BlockSize;
        public long Blocks;
        public long AccessSeconds;
        public long AccessNanoseconds;
        public long ModifySeconds;
        public long ModifyNanoseconds;
        public long ChangeSeconds;
        public long ChangeNanoseconds;
        private fixed long reserved[3];
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "lstat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int LStatNative(string path, out Stat stat);

    [LibraryImport("libc", EntryPoint = "lchown", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int LChownNative(string path, uint uid, uint gid);

    [LibraryImport("libc", EntryPoint = "chmod", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int ChmodNative(string path, uint mode);

    [LibraryImport("libc", EntryPoint = "mknod", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int MknodNative(string path, uint mode, ulong device);

    [LibraryImport("libc", EntryPoint = "link", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int LinkNative(string existing, string newPath);

    [LibraryImport("libc", EntryPoint = "utimensat", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int UtimensatNative(int directoryFd, string path, TimeSpec* times, int flags);

    [LibraryImport("libc", EntryPoint = "lsetxattr", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int LSetXattrNative(string path, string name, byte* value, nuint size, int flags);

    [LibraryImport("libc", EntryPoint = "lgetxattr", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial nint LGetXattrNative(string path, string name, byte* value, nuint size);

    [LibraryImport("libc", EntryPoint = "llistxattr", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial nint LListXattrNative(string path, byte* list, nuint size);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FsyncNative(int fd);

    private static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>lstat(2); null when the path does not exist.</summary>
    public static Stat? TryLStat(string path)
    {
        if (LStatNative(path, out var stat) == 0)
        {
            return stat;
        }
        int errno = Errno;
        return errno is 2 or 20 ? null : throw new HostCallException($"lstat of {path}", errno);
    }

    public static Stat LStat(string path) =>
        LStatNative(path, out var stat) == 0 ? stat : throw new HostCallException($"lstat of {path}", Errno);

    public static void LChown(string path, uint uid, uint gid)
    {
        if (LChownNative(path, uid, gid) != 0)
        {
            throw new HostCallException($"lchown of {path} to {uid}:{gid}", Errno);
        }
    }

    /// <summary>chmod(2) with all twelve permission bits (set-user-ID, set-group-ID and sticky included).</summary>
    public static void Chmod(string path, uint mode)
    {
        if (ChmodNative(path, mode & 0xfff) != 0)
        {
            throw new HostCallException($"chmod of {path}", Errno);
        }
    }

    /// <summary>mknod(2); returns the errno instead of throwing so that rootless callers can approximate.</summary>
    public static int Mknod(string path, uint mode, uint major, uint minor)
    {
        // makedev(3) of glibc: the 64-bit dev_t with major bits 8..19 and 32..43, minor bits 0..7 and 20..31.
        ulong device = ((ulong)(major & 0xfffff000) << 32) | ((ulong)(major & 0xfff) << 8)
            | ((ulong)(minor & 0xffffff00) << 12) | (minor & 0xff);
        return MknodNative(path, mode, device) == 0 ? 0 : Errno;
    }

    /// <summary>The major and minor numbers of a dev_t (major(3), minor(3)).</summary>
    public static (uint Major, uint Minor) SplitDevice(ulong device) =>
        ((uint)(((device >> 32) & 0xfffff000) | ((device >> 8) & 0xfff)),
         (uint)(((device >> 12) & 0xffffff00) | (device & 0xff)));

    public static void Link(string existing, string newPath)
    {
        if (LinkNative(existing, newPath) != 0)
        {
            throw new HostCallException($"link of {newPath} to {existing}", Errno);
        }
    }

    /// <summary>Sets access and modification times without following a final symbolic link.</summary>
    public static void SetTimes(string path, DateTimeOffset access, DateTimeOffset modification)
    {
        TimeSpec* times = stackalloc TimeSpec[2];
        times[0] = ToTimeSpec(access);
        times[1] = ToTimeSpec(modification);
        if (UtimensatNative(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW) != 0)
        {
            throw new HostCallException($"utimensat of {path}", Errno);
        }
    }

    private static TimeSpec ToTimeSpec(DateTimeOffset time)
    {
        long ticks = time.UtcTicks - DateTime.UnixEpoch.Ticks;
        long seconds = Math.DivRem(ticks, TimeSpan.TicksPerSecond, out long remainder);
        if (remainder < 0)
        {
            seconds--;
            remainder += TimeSpan.TicksPerSecond;
        }
        return new TimeSpec { Seconds = seconds, Nanoseconds = remainder * 100 };
    }

    /// <summary>lsetxattr(2); returns the errno (0 on success) so callers can skip names the file system refuses.</summary>
    public static int SetXattr(string path, string name, ReadOnlySpan<byte> value)
    {
        fixed (byte* pointer = value)
        {
            return LSetXattrNative(path, name, pointer, (nuint)value.Length, 0) == 0 ? 0 : Errno;
        }
    }

    /// <summary>lgetxattr(2); null when the attribute is absent or the file system has none.</summary>
    public static byte[]? GetXattr(string path, string name)
    {
        nint size = LGetXattrNative(path, name, null, 0);
        if (size < 0)
        {
            int errno = Errno;
            return errno is ENODATA or ENOTSUP ? null : throw new HostCallException($"lgetxattr {name} of {path}", errno);
        }
        var value = new byte[size];
        fixed (byte* pointer = value)
        {
            size = LGetXattrNative(path, name, pointer, (nuint)value.Length);
        }
        return size < 0 ? throw new HostCallException($"lgetxattr {name} of {path}", Errno) : value[..(int)size];
    }

    /// <summary>llistxattr(2): the names of a file's extended attributes.</summary>
    public static IReadOnlyList<string> ListXattrs(string path)
    {
        nint size = LListXattrNative(path, null, 0);
        if (size < 0)
        {
            int errno = Errno;
            return errno == ENOTSUP ? [] : throw new HostCallException($"llistxattr of {path}", errno);
        }
        if (size == 0)
        {
            return [];
        }
        var list = new byte[size];
        fixed (byte* pointer = list)
        {
            size = LListXattrNative(path, pointer, (nuint)list.Length);
        }
        if (size < 0)
        {
            throw new HostCallException($"llistxattr of {path}", Errno);
        }
        return System.Text.Encoding.UTF8.GetString(list, 0, (int)size).Split('\0', StringSplitOptions.RemoveEmptyEntries);
    }

    /// <summary>fsync(2) of a directory, so that a rename into it survives a crash (rename(2) is atomic, not durable).</summary>
    public static void SyncDirectory(string path)
    {
        int fd = MountCalls.Open(path, MountCalls.OpenFlags.ReadOnly | MountCalls.OpenFlags.Directory);
        try
        {
            if (FsyncNative(fd) != 0)
            {
                throw new HostCallException($"fsync of directory {path}", Errno);
            }
        }
        finally
        {
            ProcessCalls.Close(fd);
        }
    }

    /// <summary>Opens (creating, with <paramref name="mode"/>) <paramref name="path"/> and takes flock(2)'s exclusive
    /// lock on it, waiting for it; the lock is released when the handle is disposed, or by the kernel with the holder's
    /// death. Opened with open(2) rather than FileStream, which takes a non-blocking flock of its own and would fail
    /// instead of waiting.</summary>
    public static SafeFileHandle OpenLocked(string path, int mode = 0x1a4) => OpenLocked(path, mode, wait: true)!;

    /// <summary>As <see cref="OpenLocked(string, int)"/> without waiting: null when another open file description
    /// holds the lock.</summary>
    public static SafeFileHandle? TryOpenLocked(string path, int mode = 0x1a4) => OpenLocked(path, mode, wait: false);

    private static SafeFileHandle? OpenLocked(string path, int mode, bool wait)
    {
        int fd = MountCalls.Open(path, MountCalls.OpenFlags.ReadWrite | MountCalls.OpenFlags.Create, mode);
        try
        {
            if (wait)
            {
                MountCalls.LockExclusive(fd, path);
            }
            else if (!TryLockExclusive(fd, path))
            {
                ProcessCalls.Close(fd);
                return null;
            }
        }
        catch
        {
            ProcessCalls.Close(fd);
            throw;
        }
        return new SafeFileHandle(fd, ownsHandle: true);
    }

    // flock(2) LOCK_EX | LOCK_NB: false when another open file description holds the lock.
    private static bool TryLockExclusive(int fd, string what)
    {
        while (Native.LibC.Flock(fd, Native.LibC.LOCK_EX | 4 /* LOCK_NB */) != 0)
        {
            int errno = Errno;
            if (errno == 11 /* EWOULDBLOCK */)
            {
                return false;
            }
            if (errno != 4 /* EINTR */)
            {
                throw new HostCallException($"flock of {what}", errno);
            }
        }
        return true;
    }
}
