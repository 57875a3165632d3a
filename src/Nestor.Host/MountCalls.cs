using System.Runtime.InteropServices;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>mount(2) flags (MS_*).</summary>
[Flags]
public enum MountFlags : ulong
{
    None = 0,
    ReadOnly = 0x1,
    NoSuid = 0x2,
    NoDev = 0x4,
    NoExec = 0x8,
    Synchronous = 0x10,
    Remount = 0x20,
    Mandatory = 0x40,
    DirSync = 0x80,
    NoAccessTime = 0x400,
    NoDirectoryAccessTime = 0x800,
    Bind = 0x1000,
    Move = 0x2000,
    Recursive = 0x4000,
    Silent = 0x8000,
    Unbindable = 0x20000,
    Private = 0x40000,
    Slave = 0x80000,
    Shared = 0x100000,
    RelativeAccessTime = 0x200000,
    StrictAccessTime = 0x1000000,
}

/// <summary>Mount calls: mount(2), umount2(2), pivot_root(2), mknod(2), mkfifo(3), symlink(2), chdir(2), flock(2).</summary>
public static class MountCalls
{
    /// <summary>umount2's MNT_DETACH: lazy unmount, what removes the old root after pivot_root.</summary>
    public const int DetachFlag = 2;

    /// <summary>mount(2).</summary>
    public static void Mount(string? source, string target, string? fileSystemType, MountFlags flags, string? data = null)
    {
        if (LibC.Mount(source, target, fileSystemType, (ulong)flags, string.IsNullOrEmpty(data) ? null : data) != 0)
        {
            throw HostCallException.LastError($"mount of {source ?? fileSystemType ?? "none"} on {target} ({fileSystemType ?? "bind"}, {flags})");
        }
    }

    /// <summary>umount2(2) with MNT_DETACH; false (no exception) when <paramref name="target"/> is not a mount point
    /// or cannot be unmounted, for clean-up that goes on regardless.</summary>
    public static bool TryUnmountDetached(string target) => LibC.Umount2(target, DetachFlag) == 0;

    /// <summary>umount2(2).</summary>
    public static void Unmount(string target, int flags = 0)
    {
        if (LibC.Umount2(target, flags) != 0)
        {
            throw HostCallException.LastError($"umount of {target}");
        }
    }

    /// <summary>pivot_root(2) (no glibc wrapper: raw system call). With <c>"."</c> for both, as pivot_root(2) "NOTES"
    /// describes, the old root is stacked on the new one and detached afterwards without a directory for it.</summary>
    public static void PivotRoot(string newRoot, string putOld)
    {
        nint newPointer = Marshal.StringToCoTaskMemUTF8(newRoot), oldPointer = Marshal.StringToCoTaskMemUTF8(putOld);
        try
        {
            if (LibC.Syscall(LibC.SYS_pivot_root, newPointer, oldPointer, 0, 0, 0, 0) != 0)
            {
                throw HostCallException.LastError($"pivot_root into {newRoot}");
            }
        }
        finally
        {
            Marshal.FreeCoTaskMem(newPointer);
            Marshal.FreeCoTaskMem(oldPointer);
        }
    }

    /// <summary>chdir(2).</summary>
    public static void ChangeDirectory(string path)
    {
        if (LibC.Chdir(path) != 0)
        {
            throw HostCallException.LastError($"chdir to {path}");
        }
    }

    /// <summary>mknod(2) of a character (<c>c</c>/<c>u</c>), block (<c>b</c>) or FIFO (<c>p</c>) device.</summary>
    public static void MakeNode(string path, char type, uint mode, long major, long minor)
    {
        uint kind = type switch { 'b' => 0x6000u, 'p' => 0x1000u, _ => 0x2000u };
        // gnu_dev_makedev: the glibc encoding of a dev_t.
        ulong device = ((ulong)major & 0xfff) << 8 | ((ulong)major & ~0xfffUL) << 32 | ((ulong)minor & 0xff) | ((ulong)minor & ~0xffUL) << 12;
        if (LibC.Mknod(path, (int)(kind | (mode & 0xfff)), device) != 0)
        {
            throw HostCallException.LastError($"mknod of {path}");
        }
    }

    /// <summary>mkfifo(3).</summary>
    public static void MakeFifo(string path, int mode)
    {
        if (LibC.Mkfifo(path, mode) != 0)
        {
            throw HostCallException.LastError($"mkfifo of {path}");
        }
    }

    /// <summary>chmod(2).</summary>
    public static void ChangeMode(string path, int mode)
    {
        if (LibC.Chmod(path, mode) != 0)
        {
            throw HostCallException.LastError($"chmod of {path}");
        }
    }

    /// <summary>mkdir(2); false when the path exists already (EEXIST), which makes it usable as a lock-free
    /// "create only once".</summary>
    public static bool MakeDirectory(string path, int mode)
    {
        if (LibC.Mkdir(path, mode) == 0)
        {
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        return errno == LibC.EEXIST ? false : throw new HostCallException($"mkdir of {path}", errno);
    }

    /// <summary>symlink(2); an existing entry is left as it is.</summary>
    public static void SymbolicLink(string target, string linkPath)
    {
        if (LibC.Symlink(target, linkPath) != 0 && Marshal.GetLastPInvokeError() != LibC.EEXIST)
        {
            throw HostCallException.LastError($"symlink {linkPath} -> {target}");
        }
    }

    /// <summary>open(2) with the given O_* flags (close-on-exec added); returns the descriptor.</summary>
    public static int Open(string path, int flags, int mode = 0)
    {
        int fd = LibC.Open(path, flags | LibC.O_CLOEXEC, mode);
        return fd >= 0 ? fd : throw HostCallException.LastError($"open of {path}");
    }

    /// <summary>open(2) flags callers need: O_RDONLY, O_WRONLY, O_RDWR, O_PATH, O_NOCTTY, O_DIRECTORY, O_CREAT.</summary>
    public static class OpenFlags
    {
        public const int ReadOnly = LibC.O_RDONLY;
        public const int WriteOnly = LibC.O_WRONLY;
        public const int ReadWrite = LibC.O_RDWR;
        public const int PathOnly = LibC.O_PATH;
        public const int NoControllingTerminal = LibC.O_NOCTTY;
        public const int Directory = LibC.O_DIRECTORY;
        public const int Create = LibC.O_CREAT;
        public const int NonBlocking = LibC.O_NONBLOCK;
    }

    /// <summary>flock(2) LOCK_EX on <paramref name="fd"/>, waiting for it.</summary>
    public static void LockExclusive(int fd, string what)
    {
        while (LibC.Flock(fd, LibC.LOCK_EX) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != LibC.EINTR)
            {
                throw new HostCallException($"flock of {what}", errno);
            }
        }
    }

    /// <summary>umask(2); returns the previous mask.</summary>
    public static uint SetUmask(uint mask) => LibC.Umask(mask);
}
