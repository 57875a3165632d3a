using System.Globalization;
using System.Text;
using System.Text.Json;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>Nestor's own OCI runtime (runtime-spec 1.x runtime.md, config.md, config-linux.md), through direct system
/// calls. Create clones a process into the container's new namespaces (clone3(2): a multithreaded .NET process cannot
/// unshare a user or mount namespace), which immediately executes Nestor again as the container's init
/// (<see cref="ContainerInit"/>); the init builds the root file system, pivots into it and waits on the exec FIFO
/// until <see cref="Start"/>, then becomes the user's program.</summary>
public sealed class NestorRuntime : IContainerRuntime
{
    private readonly ContainerStateStore store;
    private readonly IReadOnlyList<string> initExecutable;
    private readonly TimeSpan createTimeout;
    private readonly IContainerSecurity security;

    public NestorRuntime(RuntimeOptions? options = null)
        : this(options ?? new RuntimeOptions(), new ContainerSecurity())
    {
    }

    internal NestorRuntime(RuntimeOptions options, IContainerSecurity security)
    {
        store = new ContainerStateStore(options.StateRoot ?? RuntimeOptions.DefaultStateRoot());
        initExecutable = options.InitExecutable ?? RuntimeOptions.DefaultInitExecutable();
        if (initExecutable.Count == 0)
        {
            throw new ContainerRuntimeException("RuntimeOptions.InitExecutable is empty");
        }
        createTimeout = options.CreateTimeout;
        this.security = security;
    }

    public string Name => "nestor";

    /// <summary>The state directory (runc's <c>--root</c>).</summary>
    public string StateRoot => store.Root;

    public void Create(string id, string bundle, RuntimeIo io, string? pidFile = null)
    {
        ArgumentNullException.ThrowIfNull(io);
        ContainerStateStore.ValidateId(id);
        bundle = Path.GetFullPath(bundle);
        var spec = LoadSpec(bundle);
        using var held = store.CreateAndLock(id);
        string directory = store.Directory(id);
        var state = new StoredContainerState
        {
            Id = id,
            Bundle = bundle,
            Status = "creating",
            CgroupsPath = spec.Linux?.CgroupsPath,
            Created = DateTimeOffset.UtcNow,
            Annotations = spec.Annotations,
        };
        int pid = -1;
        var closeLater = new List<int>();
        bool done = false;
        try
        {
            store.Write(state);
            // Writable by others: in a user namespace that does not map the runtime's uid the init is "others"
            // (mkfifo's mode is reduced by the umask, so it is set again).
            string fifo = Path.Combine(directory, ContainerStateStore.ExecFifo);
            MountCalls.MakeFifo(fifo, Convert.ToInt32("622", 8));
            MountCalls.ChangeMode(fifo, Convert.ToInt32("622", 8));
            var (syncRead, syncWrite) = ProcessCalls.CreatePipe();
            var (reportRead, reportWrite) = ProcessCalls.CreatePipe();
            closeLater.AddRange([syncRead, syncWrite, reportRead, reportWrite]);
            int console = io.ConsoleSocket is { } socketPath ? ConnectConsole(socketPath) : -1;
            if (console >= 0)
            {
                closeLater.Add(console);
            }
            var (flags, joins, newUser) = Namespaces(spec);
            closeLater.AddRange(joins);
            object? controlGroup = security.CreateControlGroup(id, spec.Linux);
            var arguments = new List<string>(initExecutable)
            {
                "__container-init", InitProtocol.CreateMode, directory, bundle,
                syncRead.ToString(CultureInfo.InvariantCulture), reportWrite.ToString(CultureInfo.InvariantCulture),
                console.ToString(CultureInfo.InvariantCulture),
            };
            var request = new CloneExecRequest
            {
                CloneFlags = (ulong)flags,
                Executable = initExecutable[0],
                Arguments = arguments,
                Environment = InitEnvironment(),
                JoinNamespaces = joins,
                BecomeRoot = newUser || joins.Count > 0 && spec.Linux!.Namespaces!.Any(n => n.Type == "user" && n.Path is not null),
                InheritedDescriptors = console >= 0 ? [syncRead, reportWrite, console] : [syncRead, reportWrite],
                Stdin = io.Stdin,
                Stdout = io.Stdout,
                Stderr = io.Stderr,
            };
            try
            {
                pid = ProcessCalls.CloneAndExecute(request, child =>
                {
                    if (newUser)
                    {
                        uint uid = IdentityCalls.EffectiveUserId(), gid = IdentityCalls.EffectiveGroupId();
                        IdMappings.Write(child,
                            spec.Linux?.UidMappings is { Count: > 0 } u ? u : IdMappings.CallerAsRoot(uid),
                            spec.Linux?.GidMappings is { Count: > 0 } g ? g : IdMappings.CallerAsRoot(gid));
                    }
                    security.AddToControlGroup(controlGroup, child);
                });
            }
            catch (HostCallException exception)
            {
                throw new ContainerRuntimeException($"creating the container's init process failed: {exception.Message}", exception);
            }
            state.Pid = pid;
            state.PidStartTime = ProcessCalls.StartTime(pid) ?? 0;
            store.Write(state);
            ProcessCalls.Close(syncRead);
            ProcessCalls.Close(reportWrite);
            closeLater.Remove(syncRead);
            closeLater.Remove(reportWrite);
            if (console >= 0)
            {
                ProcessCalls.Close(console);
                closeLater.Remove(console);
            }
            FollowInit(spec, state, syncWrite, reportRead);
            state.Status = "created";
            store.Write(state);
            if (pidFile is not null)
            {
                File.WriteAllText(pidFile, pid.ToString(CultureInfo.InvariantCulture));
            }
            done = true;
        }
        finally
        {
            foreach (int fd in closeLater)
            {
                ProcessCalls.Close(fd);
            }
            if (!done)
            {
                if (pid > 0)
                {
                    ProcessCalls.Signal(pid, ProcessCalls.KillSignal);
                    ProcessCalls.WaitForExit(pid);
                }
                try
                {
                    security.DeleteControlGroup(id, spec.Linux?.CgroupsPath);
                }
                catch (ContainerRuntimeException)
                {
                }
                Directory.Delete(directory, recursive: true);
            }
        }
    }

    /// <summary>Reads the init's report lines until <c>created</c>, running the runtime's hooks when it asks.</summary>
    private void FollowInit(RuntimeSpec spec, StoredContainerState state, int sync, int report)
    {
        var reader = new LineReader(report);
        long deadline = Environment.TickCount64 + (long)createTimeout.TotalMilliseconds;
        while (true)
        {
            var left = TimeSpan.FromMilliseconds(Math.Max(0, deadline - Environment.TickCount64));
            string? line = reader.ReadLine(left, out bool timedOut);
            if (timedOut)
            {
                throw new ContainerRuntimeException($"the container's init did not finish setting up within {createTimeout.TotalSeconds:0} s");
            }
            if (line is null)
            {
                int status = ProcessCalls.WaitForExit(state.Pid);
                throw new ContainerRuntimeException($"the container's init exited (status {status}) before the container was created; its stderr has the reason");
            }
            if (line == InitProtocol.HooksLine)
            {
                var specState = ToSpecState(state, ContainerStatus.Creating);
                HookRunner.Run("prestart", spec.Hooks?.Prestart, specState);
                HookRunner.Run("createRuntime", spec.Hooks?.CreateRuntime, specState);
                ProcessCalls.WriteAll(sync, [InitProtocol.ContinueByte]);
            }
            else if (line == InitProtocol.CreatedLine)
            {
                return;
            }
            else if (line.StartsWith(InitProtocol.ErrorPrefix, StringComparison.Ordinal))
            {
                throw new ContainerRuntimeException($"creating container '{state.Id}': {line[InitProtocol.ErrorPrefix.Length..]}");
            }
        }
    }

    public void Start(string id)
    {
        using var held = store.Lock(id);
        var state = store.Read(id);
        var status = store.StatusOf(state);
        if (status != ContainerStatus.Created)
        {
            throw new ContainerRuntimeException($"cannot start container '{id}': it is {Lower(status)}, not created");
        }
        string fifoPath = Path.Combine(store.Directory(id), ContainerStateStore.ExecFifo);
        var spec = LoadSpec(state.Bundle);
        // O_NONBLOCK: opening for reading does not wait for the writer, so a dead init cannot hang start; the init,
        // blocked opening the FIFO for writing, proceeds as soon as this reader exists.
        int fifo = MountCalls.Open(fifoPath, MountCalls.OpenFlags.ReadOnly | MountCalls.OpenFlags.NonBlocking);
        string error;
        try
        {
            error = ReadStartReply(fifo, state);
        }
        finally
        {
            ProcessCalls.Close(fifo);
        }
        File.Delete(fifoPath);
        state.Status = "running";
        store.Write(state);
        if (error.Length > 0)
        {
            throw new ContainerRuntimeException($"starting container '{id}': {error}");
        }
        HookRunner.RunReportingFailures("poststart", spec.Hooks?.Poststart, ToSpecState(state, ContainerStatus.Running));
    }

    /// <summary>Waits for the init's started byte, then for the FIFO to close (the exec); returns any error text.</summary>
    private string ReadStartReply(int fifo, StoredContainerState state)
    {
        var text = new List<byte>();
        bool started = false;
        long deadline = Environment.TickCount64 + (long)createTimeout.TotalMilliseconds;
        Span<byte> buffer = stackalloc byte[512];
        while (true)
        {
            if (Environment.TickCount64 > deadline)
            {
                return "the container's init did not execute the process in time";
            }
            if (!ProcessCalls.WaitReadable(fifo, TimeSpan.FromMilliseconds(50)))
            {
                if (ProcessCalls.StartTime(state.Pid) != state.PidStartTime)
                {
                    return started ? "" : "the container's init is gone";
                }
                continue;
            }
            int read;
            try
            {
                read = ProcessCalls.ReadSome(fifo, buffer);
            }
            catch (HostCallException exception) when (exception.ErrorNumber == 11)
            {
                continue; // EAGAIN: no writer yet (a FIFO without writers polls readable only after one closed).
            }
            if (read == 0)
            {
                if (!started)
                {
                    // No writer has connected yet.
                    Thread.Sleep(1);
                    continue;
                }
                return Encoding.UTF8.GetString([.. text]);
            }
            var chunk = buffer[..read];
            if (!started)
            {
                started = chunk[0] == InitProtocol.StartedByte;
                chunk = chunk[1..];
            }
            text.AddRange(chunk.ToArray());
        }
    }

    public SpecState State(string id)
    {
        ContainerStateStore.ValidateId(id);
        using var held = store.Lock(id);
        var state = store.Read(id);
        return ToSpecState(state, store.StatusOf(state));
    }

    /// <summary>runc's exec. A .NET process cannot setns into a user or mount namespace (it is multithreaded), and a
    /// Nestor helper started inside the container's mount namespace would not find the .NET runtime's files there;
    /// so the clone3 child itself joins the init's namespaces (user first), forks once more into the pid namespace,
    /// takes the working directory, bounding set, user, capabilities and no_new_privs, all by raw system calls
    /// prepared before the clone (<see cref="CloneExecRequest"/>), and executes the program; the child relays the
    /// program's exit status. The process also gets what the init's descendants inherit and an exec'd process does not:
    /// the init's control groups (the child writes itself into their cgroup.procs, opened here, before it joins the
    /// user namespace and forks into the pid namespace) and the container's seccomp filter (linux.seccomp, built with
    /// libseccomp here and exported as BPF; the child installs it by seccomp(2)). The relaying child stays in the
    /// control groups while the program runs, so it counts as one process against pids.max.</summary>
    public IRuntimeProcess Exec(string id, SpecProcess process, RuntimeIo io)
    {
        ArgumentNullException.ThrowIfNull(process);
        ArgumentNullException.ThrowIfNull(io);
        using var held = store.Lock(id);
        var state = store.Read(id);
        var status = store.StatusOf(state);
        if (status is not (ContainerStatus.Created or ContainerStatus.Running))
        {
            throw new ContainerRuntimeException($"cannot exec in container '{id}': it is {Lower(status)}");
        }
        var args = process.Args is { Count: > 0 } ? process.Args : throw new ContainerRuntimeException("exec needs a program (process.args is empty)");
        var environment = process.Env ?? [];
        string executable = ResolveInContainer(state.Pid, args[0], environment);
        var joins = new List<int>();
        var controlGroupFiles = new List<int>();
        int terminal = -1;
        try
        {
            if (process.Terminal == true)
            {
                // runc's exec -t: a pty of the container's own devpts, its master sent over the console socket, its
                // slave the process's controlling terminal and standard streams.
                int console = io.ConsoleSocket is { } socketPath ? ConnectConsole(socketPath) : throw new ContainerRuntimeException("process.terminal is true but no --console-socket was given");
                terminal = TerminalCalls.CreateAndSendMasterIn(state.Pid, console, process.ConsoleSize?.Height ?? 0, process.ConsoleSize?.Width ?? 0);
            }
            foreach (string file in ControlGroupFilesOf(state))
            {
                controlGroupFiles.Add(MountCalls.Open(file, MountCalls.OpenFlags.WriteOnly));
            }
            var seccomp = TryLoadSpec(state.Bundle)?.Linux?.Seccomp is { } filter ? SeccompFilter.Export(filter) : ((byte[] Program, uint Flags)?)null;
            bool joinsPid = false, joinsUser = false;
            NamespaceKinds[] order = [NamespaceKinds.User, NamespaceKinds.Mount, NamespaceKinds.Network, NamespaceKinds.Ipc,
                NamespaceKinds.Uts, NamespaceKinds.Cgroup, NamespaceKinds.Time, NamespaceKinds.Pid];
            foreach (var kind in order)
            {
                string pidText = state.Pid.ToString(CultureInfo.InvariantCulture);
                if (NamespaceCalls.Inode(pidText, kind) == NamespaceCalls.Inode("self", kind))
                {
                    continue;
                }
                joins.Add(NamespaceCalls.Open($"/proc/{pidText}/ns/{NamespaceCalls.ProcName(kind)}"));
                joinsPid |= kind == NamespaceKinds.Pid;
                joinsUser |= kind == NamespaceKinds.User;
            }
            string setgroups = File.Exists($"/proc/{state.Pid}/setgroups") ? File.ReadAllText($"/proc/{state.Pid}/setgroups").Trim() : "allow";
            var capabilities = process.Capabilities ?? new SpecCapabilities();
            var request = new CloneExecRequest
            {
                Executable = executable,
                Arguments = args,
                Environment = environment,
                JoinNamespaces = joins,
                ForkIntoPidNamespace = joinsPid,
                WorkingDirectory = process.Cwd,
                Identity = (process.User.Uid, process.User.Gid),
                Groups = setgroups == "deny" ? null : process.User.AdditionalGids ?? [],
                Capabilities = (Security.Capabilities.Mask(capabilities.Bounding), Security.Capabilities.Mask(capabilities.Effective),
                    Security.Capabilities.Mask(capabilities.Permitted), Security.Capabilities.Mask(capabilities.Inheritable)),
                LastCapability = CapabilityCalls.LastCapability(),
                NoNewPrivileges = process.NoNewPrivileges == true,
                ControlGroupProcessFiles = controlGroupFiles,
                SeccompProgram = seccomp?.Program,
                SeccompFlags = seccomp?.Flags ?? 0,
                ControllingTerminal = terminal >= 0,
                Stdin = terminal >= 0 ? terminal : io.Stdin,
                Stdout = terminal >= 0 ? terminal : io.Stdout,
                Stderr = terminal >= 0 ? terminal : io.Stderr,
            };
            _ = joinsUser;
            int pid = ProcessCalls.CloneAndExecute(request);
            return new RuntimeProcess(pid);
        }
        catch (HostCallException exception)
        {
            throw new ContainerRuntimeException($"exec in container '{id}': {exception.Message}", exception);
        }
        catch (ContainerSecurityException exception)
        {
            throw new ContainerRuntimeException($"exec in container '{id}': {exception.Message}", exception);
        }
        finally
        {
            foreach (int fd in joins.Concat(controlGroupFiles))
            {
                ProcessCalls.Close(fd);
            }
            ProcessCalls.Close(terminal);
        }
    }

    /// <summary>The cgroup.procs files the exec'd process writes itself into: those of the init's groups, when the
    /// container has a control group of its own (a rootless one without delegation runs in its creator's).</summary>
    private static IReadOnlyList<string> ControlGroupFilesOf(StoredContainerState state)
    {
        try
        {
            Cgroups.ControlGroup.Open(state.CgroupsPath ?? ContainerSecurity.DefaultCgroupsPath(state.Id));
        }
        catch (Cgroups.ControlGroupException)
        {
            return [];
        }
        try
        {
            return Cgroups.ControlGroup.ProcessListFilesToJoin(state.Pid);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
        {
            throw new ContainerRuntimeException($"exec in container '{state.Id}': cannot read the control groups of its init (pid {state.Pid}): {exception.Message}", exception);
        }
    }

    /// <summary>The host pids of the processes in <paramref name="pid"/>'s pid namespace (other than itself), found by
    /// the /proc/N/ns/pid link; none when that is this process's own namespace.</summary>
    private static List<int> ProcessesInPidNamespaceOf(int pid)
    {
        var found = new List<int>();
        string? namespaceLink = new FileInfo($"/proc/{pid}/ns/pid").LinkTarget;
        if (namespaceLink is null || namespaceLink == new FileInfo("/proc/self/ns/pid").LinkTarget)
        {
            return found;
        }
        foreach (string directory in Directory.EnumerateDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(directory), NumberStyles.None, CultureInfo.InvariantCulture, out int other) && other != pid)
            {
                try
                {
                    if (new FileInfo(Path.Combine(directory, "ns", "pid")).LinkTarget == namespaceLink)
                    {
                        found.Add(other);
                    }
                }
                catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
                {
                    // Gone meanwhile, or another user's.
                }
            }
        }
        return found;
    }

    /// <summary>execvp(3)'s search in the container's root, seen from the host through /proc/PID/root.</summary>
    private static string ResolveInContainer(int pid, string name, IReadOnlyList<string> environment)
    {
        string root = $"/proc/{pid}/root";
        if (name.Contains('/'))
        {
            return name;
        }
        string path = environment.FirstOrDefault(e => e.StartsWith("PATH=", StringComparison.Ordinal))?[5..]
            ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        foreach (string directory in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(root + candidate))
            {
                return candidate;
            }
        }
        throw new ContainerRuntimeException($"exec: \"{name}\": executable file not found in $PATH");
    }

    /// <summary>A process started by <see cref="Exec"/>, this process's child.</summary>
    private sealed class RuntimeProcess(int pid) : IRuntimeProcess
    {
        private int? status;

        public int Pid { get; } = pid;

        public int WaitForExit() => status ??= ProcessCalls.WaitForExit(Pid);

        public void Dispose()
        {
        }
    }

    public void Kill(string id, int signal, bool all = false)
    {
        using var held = store.Lock(id);
        var state = store.Read(id);
        var status = store.StatusOf(state);
        if (status is not (ContainerStatus.Created or ContainerStatus.Running))
        {
            throw new ContainerRuntimeException($"cannot kill container '{id}': it is {Lower(status)} (kill needs created or running)");
        }
        try
        {
            ProcessCalls.Signal(state.Pid, signal);
            if (all)
            {
                // Every process of the container's pid namespace (runc's --all signals its cgroup's processes; the pid
                // namespace holds the same ones when the container has its own, which Nestor's runtime asks for).
                foreach (int pid in ProcessesInPidNamespaceOf(state.Pid))
                {
                    ProcessCalls.Signal(pid, signal);
                }
            }
        }
        catch (HostCallException exception)
        {
            throw new ContainerRuntimeException($"kill of container '{id}' (pid {state.Pid}): {exception.Message}", exception);
        }
    }

    public void Delete(string id, bool force = false)
    {
        using var held = store.Lock(id);
        var state = store.Read(id);
        var status = store.StatusOf(state);
        if (status != ContainerStatus.Stopped)
        {
            if (!force)
            {
                throw new ContainerRuntimeException($"cannot delete container '{id}': it is {Lower(status)}; kill it first or use delete --force");
            }
            ProcessCalls.Signal(state.Pid, ProcessCalls.KillSignal);
            long deadline = Environment.TickCount64 + 10_000;
            while (ProcessCalls.StartTime(state.Pid) == state.PidStartTime && Environment.TickCount64 < deadline)
            {
                // Reap it when it is this process's child; else its parent does and it leaves /proc.
                if (ProcessCalls.TryWaitForExit(state.Pid) is not null)
                {
                    break;
                }
                Thread.Sleep(5);
            }
        }
        else if (state.Pid > 0)
        {
            ProcessCalls.TryWaitForExit(state.Pid);
        }
        var spec = TryLoadSpec(state.Bundle);
        security.DeleteControlGroup(id, state.CgroupsPath);
        if (spec is not null)
        {
            HookRunner.RunReportingFailures("poststop", spec.Hooks?.Poststop, ToSpecState(state, ContainerStatus.Stopped));
        }
        File.Delete(Path.Combine(store.Directory(id), ContainerStateStore.StateFile));
        Directory.Delete(store.Directory(id), recursive: true);
    }

    public IReadOnlyList<string> List() => store.List();

    /// <summary>Waits for a container's init when it is this process's child (create and start in one process, as
    /// <c>nestor oci run</c> and the engine's monitor do); returns its status as a shell reports it.</summary>
    public int WaitForExit(string id)
    {
        var state = store.Read(id);
        int status = ProcessCalls.WaitForExit(state.Pid);
        return status >= 0 ? status : throw new ContainerRuntimeException($"container '{id}' (pid {state.Pid}) is not a child of this process: wait for it where it was created");
    }

    private static SpecState ToSpecState(StoredContainerState state, ContainerStatus status) => new()
    {
        Id = state.Id,
        Status = Lower(status),
        Pid = status == ContainerStatus.Stopped ? null : state.Pid,
        Bundle = state.Bundle,
        Annotations = state.Annotations,
    };

    private static string Lower(ContainerStatus status) => status.ToString().ToLowerInvariant();

    internal static RuntimeSpec LoadSpec(string bundle)
    {
        string path = Path.Combine(bundle, "config.json");
        try
        {
            var spec = RuntimeSpec.Load(path);
            if (spec.Process is null)
            {
                throw new ContainerRuntimeException($"{path} has no process (config.md: process is required to create a container)");
            }
            if (spec.Root is null || !Directory.Exists(Path.Combine(bundle, spec.Root.Path)))
            {
                throw new ContainerRuntimeException($"the root file system {Path.Combine(bundle, spec.Root?.Path ?? "(root.path missing)")} of {path} does not exist");
            }
            foreach (var space in spec.Linux?.Namespaces ?? [])
            {
                if (NamespaceCalls.FromSpecType(space.Type) is null)
                {
                    throw new ContainerRuntimeException($"{path}: unknown namespace type '{space.Type}' (pid, network, mount, ipc, uts, user, cgroup, time)");
                }
            }
            return spec;
        }
        catch (FileNotFoundException)
        {
            throw new ContainerRuntimeException($"the bundle {bundle} has no config.json (make one with nestor oci spec)");
        }
        catch (DirectoryNotFoundException)
        {
            throw new ContainerRuntimeException($"the bundle {bundle} does not exist");
        }
        catch (JsonException exception)
        {
            throw new ContainerRuntimeException($"{path} is malformed: {exception.Message}", exception);
        }
    }

    private static RuntimeSpec? TryLoadSpec(string bundle)
    {
        try
        {
            return RuntimeSpec.Load(Path.Combine(bundle, "config.json"));
        }
        catch (Exception exception) when (exception is IOException or JsonException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>clone3 flags for the namespaces to create, descriptors for those to join (the user namespace first),
    /// and whether a new user namespace is made. cgroup and time namespaces are created by the init instead (see
    /// <see cref="ContainerInit"/>).</summary>
    private static (NamespaceKinds Flags, List<int> Joins, bool NewUser) Namespaces(RuntimeSpec spec)
    {
        NamespaceKinds flags = NamespaceKinds.None;
        var joins = new List<int>();
        bool newUser = false;
        foreach (var space in (spec.Linux?.Namespaces ?? []).OrderBy(n => n.Type == "user" ? 0 : 1))
        {
            var kind = NamespaceCalls.FromSpecType(space.Type)!.Value;
            if (space.Path is { } path)
            {
                if (kind == NamespaceKinds.Pid)
                {
                    throw new ContainerRuntimeException($"joining a pid namespace by path ({path}) is not supported by Nestor's runtime yet");
                }
                try
                {
                    joins.Add(NamespaceCalls.Open(path));
                }
                catch (HostCallException exception)
                {
                    foreach (int fd in joins)
                    {
                        ProcessCalls.Close(fd);
                    }
                    throw new ContainerRuntimeException($"the {space.Type} namespace {path} cannot be joined: {exception.Message}", exception);
                }
            }
            else if (kind is not (NamespaceKinds.Cgroup or NamespaceKinds.Time))
            {
                flags |= kind;
                newUser |= kind == NamespaceKinds.User;
            }
        }
        return (flags, joins, newUser);
    }

    private static int ConnectConsole(string path)
    {
        try
        {
            return TerminalCalls.ConnectUnixSocket(path);
        }
        catch (HostCallException exception)
        {
            throw new ContainerRuntimeException($"--console-socket {path}: {exception.Message}", exception);
        }
    }

    /// <summary>The init is Nestor itself: it keeps this process's environment (DOTNET_ROOT and the like) so that the
    /// same runtime starts; the container's process gets process.env only.</summary>
    private static List<string> InitEnvironment()
    {
        var environment = new List<string>();
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            environment.Add($"{entry.Key}={entry.Value}");
        }
        // The init is short-lived and starts often: quick start-up matters more than steady-state code quality.
        environment.Add("DOTNET_TieredPGO=0");
        environment.Add("DOTNET_gcServer=0");
        // Under the JIT the runtime makes a debugger pipe pair and a diagnostics socket in /tmp at start-up and removes
        // them at exit; the init never exits (it ends in execve of the user's program), so they would be left behind,
        // two files and a socket per container. The init is not a process to attach a debugger to.
        environment.Add("DOTNET_EnableDiagnostics=0");
        return environment;
    }

    /// <summary>Reads lines from a pipe with a timeout.</summary>
    private sealed class LineReader(int fd)
    {
        private readonly List<byte> pending = [];

        public string? ReadLine(TimeSpan timeout, out bool timedOut)
        {
            timedOut = false;
            Span<byte> buffer = stackalloc byte[1024];
            while (true)
            {
                int newline = pending.IndexOf((byte)'\n');
                if (newline >= 0)
                {
                    string line = Encoding.UTF8.GetString([.. pending.Take(newline)]);
                    pending.RemoveRange(0, newline + 1);
                    return line;
                }
                if (!ProcessCalls.WaitReadable(fd, timeout))
                {
                    timedOut = true;
                    return null;
                }
                int read = ProcessCalls.ReadSome(fd, buffer);
                if (read == 0)
                {
                    return null;
                }
                pending.AddRange(buffer[..read].ToArray());
            }
        }
    }
}
