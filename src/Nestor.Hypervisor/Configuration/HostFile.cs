using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Configuration;

/// <summary>What kind of file a path names (the S_IFMT bits of its mode).</summary>
public enum HostFileKind
{
    Regular,
    Directory,
    CharacterDevice,
    BlockDevice,
    Fifo,
    Socket,
    Other,
}

/// <summary>The host file operations .NET does not offer: the type of a file found without opening it (opening a
/// FIFO that has no writer blocks, opening some devices has effects), and a write lock that another nestor sees
/// before anything is truncated. Linux only, as Nestor is; the calls and structures used here (statx, fcntl's
/// struct flock) have the same layout on every 64-bit Linux architecture.</summary>
public static partial class HostFile
{
    private const int AtFdCwd = -100;
    private const int AtEmptyPath = 0x1000;
    private const uint StatxType = 0x1, StatxSize = 0x200;
    private const int OpenWriteOnly = 0x1, OpenCreate = 0x40, OpenNonBlocking = 0x800, OpenCloseOnExec = 0x80000;
    private const int SetOpenFileDescriptionLock = 37, WriteLock = 1; // F_OFD_SETLK, F_WRLCK
    private const int LockExclusive = 2, LockNonBlocking = 4;          // flock's LOCK_EX, LOCK_NB
    private const int ErrorWouldBlock = 11, ErrorAccess = 13, ErrorInvalid = 22;

    /// <summary>The type and size of <paramref name="path"/> (symbolic links followed), without opening it; or
    /// the errno that says why it has none.</summary>
    public static (HostFileKind Kind, long Size, int Error) Stat(string path) => Statx(AtFdCwd, path, 0);

    /// <summary>Opens a regular file for reading without ever blocking: the file is checked again once open
    /// (it may have been replaced since <see cref="Stat"/>), and O_NONBLOCK makes even a FIFO put there in between
    /// open at once.</summary>
    /// <returns>The handle, or null and the errno (or the kind of file found instead).</returns>
    public static (SafeFileHandle? Handle, long Size, HostFileKind Kind, int Error) OpenRegularForReading(string path)
    {
        int fd = Open(path, OpenNonBlocking | OpenCloseOnExec, 0);
        if (fd < 0)
        {
            return (null, 0, HostFileKind.Other, Marshal.GetLastPInvokeError());
        }
        var handle = new SafeFileHandle((nint)fd, ownsHandle: true);
        var (kind, size, error) = Statx(fd, "", AtEmptyPath);
        if (error != 0 || kind != HostFileKind.Regular)
        {
            handle.Dispose();
            return (null, 0, kind, error);
        }
        return (handle, size, kind, 0);
    }

    /// <summary>Opens <paramref name="path"/> for writing (creating it) as the only nestor writing it: a regular file
    /// is write-locked before it is truncated, so a second run given the same file is refused without touching what
    /// the first has written. Devices and FIFOs (/dev/null, a terminal, a pipe) are neither locked nor truncated. The
    /// lock lasts as long as the stream is open, and lets readers be: <c>tail -f</c> and .NET's File.ReadAllText
    /// (which takes flock(LOCK_SH)) read the file while it is written.</summary>
    /// <param name="what">The file's role in messages, e.g. "serial log".</param>
    /// <param name="option">The option that named it, e.g. "--serial-log".</param>
    /// <exception cref="BadInputException">It cannot be opened, or another process holds its lock.</exception>
    public static FileStream CreateExclusive(string path, string what, string option)
    {
        // Not FileMode.Create with FileShare.None, although .NET 10 on Linux does open without O_TRUNC, take
        // flock(LOCK_EX | LOCK_NB) and only then ftruncate (strace shows it): any process can turn that locking off
        // (DOTNET_SYSTEM_IO_DISABLEFILELOCKING), its refusal is an IOException only errno tells apart from others,
        // and an exclusive flock also shuts out every .NET reader of the log, since .NET takes flock(LOCK_SH) to
        // read. An open-file-description record lock (fcntl F_OFD_SETLK) is independent of flock on Linux: it
        // excludes another nestor's write lock only. The order (open, lock, then truncate) is Nestor's here.
        int fd = Open(path, OpenWriteOnly | OpenCreate | OpenCloseOnExec, 0x1B6 /* 0666, less the umask */);
        if (fd < 0)
        {
            int error = Marshal.GetLastPInvokeError();
            throw new BadInputException($"cannot write the {what} '{path}': {Marshal.GetPInvokeErrorMessage(error)}",
                $"Give a writable path for {option}");
        }
        var handle = new SafeFileHandle((nint)fd, ownsHandle: true);
        try
        {
            var (kind, _, statError) = Statx(fd, "", AtEmptyPath);
            if (statError == 0 && kind == HostFileKind.Regular)
            {
                int lockError = LockForWriting(fd);
                if (lockError != 0)
                {
                    throw lockError is ErrorWouldBlock or ErrorAccess
                        ? new BadInputException(
                            $"another nestor is writing the {what} '{path}' (it holds the file's lock); two runs writing one file would corrupt it",
                            $"Give this run its own {option} file, or wait until the other run has ended")
                        : new BadInputException($"cannot lock the {what} '{path}': {Marshal.GetPInvokeErrorMessage(lockError)}",
                            $"Give {option} a file on a local file system");
                }
                if (Ftruncate(fd, 0) != 0)
                {
                    int error = Marshal.GetLastPInvokeError();
                    throw new BadInputException($"cannot truncate the {what} '{path}': {Marshal.GetPInvokeErrorMessage(error)}",
                        $"Give a writable path for {option}");
                }
            }
            // No buffer of its own: the UART buffers lines and flushes each, so what the guest printed is in the file
            // as soon as its line is complete (and its tail when the run ends).
            return new FileStream(handle, FileAccess.Write, bufferSize: 0);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Write-locks the whole file for this open file description; returns 0 or the errno.</summary>
    private static unsafe int LockForWriting(int fd)
    {
        // struct flock: short l_type, short l_whence, off_t l_start (offset 8), off_t l_len (16, 0 = to the end and
        // beyond), pid_t l_pid (24, 0 for OFD locks); 32 bytes.
        byte* request = stackalloc byte[32];
        new Span<byte>(request, 32).Clear();
        *(short*)request = WriteLock;
        if (Fcntl(fd, SetOpenFileDescriptionLock, request) == 0)
        {
            return 0;
        }
        int error = Marshal.GetLastPInvokeError();
        if (error != ErrorInvalid)
        {
            return error;
        }
        // A kernel or file system without OFD locks: flock, which other nestors see just as well.
        return Flock(fd, LockExclusive | LockNonBlocking) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>Words for a kind of file, for messages: "a character device".</summary>
    public static string Describe(HostFileKind kind) => kind switch
    {
        HostFileKind.Regular => "a regular file",
        HostFileKind.Directory => "a directory",
        HostFileKind.CharacterDevice => "a character device",
        HostFileKind.BlockDevice => "a block device",
        HostFileKind.Fifo => "a FIFO (named pipe)",
        HostFileKind.Socket => "a socket",
        _ => "not a regular file",
    };

    private static unsafe (HostFileKind Kind, long Size, int Error) Statx(int directory, string path, int flags)
    {
        // struct statx (linux/stat.h): stx_mode is the u16 at offset 28, stx_size the u64 at offset 40; 256 bytes.
        byte* buffer = stackalloc byte[256];
        if (StatxCall(directory, path, flags, StatxType | StatxSize, buffer) != 0)
        {
            return (HostFileKind.Other, 0, Marshal.GetLastPInvokeError());
        }
        ushort mode = *(ushort*)(buffer + 28);
        long size = *(long*)(buffer + 40);
        var kind = (mode & 0xF000) switch
        {
            0x8000 => HostFileKind.Regular,
            0x4000 => HostFileKind.Directory,
            0x2000 => HostFileKind.CharacterDevice,
            0x6000 => HostFileKind.BlockDevice,
            0x1000 => HostFileKind.Fifo,
            0xC000 => HostFileKind.Socket,
            _ => HostFileKind.Other,
        };
        return (kind, size, 0);
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int StatxCall(int directory, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static unsafe partial int Fcntl(int fd, int command, byte* argument);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int Ftruncate(int fd, long length);
}
