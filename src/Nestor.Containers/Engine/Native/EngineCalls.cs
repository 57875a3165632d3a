using System.Runtime.InteropServices;
using Nestor.Host;

namespace Nestor.Containers.Engine.Native;

/// <summary>The libc calls the engine and its monitor make: file locks (flock(2)), pipes (pipe2(2)), process creation
/// without fork's hazards in a multi-threaded runtime (posix_spawn(3), which glibc implements with clone(CLONE_VM|
/// CLONE_VFORK)), waiting (waitpid(2)), signals (kill(2)), sessions (setsid(2)), prctl(2)'s child subreaper and
/// umount2(2). Failures are <see cref="HostCallException"/>s carrying errno.</summary>
internal static unsafe partial class EngineCalls
{
    public const int O_RDONLY = 0x0;
    public const int O_RDWR = 0x2;
    public const int O_CREAT = 0x40;
    public const int O_CLOEXEC = 0x80000;
    public const int LOCK_SH = 1;
    public const int LOCK_EX = 2;
    public const int LOCK_UN = 8;
    public const int WNOHANG = 1;
    public const int EINTR = 4;
    public const int ECHILD = 10;
    public const int ESRCH = 3;
    public const int PR_SET_CHILD_SUBREAPER = 36;
    public const int MNT_DETACH = 2;

    // posix_spawn(3) attribute flags (glibc's spawn.h).
    private const short POSIX_SPAWN_SETSIGDEF = 0x04;
    private const short POSIX_SPAWN_SETSIGMASK = 0x08;
    private const short POSIX_SPAWN_SETSID = 0x80;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenNative(string path, int flags, int mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int FlockNative(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    private static partial int Pipe2Native(int* fds, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    private static partial int WaitPidNative(int pid, int* status, int options);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int KillNative(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "setsid", SetLastError = true)]
    private static partial int SetSidNative();

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    private static partial int PrctlNative(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [LibraryImport("libc", EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Umount2Native(string target, int flags);

    [LibraryImport("libc", EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MountNative(string source, string target, string fileSystemType, nuint flags, string? data);

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint RecvMsg(int fd, void* message, int flags);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    public static partial uint GetEffectiveUserId();

    [LibraryImport("libc", EntryPoint = "getegid")]
    public static partial uint GetEffectiveGroupId();

    [LibraryImport("libc", EntryPoint = "getpid")]
    public static partial int GetProcessId();

    [LibraryImport("libc", EntryPoint = "isatty")]
    public static partial int IsTerminal(int fd);

    [LibraryImport("libc", EntryPoint = "posix_spawn", SetLastError = true)]
    private static partial int PosixSpawn(int* pid, byte* path, void* fileActions, void* attributes, byte** argv, byte** envp);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    private static partial int FileActionsInit(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    private static partial int FileActionsDestroy(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2")]
    private static partial int FileActionsAddDup2(void* fileActions, int fd, int newFd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addchdir_np")]
    private static partial int FileActionsAddChdir(void* fileActions, byte* path);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_init")]
    private static partial int AttributesInit(void* attributes);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_destroy")]
    private static partial int AttributesDestroy(void* attributes);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setflags")]
    private static partial int AttributesSetFlags(void* attributes, short flags);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigmask")]
    private static partial int AttributesSetSignalMask(void* attributes, void* mask);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigdefault")]
    private static partial int AttributesSetSignalDefault(void* attributes, void* mask);

    [LibraryImport("libc", EntryPoint = "sigemptyset")]
    private static partial int SignalEmptySet(void* set);

    [LibraryImport("libc", EntryPoint = "sigfillset")]
    private static partial int SignalFillSet(void* set);

    public static int Open(string path, int flags, int mode = 0x180)
    {
        int fd = OpenNative(path, flags | O_CLOEXEC, mode);
        return fd >= 0 ? fd : throw Fail($"open of {path}");
    }

    /// <summary>flock(2) on <paramref name="fd"/>, retried on EINTR.</summary>
    public static void Flock(int fd, int operation)
    {
        while (FlockNative(fd, operation) != 0)
        {
            if (Marshal.GetLastPInvokeError() != EINTR)
            {
                throw Fail("flock");
            }
        }
    }

    /// <summary>A pipe whose both ends are close-on-exec (a spawned child gets only what its file actions dup).</summary>
    public static (int Read, int Write) Pipe()
    {
        int* fds = stackalloc int[2];
        return Pipe2Native(fds, O_CLOEXEC) == 0 ? (fds[0], fds[1]) : throw Fail("pipe2");
    }

    /// <summary>waitpid(2), retried on EINTR; returns the pid (0 with WNOHANG and nothing changed, -1 with ECHILD
    /// when there is no such child) and the raw status.</summary>
    public static (int Pid, int Status) WaitPid(int pid, int options = 0)
    {
        int status = 0;
        while (true)
        {
            int result = WaitPidNative(pid, &status, options);
            if (result >= 0)
            {
                return (result, status);
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno == ECHILD)
            {
                return (-1, 0);
            }
            if (errno != EINTR)
            {
                throw new HostCallException($"waitpid of {pid}", errno);
            }
        }
    }

    /// <summary>The exit status as a shell reports it: the exit code, or 128 + the signal that ended the process.</summary>
    public static int ShellStatus(int rawStatus) =>
        (rawStatus & 0x7f) == 0 ? (rawStatus >> 8) & 0xff : 128 + (rawStatus & 0x7f);

    /// <summary>kill(2); returns false when the process does not exist (ESRCH).</summary>
    public static bool Kill(int pid, int signal)
    {
        if (KillNative(pid, signal) == 0)
        {
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        return errno == ESRCH ? false : throw new HostCallException($"kill of {pid} with signal {signal}", errno);
    }

    public static void SetSession()
    {
        if (SetSidNative() < 0)
        {
            throw Fail("setsid");
        }
    }

    /// <summary>prctl(PR_SET_CHILD_SUBREAPER): orphans among this process's descendants (the container's first process
    /// once the runtime's create command exits) become its children, so that waitpid(2) reports their end.</summary>
    public static void BecomeChildSubreaper()
    {
        if (PrctlNative(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        {
            throw Fail("prctl(PR_SET_CHILD_SUBREAPER)");
        }
    }

    /// <summary>umount2(2) with MNT_DETACH; returns false when <paramref name="target"/> is not a mount point.</summary>
    public static bool UnmountDetached(string target) => Umount2Native(target, MNT_DETACH) == 0;

    /// <summary>mount(2) of a file system without flags (an overlay: <c>mount -t overlay overlay -o OPTIONS TARGET</c>).</summary>
    public static void Mount(string source, string target, string fileSystemType, string? data)
    {
        if (MountNative(source, target, fileSystemType, 0, data) != 0)
        {
            throw Fail($"mount of {fileSystemType} at {target}");
        }
    }

    /// <summary>Receives one file descriptor sent with SCM_RIGHTS over the Unix socket <paramref name="socket"/>
    /// (unix(7)): how runc and crun hand over a pseudo-terminal's master through <c>--console-socket</c>.</summary>
    public static int ReceiveDescriptor(int socket)
    {
        const int SOL_SOCKET = 1;
        const int SCM_RIGHTS = 1;
        byte* data = stackalloc byte[4096];
        byte* control = stackalloc byte[64];
        new Span<byte>(control, 64).Clear();
        // struct iovec { void *iov_base; size_t iov_len; } and struct msghdr on x86-64 (56 bytes).
        nint* vector = stackalloc nint[2];
        vector[0] = (nint)data;
        vector[1] = 4096;
        byte* message = stackalloc byte[56];
        new Span<byte>(message, 56).Clear();
        *(nint*)(message + 16) = (nint)vector;
        *(nint*)(message + 24) = 1;
        *(nint*)(message + 32) = (nint)control;
        *(nint*)(message + 40) = 64;
        nint received;
        do
        {
            received = RecvMsg(socket, message, 0x40000000 /* MSG_CMSG_CLOEXEC */);
        }
        while (received < 0 && Marshal.GetLastPInvokeError() == EINTR);
        if (received < 0)
        {
            throw Fail("recvmsg of the console's descriptor");
        }
        // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; unsigned char data[]; }
        nuint length = *(nuint*)control;
        if (length < 20 || *(int*)(control + 8) != SOL_SOCKET || *(int*)(control + 12) != SCM_RIGHTS)
        {
            throw new HostCallException("recvmsg: no descriptor came with the console message", 0);
        }
        return *(int*)(control + 16);
    }

    /// <summary>Starts <paramref name="path"/> with <paramref name="arguments"/> (argv[0] included) and
    /// <paramref name="environment"/>; <paramref name="descriptors"/> maps each child descriptor (0, 1, 2, 3…) to a
    /// descriptor of this process. Every signal is unblocked and reset to its default disposition in the child, since
    /// .NET ignores SIGPIPE and a program it starts would otherwise inherit that. With <paramref name="newSession"/>
    /// the child is made a session and process-group leader (setsid), detached from this process's terminal.</summary>
    public static int Spawn(string path, IReadOnlyList<string> arguments, IReadOnlyList<string> environment,
        IReadOnlyList<(int Child, int Parent)> descriptors, bool newSession = false, string? workingDirectory = null)
    {
        // glibc's posix_spawn_file_actions_t is 80 bytes and posix_spawnattr_t 336 bytes, sigset_t 128: generous room.
        byte* fileActions = stackalloc byte[512];
        byte* attributes = stackalloc byte[1024];
        byte* signals = stackalloc byte[256];
        var allocations = new List<nint>();
        byte* Utf8(string text)
        {
            nint memory = Marshal.StringToCoTaskMemUTF8(text);
            allocations.Add(memory);
            return (byte*)memory;
        }
        byte** Vector(IReadOnlyList<string> items)
        {
            nint memory = Marshal.AllocCoTaskMem((items.Count + 1) * sizeof(nint));
            allocations.Add(memory);
            byte** vector = (byte**)memory;
            for (int i = 0; i < items.Count; i++)
            {
                vector[i] = Utf8(items[i]);
            }
            vector[items.Count] = null;
            return vector;
        }
        FileActionsInit(fileActions);
        AttributesInit(attributes);
        try
        {
            foreach (var (child, parent) in descriptors)
            {
                FileActionsAddDup2(fileActions, parent, child);
            }
            if (workingDirectory is not null)
            {
                FileActionsAddChdir(fileActions, Utf8(workingDirectory));
            }
            SignalEmptySet(signals);
            AttributesSetSignalMask(attributes, signals);
            SignalFillSet(signals);
            AttributesSetSignalDefault(attributes, signals);
            AttributesSetFlags(attributes, (short)(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | (newSession ? POSIX_SPAWN_SETSID : 0)));
            int pid;
            int error = PosixSpawn(&pid, Utf8(path), fileActions, attributes, Vector(arguments), Vector(environment));
            return error == 0 ? pid : throw new HostCallException($"posix_spawn of {path}", error);
        }
        finally
        {
            FileActionsDestroy(fileActions);
            AttributesDestroy(attributes);
            foreach (var memory in allocations)
            {
                Marshal.FreeCoTaskMem(memory);
            }
        }
    }

    /// <summary>This process's environment as KEY=VALUE strings, for a spawned child.</summary>
    public static List<string> CurrentEnvironment()
    {
        var list = new List<string>();
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            list.Add($"{entry.Key}={entry.Value}");
        }
        return list;
    }

    /// <summary>Writes all of <paramref name="data"/> to <paramref name="fd"/>; false if the reader has gone (EPIPE).</summary>
    public static bool WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* start = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint written = Write(fd, start + done, (nuint)(data.Length - done));
                if (written < 0)
                {
                    if (Marshal.GetLastPInvokeError() == EINTR)
                    {
                        continue;
                    }
                    return false;
                }
                done += (int)written;
            }
        }
        return true;
    }

    /// <summary>read(2) retried on EINTR; 0 at end of file, -1 on error.</summary>
    public static int ReadSome(int fd, Span<byte> buffer)
    {
        fixed (byte* start = buffer)
        {
            while (true)
            {
                nint count = Read(fd, start, (nuint)buffer.Length);
                if (count >= 0)
                {
                    return (int)count;
                }
                if (Marshal.GetLastPInvokeError() != EINTR)
                {
                    return -1;
                }
            }
        }
    }

    private static HostCallException Fail(string operation) => new(operation, Marshal.GetLastPInvokeError());
}
