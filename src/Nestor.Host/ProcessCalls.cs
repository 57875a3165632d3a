using System.Runtime;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>What the child of <see cref="ProcessCalls.CloneAndExecute"/> does between clone3(2) and execve(2): join
/// namespaces by file descriptor, become root of its user namespace, keep some descriptors open across the exec, take
/// its standard streams, then replace itself by <see cref="Executable"/>.</summary>
public sealed class CloneExecRequest
{
    /// <summary>clone3(2) flags: the CLONE_NEW* namespaces the child is created in (see <see cref="NamespaceCalls"/>).</summary>
    public ulong CloneFlags { get; init; }

    /// <summary>Absolute path of the program to execute.</summary>
    public required string Executable { get; init; }

    /// <summary>argv, including argv[0].</summary>
    public required IReadOnlyList<string> Arguments { get; init; }

    /// <summary>envp as <c>NAME=value</c> strings.</summary>
    public required IReadOnlyList<string> Environment { get; init; }

    /// <summary>Namespace descriptors the child joins with setns(2) in this order (a user namespace first, so that
    /// the others are joined with its capabilities).</summary>
    public IReadOnlyList<int> JoinNamespaces { get; init; } = [];

    /// <summary>setresgid(0,0,0) and setresuid(0,0,0) before the exec: the process must be root of its (new or
    /// joined) user namespace when it executes, or execve(2) clears its capabilities (capabilities(7), "Capabilities
    /// and execution of programs by root").</summary>
    public bool BecomeRoot { get; init; }

    /// <summary>After joining the namespaces, fork once more and execute in the grandchild, which is in the joined pid
    /// namespace (setns(2) with CLONE_NEWPID only moves children); the child waits for it and exits with its status
    /// as a shell reports it (128 + signal), so the caller's waitpid sees the program's status.</summary>
    public bool ForkIntoPidNamespace { get; init; }

    /// <summary>chdir(2) before the exec (after joining the mount namespace, so inside it).</summary>
    public string? WorkingDirectory { get; init; }

    /// <summary>The user to become before the exec (setgroups when <see cref="Groups"/> is given, setresgid,
    /// setresuid), keeping the permitted capabilities through PR_SET_KEEPCAPS for <see cref="Capabilities"/>.</summary>
    public (uint Uid, uint Gid)? Identity { get; init; }

    /// <summary>Supplementary groups for <see cref="Identity"/>; null leaves them (a user namespace whose setgroups
    /// is "deny").</summary>
    public IReadOnlyList<uint>? Groups { get; init; }

    /// <summary>Capability masks (bit n = capability n): the bounding set is reduced to <c>Bounding</c> before the
    /// identity changes, the other sets are set with capset(2) after.</summary>
    public (ulong Bounding, ulong Effective, ulong Permitted, ulong Inheritable)? Capabilities { get; init; }

    /// <summary>The highest capability number the kernel knows (/proc/sys/kernel/cap_last_cap).</summary>
    public int LastCapability { get; init; } = 40;

    /// <summary>prctl(PR_SET_NO_NEW_PRIVS) before the exec.</summary>
    public bool NoNewPrivileges { get; init; }

    /// <summary>Descriptors open for writing on <c>cgroup.procs</c> files (one per hierarchy: each cgroup v1 controller
    /// the container uses, or its v2 group). The child writes "0" to each — "the writing process" (cgroups(7),
    /// "Creating cgroups and moving processes") — as its first step, before it joins a user namespace (whose root
    /// may not write the host's cgroup files) and before it forks into the pid namespace, so that the program is
    /// born inside the control group and cannot fork out of its limits first. The caller opens them with
    /// O_CLOEXEC and closes them after the call.</summary>
    public IReadOnlyList<int> ControlGroupProcessFiles { get; init; } = [];

    /// <summary>A seccomp filter as a classic BPF program (an array of 8-byte <c>struct sock_filter</c>, e.g. from
    /// <see cref="SeccompContext.ExportBpf"/>), installed with seccomp(2) SECCOMP_SET_MODE_FILTER. Without
    /// <see cref="NoNewPrivileges"/> installing needs CAP_SYS_ADMIN, so it happens before the switch to
    /// <see cref="Identity"/> (the order runc's exec uses); with it, as the last step before execve(2), so that the
    /// fewest calls run under the filter. The filter must allow what follows it (setgroups, setresgid, setresuid,
    /// capset, prctl, fcntl, dup2, rt_sigaction, rt_sigprocmask, execve). Null installs none.</summary>
    public byte[]? SeccompProgram { get; init; }

    /// <summary>seccomp(2)'s flags for <see cref="SeccompProgram"/> (SECCOMP_FILTER_FLAG_LOG = 2,
    /// SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4; TSYNC = 1 changes nothing in the single-threaded child).</summary>
    public uint SeccompFlags { get; init; }

    /// <summary>Descriptors (opened with O_CLOEXEC by the caller) that stay open in the executed program.</summary>
    public IReadOnlyList<int> InheritedDescriptors { get; init; } = [];

    /// <summary>After taking its standard streams, start a new session (setsid(2)) and make standard input — a
    /// pseudo-terminal's slave — its controlling terminal (TIOCSCTTY, tty_ioctl(4)): job control, ^C and the
    /// terminal's hang-up then reach the program, as for a container's first process with process.terminal.</summary>
    public bool ControllingTerminal { get; init; }

    public int Stdin { get; init; }
    public int Stdout { get; init; } = 1;
    public int Stderr { get; init; } = 2;

    /// <summary>How long the child may take to reach its exec (after <c>beforeRelease</c> returned).</summary>
    public TimeSpan ExecTimeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>Process creation and control: clone3(2) into new namespaces followed by execve(2), waitpid(2), kill(2),
/// pipes and poll(2).</summary>
public static unsafe class ProcessCalls
{
    /// <summary>SIGCHLD: the child's exit signal, so that waitpid(2) without __WALL sees it.</summary>
    public const int ChildSignal = 17;

    /// <summary>SIGKILL.</summary>
    public const int KillSignal = 9;

    // The clone3 child is a copy of a multithreaded .NET process in which only the calling thread exists. Any managed
    // runtime service it entered could wait forever for a lock that another (now absent) thread held at the clone, or
    // for a garbage collection that nobody will run. So the child runs only the code of CloneAndExecute, compiled
    // fully optimized before the clone (AggressiveOptimization: no tiering, no call-counting stubs; the dry run below
    // compiles it), and calls the kernel only through syscall(3) by an unmanaged function pointer resolved before the
    // clone: a calli compiles to a direct native call, whereas a [LibraryImport] wrapper is a managed method that could
    // still be tiered up or bound lazily on its first call. The call suppresses the GC transition, so the thread stays
    // in cooperative mode and no collection can run in the parent while the clone copies the address space. Every
    // argument (paths, argv, envp, descriptor lists) is in unmanaged memory built before the clone. A GC no-region
    // keeps allocations in other threads from starting a collection (and so a suspension) around the clone. If the
    // child still gets stuck, the exec pipe's timeout turns that into an error.
    [StructLayout(LayoutKind.Sequential)]
    private struct CloneArgs
    {
        public ulong Flags;
        public ulong PidFd;
        public ulong ChildTid;
        public ulong ParentTid;
        public ulong ExitSignal;
        public ulong Stack;
        public ulong StackSize;
        public ulong Tls;
        public ulong SetTid;
        public ulong SetTidSize;
        public ulong Cgroup;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct ChildPlan
    {
        public nint Syscall;
        public int* Errno;
        public CloneArgs* Clone;
        public int DryRun;
        public int ReleaseFd;
        public int ReportFd;
        public int JoinCount;
        public int* JoinFds;
        public int InheritedCount;
        public int* InheritedFds;
        public int Stdin;
        public int Stdout;
        public int Stderr;
        public int ControllingTerminal;
        public int BecomeRoot;
        public int ForkIntoPid;
        public byte* WorkingDirectory;
        public int SetIdentity;
        public uint Uid;
        public uint Gid;
        public int GroupCount;
        public uint* Groups;
        public int SetCapabilities;
        public int LastCapability;
        public ulong Bounding;
        public uint* CapabilityData;
        public int NoNewPrivileges;
        public int ControlGroupCount;
        public int* ControlGroupFds;
        public SocketFilterProgram* Seccomp;
        public uint SeccompFlags;
        public byte* Path;
        public byte** Argv;
        public byte** Envp;
    }

    // struct sock_fprog (linux/filter.h): the instruction count and a pointer to the struct sock_filter array.
    [StructLayout(LayoutKind.Sequential)]
    private struct SocketFilterProgram
    {
        public ushort Length;
        public byte* Filter;
    }

    /// <summary>The steps of the child, reported with the errno when one fails.</summary>
    private static readonly string[] ChildSteps =
    [
        "", "waiting for the parent's release", "setns into a namespace", "becoming root of the user namespace",
        "keeping descriptors across exec", "setting up standard streams", "execve", "forking into the pid namespace",
        "chdir to the working directory", "dropping from the capability bounding set", "becoming the process's user",
        "setting capabilities (capset)", "prctl(PR_SET_NO_NEW_PRIVS)", "joining the control group (cgroup.procs)",
        "installing the seccomp filter (seccomp(2))", "making the terminal the controlling one (setsid, TIOCSCTTY)",
    ];

    /// <summary>Creates a process with clone3(2) in the namespaces of <see cref="CloneExecRequest.CloneFlags"/> and has
    /// it execute <see cref="CloneExecRequest.Executable"/>. <paramref name="beforeRelease"/> runs with the child's pid
    /// while the child waits (write its uid/gid maps, put it in its cgroup); then the child goes on and this returns
    /// once its execve(2) succeeded. A child that fails a step or does not reach execve in time is killed and reaped,
    /// and the failure thrown as a <see cref="HostCallException"/> naming the step.</summary>
    public static int CloneAndExecute(CloneExecRequest request, Action<int>? beforeRelease = null)
    {
        ArgumentNullException.ThrowIfNull(request);
        var (releaseRead, releaseWrite) = CreatePipe();
        var (reportRead, reportWrite) = CreatePipe();
        var unmanaged = new List<nint>();
        int pid = -1;
        try
        {
            var clone = (CloneArgs*)Alloc(unmanaged, sizeof(CloneArgs));
            *clone = new CloneArgs { Flags = request.CloneFlags, ExitSignal = ChildSignal };
            var plan = (ChildPlan*)Alloc(unmanaged, sizeof(ChildPlan));
            *plan = new ChildPlan
            {
                Syscall = NativeLibrary.GetExport(NativeLibrary.Load("libc.so.6"), "syscall"),
                Errno = LibC.ErrnoLocation(),
                Clone = clone,
                ReleaseFd = releaseRead,
                ReportFd = reportWrite,
                JoinCount = request.JoinNamespaces.Count,
                JoinFds = IntArray(unmanaged, request.JoinNamespaces),
                InheritedCount = request.InheritedDescriptors.Count,
                InheritedFds = IntArray(unmanaged, request.InheritedDescriptors),
                Stdin = request.Stdin,
                Stdout = request.Stdout,
                Stderr = request.Stderr,
                ControllingTerminal = request.ControllingTerminal ? 1 : 0,
                BecomeRoot = request.BecomeRoot ? 1 : 0,
                ForkIntoPid = request.ForkIntoPidNamespace ? 1 : 0,
                WorkingDirectory = request.WorkingDirectory is null ? null : Utf8(unmanaged, request.WorkingDirectory),
                SetIdentity = request.Identity is null ? 0 : 1,
                Uid = request.Identity?.Uid ?? 0,
                Gid = request.Identity?.Gid ?? 0,
                GroupCount = request.Groups?.Count ?? -1,
                Groups = UintArray(unmanaged, request.Groups ?? []),
                SetCapabilities = request.Capabilities is null ? 0 : 1,
                LastCapability = request.LastCapability,
                Bounding = request.Capabilities?.Bounding ?? 0,
                CapabilityData = CapabilityData(unmanaged, request.Capabilities),
                NoNewPrivileges = request.NoNewPrivileges ? 1 : 0,
                ControlGroupCount = request.ControlGroupProcessFiles.Count,
                ControlGroupFds = IntArray(unmanaged, request.ControlGroupProcessFiles),
                Seccomp = SeccompProgram(unmanaged, request.SeccompProgram),
                SeccompFlags = request.SeccompFlags,
                Path = Utf8(unmanaged, request.Executable),
                Argv = StringArray(unmanaged, request.Arguments),
                Envp = StringArray(unmanaged, request.Environment),
            };
            // Compile CloneAndExecuteCore and bind its call target in this process, not in the child.
            plan->DryRun = 1;
            CloneAndExecuteCore(plan);
            plan->DryRun = 0;

            bool noGcRegion = false;
            try
            {
                noGcRegion = GC.TryStartNoGCRegion(1 << 20);
            }
            catch (InvalidOperationException)
            {
                // Another thread of this process is already in a no-GC region: that one protects the clone as well.
            }
            long result;
            int cloneErrno;
            try
            {
                result = CloneAndExecuteCore(plan);
                cloneErrno = *plan->Errno;
            }
            finally
            {
                if (noGcRegion && GCSettings.LatencyMode == GCLatencyMode.NoGCRegion)
                {
                    GC.EndNoGCRegion();
                }
            }
            if (result < 0)
            {
                throw new HostCallException("clone3", cloneErrno);
            }
            pid = (int)result;
            CloseQuietly(ref releaseRead);
            CloseQuietly(ref reportWrite);
            beforeRelease?.Invoke(pid);
            byte go = 1;
            if (LibC.Write(releaseWrite, &go, 1) != 1)
            {
                throw HostCallException.LastError("releasing the cloned child");
            }
            int[] report = new int[2];
            int got = ReadWithTimeout(reportRead, report, request.ExecTimeout);
            if (got < 0)
            {
                throw new HostCallException($"the cloned child did not reach execve of {request.Executable} within {request.ExecTimeout.TotalSeconds:0.#} s", 62 /* ETIME */);
            }
            if (got > 0)
            {
                int step = report[0] > 0 && report[0] < ChildSteps.Length ? report[0] : 0;
                throw new HostCallException($"{ChildSteps[step]} of {request.Executable} in the cloned child", report[1]);
            }
            int started = pid;
            pid = -1;
            return started;
        }
        finally
        {
            if (pid > 0)
            {
                LibC.Kill(pid, KillSignal);
                WaitForExit(pid);
            }
            CloseQuietly(ref releaseRead);
            CloseQuietly(ref releaseWrite);
            CloseQuietly(ref reportRead);
            CloseQuietly(ref reportWrite);
            foreach (nint block in unmanaged)
            {
                NativeMemory.Free((void*)block);
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static long CloneAndExecuteCore(ChildPlan* plan)
    {
        var call = (delegate* unmanaged[Cdecl, SuppressGCTransition]<long, long, long, long, long, long, long, long>)plan->Syscall;
        if (plan->DryRun != 0)
        {
            return call(LibC.SYS_getpid, 0, 0, 0, 0, 0, 0);
        }
        long pid = call(LibC.SYS_clone3, (long)plan->Clone, sizeof(CloneArgs), 0, 0, 0, 0);
        if (pid != 0)
        {
            return pid;
        }
        // The child, until execve or exit_group.
        int step = 1;
        byte go = 0;
        long result;
        do
        {
            result = call(LibC.SYS_read, plan->ReleaseFd, (long)&go, 1, 0, 0, 0);
        }
        while (result < 0 && *plan->Errno == LibC.EINTR);
        if (result == 1)
        {
            step = 13;
            byte self = (byte)'0';
            for (int i = 0; i < plan->ControlGroupCount && result >= 0; i++)
            {
                result = call(LibC.SYS_write, plan->ControlGroupFds[i], (long)&self, 1, 0, 0, 0);
            }
            step = 2;
            for (int i = 0; i < plan->JoinCount && result >= 0; i++)
            {
                result = call(LibC.SYS_setns, plan->JoinFds[i], 0, 0, 0, 0, 0);
            }
            if (result >= 0 && plan->BecomeRoot != 0)
            {
                step = 3;
                result = call(LibC.SYS_setresgid, 0, 0, 0, 0, 0, 0);
                if (result >= 0)
                {
                    result = call(LibC.SYS_setresuid, 0, 0, 0, 0, 0, 0);
                }
            }
            if (result >= 0 && plan->ForkIntoPid != 0)
            {
                step = 7;
                long grandchild = call(LibC.SYS_clone3, (long)plan->Clone, sizeof(CloneArgs), 0, 0, 0, 0);
                if (grandchild > 0)
                {
                    // Relay the grandchild's status; the report pipe is the grandchild's to close (by its exec).
                    call(LibC.SYS_close, plan->ReportFd, 0, 0, 0, 0, 0);
                    int status = 0;
                    long waited;
                    do
                    {
                        waited = call(LibC.SYS_wait4, grandchild, (long)&status, 0, 0, 0, 0);
                    }
                    while (waited < 0 && *plan->Errno == LibC.EINTR);
                    int code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
                    call(LibC.SYS_exit_group, waited < 0 ? 127 : code, 0, 0, 0, 0, 0);
                }
                result = grandchild;
            }
            if (result >= 0 && plan->WorkingDirectory != null)
            {
                step = 8;
                result = call(LibC.SYS_chdir, (long)plan->WorkingDirectory, 0, 0, 0, 0, 0);
            }
            if (result >= 0 && plan->SetCapabilities != 0)
            {
                step = 9;
                for (int capability = 0; capability <= plan->LastCapability && result >= 0; capability++)
                {
                    if ((plan->Bounding & (1UL << capability)) == 0)
                    {
                        result = call(LibC.SYS_prctl, 24 /* PR_CAPBSET_DROP */, capability, 0, 0, 0, 0);
                    }
                }
            }
            if (result >= 0 && plan->Seccomp != null && plan->NoNewPrivileges == 0)
            {
                step = 14;
                result = call(LibC.SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, plan->SeccompFlags, (long)plan->Seccomp, 0, 0, 0);
            }
            if (result >= 0 && plan->SetIdentity != 0)
            {
                step = 10;
                result = call(LibC.SYS_prctl, 8 /* PR_SET_KEEPCAPS */, 1, 0, 0, 0, 0);
                if (result >= 0 && plan->GroupCount >= 0)
                {
                    result = call(LibC.SYS_setgroups, plan->GroupCount, (long)plan->Groups, 0, 0, 0, 0);
                }
                if (result >= 0)
                {
                    result = call(LibC.SYS_setresgid, plan->Gid, plan->Gid, plan->Gid, 0, 0, 0);
                }
                if (result >= 0)
                {
                    result = call(LibC.SYS_setresuid, plan->Uid, plan->Uid, plan->Uid, 0, 0, 0);
                }
            }
            if (result >= 0 && plan->SetCapabilities != 0)
            {
                step = 11;
                // capset(2) version 3: the header, then two 32-bit halves of effective, permitted, inheritable.
                result = call(LibC.SYS_capset, (long)plan->CapabilityData, (long)(plan->CapabilityData + 2), 0, 0, 0, 0);
            }
            if (result >= 0 && plan->NoNewPrivileges != 0)
            {
                step = 12;
                result = call(LibC.SYS_prctl, 38 /* PR_SET_NO_NEW_PRIVS */, 1, 0, 0, 0, 0);
            }
            if (result >= 0)
            {
                step = 4;
                for (int i = 0; i < plan->InheritedCount && result >= 0; i++)
                {
                    result = call(LibC.SYS_fcntl, plan->InheritedFds[i], LibC.F_SETFD, 0, 0, 0, 0);
                }
            }
            if (result >= 0)
            {
                step = 5;
                result = DuplicateOnto(call, plan->Stdin, 0);
                if (result >= 0)
                {
                    result = DuplicateOnto(call, plan->Stdout, 1);
                }
                if (result >= 0)
                {
                    result = DuplicateOnto(call, plan->Stderr, 2);
                }
            }
            if (result >= 0 && plan->ControllingTerminal != 0)
            {
                step = 15;
                result = call(LibC.SYS_setsid, 0, 0, 0, 0, 0, 0);
                if (result >= 0)
                {
                    result = call(LibC.SYS_ioctl, 0, 0x540E /* TIOCSCTTY */, 0, 0, 0, 0);
                }
            }
            if (result >= 0 && plan->Seccomp != null && plan->NoNewPrivileges != 0)
            {
                step = 14;
                result = call(LibC.SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */, plan->SeccompFlags, (long)plan->Seccomp, 0, 0, 0);
            }
            if (result >= 0)
            {
                step = 6;
                ResetSignals(call);
                call(LibC.SYS_execve, (long)plan->Path, (long)plan->Argv, (long)plan->Envp, 0, 0, 0);
            }
            int* message = stackalloc int[2];
            message[0] = step;
            message[1] = *plan->Errno;
            call(LibC.SYS_write, plan->ReportFd, (long)message, 8, 0, 0, 0);
        }
        call(LibC.SYS_exit_group, 127, 0, 0, 0, 0, 0);
        return 0;
    }

    // A .NET process ignores SIGPIPE and its threads may block signals; execve(2) keeps ignored dispositions and the
    // mask (signal(7), "Signal disposition"), so the program would inherit them. Every signal goes back to its
    // default and the mask is emptied, as runc and crun do (SIGKILL and SIGSTOP refuse, harmlessly).
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static void ResetSignals(delegate* unmanaged[Cdecl, SuppressGCTransition]<long, long, long, long, long, long, long, long> call)
    {
        // struct kernel_sigaction { handler; flags; restorer; mask; }: all zero is SIG_DFL with an empty mask.
        ulong* action = stackalloc ulong[4];
        action[0] = 0;
        action[1] = 0;
        action[2] = 0;
        action[3] = 0;
        for (int signal = 1; signal <= 64; signal++)
        {
            call(LibC.SYS_rt_sigaction, signal, (long)action, 0, sizeof(ulong), 0, 0);
        }
        call(LibC.SYS_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)(action + 3), 0, sizeof(ulong), 0, 0);
    }

    // dup2 onto a standard stream; when the descriptor already is that stream, only clear its close-on-exec flag.
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    private static long DuplicateOnto(delegate* unmanaged[Cdecl, SuppressGCTransition]<long, long, long, long, long, long, long, long> call, int from, int to) =>
        from == to ? call(LibC.SYS_fcntl, to, LibC.F_SETFD, 0, 0, 0, 0) : call(LibC.SYS_dup2, from, to, 0, 0, 0, 0);

    /// <summary>pipe2(2) with O_CLOEXEC: (read end, write end).</summary>
    public static (int Read, int Write) CreatePipe()
    {
        int* fds = stackalloc int[2];
        if (LibC.Pipe2(fds, LibC.O_CLOEXEC) != 0)
        {
            throw HostCallException.LastError("pipe2");
        }
        return (fds[0], fds[1]);
    }

    /// <summary>close(2), ignoring errors; sets the descriptor to -1.</summary>
    public static void CloseQuietly(ref int fd)
    {
        if (fd >= 0)
        {
            LibC.Close(fd);
            fd = -1;
        }
    }

    /// <summary>close(2), ignoring errors.</summary>
    public static void Close(int fd)
    {
        if (fd >= 0)
        {
            LibC.Close(fd);
        }
    }

    /// <summary>Waits until <paramref name="fd"/> is readable or hung up; false on timeout.</summary>
    public static bool WaitReadable(int fd, TimeSpan timeout)
    {
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            var entry = new LibC.PollFd { Fd = fd, Events = LibC.POLLIN };
            int left = (int)Math.Max(0, deadline - Environment.TickCount64);
            int ready = LibC.Poll(&entry, 1, left);
            if (ready > 0)
            {
                return true;
            }
            if (ready == 0)
            {
                return false;
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno != LibC.EINTR)
            {
                throw new HostCallException("poll", errno);
            }
        }
    }

    /// <summary>Reads until <paramref name="buffer"/> is full or end of file; -1 on timeout, else the ints read.</summary>
    private static int ReadWithTimeout(int fd, int[] buffer, TimeSpan timeout)
    {
        var bytes = MemoryMarshal.AsBytes(buffer.AsSpan());
        int total = 0;
        while (total < bytes.Length)
        {
            if (!WaitReadable(fd, timeout))
            {
                return -1;
            }
            int read = ReadSome(fd, bytes[total..]);
            if (read == 0)
            {
                break;
            }
            total += read;
        }
        return total / sizeof(int);
    }

    /// <summary>read(2) once, retrying on EINTR; 0 at end of file.</summary>
    public static int ReadSome(int fd, Span<byte> buffer)
    {
        fixed (byte* pointer = buffer)
        {
            while (true)
            {
                nint read = LibC.Read(fd, pointer, (nuint)buffer.Length);
                if (read >= 0)
                {
                    return (int)read;
                }
                int errno = Marshal.GetLastPInvokeError();
                if (errno != LibC.EINTR)
                {
                    throw new HostCallException("read", errno);
                }
            }
        }
    }

    /// <summary><see cref="WriteAll"/>, false instead of an exception when the descriptor refuses (a reader that went
    /// away: EPIPE; a terminal hung up: EIO), for copying loops that end there.</summary>
    public static bool TryWriteAll(int fd, ReadOnlySpan<byte> data)
    {
        try
        {
            WriteAll(fd, data);
            return true;
        }
        catch (HostCallException)
        {
            return false;
        }
    }

    /// <summary><see cref="ReadSome"/>, -1 instead of an exception on an error (a pty master reads EIO once its last
    /// slave closed), for copying loops that end there.</summary>
    public static int TryReadSome(int fd, Span<byte> buffer)
    {
        try
        {
            return ReadSome(fd, buffer);
        }
        catch (HostCallException)
        {
            return -1;
        }
    }

    /// <summary>write(2) all of <paramref name="data"/>, retrying on EINTR.</summary>
    public static void WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* pointer = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint written = LibC.Write(fd, pointer + done, (nuint)(data.Length - done));
                if (written < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == LibC.EINTR)
                    {
                        continue;
                    }
                    throw new HostCallException("write", errno);
                }
                done += (int)written;
            }
        }
    }

    /// <summary>Waits for a child (waitpid(2)) and returns its status as a shell reports it: the exit code, or 128 plus
    /// the signal that killed it; -1 when it is not (or no longer) this process's child.</summary>
    public static int WaitForExit(int pid)
    {
        int status;
        while (LibC.WaitPid(pid, &status, 0) < 0)
        {
            if (Marshal.GetLastPInvokeError() != LibC.EINTR)
            {
                return -1;
            }
        }
        return DecodeStatus(status);
    }

    /// <summary>waitpid(-1): waits for any child (a subreaper's adopted orphans included) and returns its pid and its
    /// status as <see cref="WaitForExit"/> reports it; pid -1 when this process has no child left (ECHILD).</summary>
    public static (int Pid, int Status) WaitForAnyChild()
    {
        int status;
        int pid;
        while ((pid = LibC.WaitPid(-1, &status, 0)) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == 10 /* ECHILD */)
            {
                return (-1, 0);
            }
            if (errno != LibC.EINTR)
            {
                throw new HostCallException("waitpid of any child", errno);
            }
        }
        return (pid, DecodeStatus(status));
    }

    /// <summary>waitpid(2) with WNOHANG: the status as <see cref="WaitForExit"/>, or null while the child runs.</summary>
    public static int? TryWaitForExit(int pid)
    {
        int status;
        int result = LibC.WaitPid(pid, &status, LibC.WNOHANG);
        return result == pid ? DecodeStatus(status) : result < 0 ? -1 : null;
    }

    private static int DecodeStatus(int status) => (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);

    /// <summary>kill(2); false when the process does not exist (ESRCH).</summary>
    public static bool Signal(int pid, int signal)
    {
        if (LibC.Kill(pid, signal) == 0)
        {
            return true;
        }
        int errno = Marshal.GetLastPInvokeError();
        return errno == LibC.ESRCH ? false : throw new HostCallException($"kill of {pid} with signal {signal}", errno);
    }

    /// <summary>The process's start time in clock ticks since boot (field 22 of /proc/PID/stat, proc(5)), which with
    /// the pid identifies a process even after its pid is reused; null when it does not exist or is a zombie.</summary>
    public static ulong? StartTime(int pid)
    {
        string text;
        try
        {
            text = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
        // The command name (field 2) is in parentheses and may contain spaces: fields are counted after the last ')'.
        int close = text.LastIndexOf(')');
        if (close < 0)
        {
            return null;
        }
        string[] fields = text[(close + 2)..].Split(' ');
        // fields[0] is field 3 (state), so field 22 is fields[19].
        if (fields.Length < 20 || fields[0] is "Z" or "X")
        {
            return null;
        }
        return ulong.TryParse(fields[19], out ulong start) ? start : null;
    }

    /// <summary>prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to this process.</summary>
    public static void BecomeChildSubreaper()
    {
        if (LibC.Prctl(36, 1, 0, 0, 0) != 0)
        {
            throw HostCallException.LastError("prctl(PR_SET_CHILD_SUBREAPER)");
        }
    }

    /// <summary>setresgid(2) and setresuid(2) for the calling thread only (raw system calls, unlike glibc's wrappers
    /// which change every thread), with setgroups(2) first when <paramref name="groups"/> is given; the thread then
    /// executes the container's program, which keeps these credentials.</summary>
    public static void SetThreadCredentials(uint uid, uint gid, IReadOnlyList<uint>? groups)
    {
        if (groups is not null)
        {
            uint[] list = [.. groups];
            fixed (uint* pointer = list)
            {
                if (LibC.Syscall(LibC.SYS_setgroups, list.Length, (long)pointer, 0, 0, 0, 0) < 0)
                {
                    throw HostCallException.LastError("setgroups");
                }
            }
        }
        if (LibC.Syscall(LibC.SYS_setresgid, gid, gid, gid, 0, 0, 0) < 0)
        {
            throw HostCallException.LastError($"setresgid to {gid}");
        }
        if (LibC.Syscall(LibC.SYS_setresuid, uid, uid, uid, 0, 0, 0) < 0)
        {
            throw HostCallException.LastError($"setresuid to {uid}");
        }
    }

    /// <summary>execve(2) of <paramref name="path"/> with every signal at its default and none blocked (the container's
    /// program must not inherit the .NET runtime's ignored SIGPIPE); returns only by throwing.</summary>
    public static void Execute(string path, IReadOnlyList<string> arguments, IReadOnlyList<string> environment)
    {
        var unmanaged = new List<nint>();
        try
        {
            byte* file = Utf8(unmanaged, path);
            byte** argv = StringArray(unmanaged, arguments);
            byte** envp = StringArray(unmanaged, environment);
            // As in the clone child: default dispositions and an empty mask for the new program.
            ulong* action = stackalloc ulong[4];
            new Span<ulong>(action, 4).Clear();
            for (int signal = 1; signal <= 64; signal++)
            {
                LibC.Syscall(LibC.SYS_rt_sigaction, signal, (long)action, 0, sizeof(ulong), 0, 0);
            }
            LibC.Syscall(LibC.SYS_rt_sigprocmask, 2, (long)(action + 3), 0, sizeof(ulong), 0, 0);
            LibC.Syscall(LibC.SYS_execve, (long)file, (long)argv, (long)envp, 0, 0, 0);
            throw HostCallException.LastError($"execve of {path}");
        }
        finally
        {
            foreach (nint block in unmanaged)
            {
                NativeMemory.Free((void*)block);
            }
        }
    }

    private static void* Alloc(List<nint> owned, int size)
    {
        void* block = NativeMemory.AllocZeroed((nuint)size);
        owned.Add((nint)block);
        return block;
    }

    private static int* IntArray(List<nint> owned, IReadOnlyList<int> values)
    {
        var array = (int*)Alloc(owned, Math.Max(1, values.Count) * sizeof(int));
        for (int i = 0; i < values.Count; i++)
        {
            array[i] = values[i];
        }
        return array;
    }

    private static SocketFilterProgram* SeccompProgram(List<nint> owned, byte[]? program)
    {
        if (program is null)
        {
            return null;
        }
        // Eight bytes an instruction, at most BPF_MAXINSNS (4096) of them (seccomp(2) refuses longer ones with EINVAL).
        if (program.Length == 0 || program.Length % 8 != 0 || program.Length / 8 > 4096)
        {
            throw new ArgumentException($"a seccomp program is 1 to 4096 eight-byte instructions; this one has {program.Length} bytes", nameof(program));
        }
        var filter = (byte*)Alloc(owned, program.Length);
        program.CopyTo(new Span<byte>(filter, program.Length));
        var header = (SocketFilterProgram*)Alloc(owned, sizeof(SocketFilterProgram));
        header->Length = (ushort)(program.Length / 8);
        header->Filter = filter;
        return header;
    }

    private static uint* UintArray(List<nint> owned, IReadOnlyList<uint> values)
    {
        var array = (uint*)Alloc(owned, Math.Max(1, values.Count) * sizeof(uint));
        for (int i = 0; i < values.Count; i++)
        {
            array[i] = values[i];
        }
        return array;
    }

    // struct __user_cap_header_struct { u32 version; int pid; } followed by struct __user_cap_data_struct[2]
    // { u32 effective, permitted, inheritable; } (capget(2), _LINUX_CAPABILITY_VERSION_3).
    private static uint* CapabilityData(List<nint> owned, (ulong Bounding, ulong Effective, ulong Permitted, ulong Inheritable)? masks)
    {
        var data = (uint*)Alloc(owned, 8 * sizeof(uint));
        if (masks is { } m)
        {
            data[0] = 0x20080522;
            data[1] = 0;
            data[2] = (uint)m.Effective;
            data[3] = (uint)m.Permitted;
            data[4] = (uint)m.Inheritable;
            data[5] = (uint)(m.Effective >> 32);
            data[6] = (uint)(m.Permitted >> 32);
            data[7] = (uint)(m.Inheritable >> 32);
        }
        return data;
    }

    private static byte* Utf8(List<nint> owned, string text)
    {
        int length = Encoding.UTF8.GetByteCount(text);
        var bytes = (byte*)Alloc(owned, length + 1);
        Encoding.UTF8.GetBytes(text, new Span<byte>(bytes, length));
        return bytes;
    }

    private static byte** StringArray(List<nint> owned, IReadOnlyList<string> values)
    {
        var array = (byte**)Alloc(owned, (values.Count + 1) * sizeof(nint));
        for (int i = 0; i < values.Count; i++)
        {
            array[i] = Utf8(owned, values[i]);
        }
        return array;
    }
}
