using System.Runtime.InteropServices;

namespace Nestor.Host.Native;

/// <summary>The libc calls for processes, namespaces and mounts (clone3(2), execve(2), setns(2), unshare(2), mount(2),
/// pivot_root(2), pipe2(2), poll(2), waitpid(2), kill(2), flock(2), mknod(2)). Calls without a glibc wrapper (clone3,
/// pivot_root) and calls that must stay per-thread (setresuid(2) and setresgid(2): glibc's wrappers change every
/// thread of the process through a signal) go through <c>syscall(2)</c> with the x86-64 numbers below.</summary>
internal static partial class LibC
{
    // x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
    public const long SYS_read = 0;
    public const long SYS_write = 1;
    public const long SYS_close = 3;
    public const long SYS_rt_sigaction = 13;
    public const long SYS_rt_sigprocmask = 14;
    public const long SYS_dup2 = 33;
    public const long SYS_ioctl = 16;
    public const long SYS_getpid = 39;
    public const long SYS_setsid = 112;
    public const long SYS_execve = 59;
    public const long SYS_wait4 = 61;
    public const long SYS_chdir = 80;
    public const long SYS_capset = 126;
    public const long SYS_prctl = 157;
    public const long SYS_fcntl = 72;
    public const long SYS_setgroups = 116;
    public const long SYS_setresuid = 117;
    public const long SYS_setresgid = 119;
    public const long SYS_pivot_root = 155;
    public const long SYS_exit_group = 231;
    public const long SYS_setns = 308;
    public const long SYS_seccomp = 317;
    public const long SYS_memfd_create = 319;
    public const long SYS_clone3 = 435;

    /// <summary>memfd_create(2)'s close-on-exec flag.</summary>
    public const int MFD_CLOEXEC = 0x1;

    public const int O_RDONLY = 0x0;
    public const int O_WRONLY = 0x1;
    public const int O_RDWR = 0x2;
    public const int O_CREAT = 0x40;
    public const int O_NOCTTY = 0x100;
    public const int O_NONBLOCK = 0x800;
    public const int O_DIRECTORY = 0x10000;
    public const int O_NOFOLLOW = 0x20000;
    public const int O_CLOEXEC = 0x80000;
    public const int O_PATH = 0x200000;

    public const int F_SETFD = 2;
    public const int POLLIN = 0x1;
    public const int POLLHUP = 0x10;
    public const int WNOHANG = 1;
    public const int LOCK_EX = 2;
    public const int LOCK_UN = 8;
    public const int EINTR = 4;
    public const int ECHILD = 10;
    public const int EEXIST = 17;
    public const int ESRCH = 3;
    public const int ENOENT = 2;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    public static unsafe partial int Pipe2(int* fds, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static unsafe partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static unsafe partial nint Write(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    public static unsafe partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "dup2", SetLastError = true)]
    public static partial int Dup2(int oldFd, int newFd);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    public static unsafe partial int WaitPid(int pid, int* status, int options);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    public static partial int Flock(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "mkfifo", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mkfifo(string path, int mode);

    [LibraryImport("libc", EntryPoint = "mknod", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mknod(string path, int mode, ulong device);

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string? source, string target, string? fileSystemType, ulong flags, string? data);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    [LibraryImport("libc", EntryPoint = "chdir", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Chdir(string path);

    [LibraryImport("libc", EntryPoint = "sethostname", SetLastError = true)]
    public static unsafe partial int SetHostname(byte* name, nuint length);

    [LibraryImport("libc", EntryPoint = "setdomainname", SetLastError = true)]
    public static unsafe partial int SetDomainname(byte* name, nuint length);

    [LibraryImport("libc", EntryPoint = "unshare", SetLastError = true)]
    public static partial int Unshare(int flags);

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    public static partial int Setns(int fd, int namespaceType);

    [LibraryImport("libc", EntryPoint = "setsid", SetLastError = true)]
    public static partial int Setsid();

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, ulong request, nint argument);

    [LibraryImport("libc", EntryPoint = "umask")]
    public static partial uint Umask(uint mask);

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    public static partial int Prctl(int option, ulong argument2, ulong argument3, ulong argument4, ulong argument5);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall(long number, long argument1, long argument2, long argument3, long argument4,
        long argument5, long argument6);

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "connect", SetLastError = true)]
    public static unsafe partial int Connect(int fd, byte* address, uint length);

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    public static unsafe partial nint SendMsg(int fd, void* message, int flags);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUserId();

    [LibraryImport("libc", EntryPoint = "getegid")]
    public static partial uint GetEffectiveGroupId();

    /// <summary>The calling thread's errno variable (the same address in a clone3 child of this thread).</summary>
    [LibraryImport("libc", EntryPoint = "__errno_location")]
    public static unsafe partial int* ErrnoLocation();

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    public static unsafe partial nint RecvMsg(int fd, void* message, int flags);

    [LibraryImport("libc", EntryPoint = "chmod", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Chmod(string path, int mode);

    [LibraryImport("libc", EntryPoint = "mkdir", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mkdir(string path, int mode);

    [LibraryImport("libc", EntryPoint = "symlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Symlink(string target, string linkPath);
}
