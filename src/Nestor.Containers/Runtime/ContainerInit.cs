using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>The container's init: a fresh Nestor process (executed by the clone3 child in the new namespaces, pid 1 of
/// its pid namespace) that sets the container up and finally becomes the user's program by execve(2). See
/// <see cref="InitProtocol"/> for how it talks to the runtime.</summary>
public static class ContainerInit
{
    /// <summary>Entry point for <c>nestor __container-init …</c>; returns an exit status only on failure.</summary>
    public static int Run(string[] args) => Run(args, new ContainerSecurity());

    internal static int Run(string[] args, IContainerSecurity security)
    {
        if (args.Length >= 7 && args[1] == InitProtocol.CreateMode)
        {
            return RunCreate(args[2], args[3], Descriptor(args[4]), Descriptor(args[5]), Descriptor(args[6]), security);
        }
        Console.Error.WriteLine("nestor __container-init is started by the runtime (nestor oci create), not by hand");
        return 125;
    }

    private static int Descriptor(string text) => int.Parse(text, CultureInfo.InvariantCulture);

    private static int RunCreate(string stateDirectory, string bundle, int sync, int report, int console, IContainerSecurity security)
    {
        int fifo = -1;
        RuntimeSpec spec;
        SpecProcess process;
        int terminalSlave = -1;
        try
        {
            spec = RuntimeSpec.Load(Path.Combine(bundle, "config.json"));
            process = spec.Process ?? throw new ContainerRuntimeException("config.json has no process");
            var kinds = new HashSet<string>((spec.Linux?.Namespaces ?? []).Where(n => n.Path is null).Select(n => n.Type));
            bool userNamespace = (spec.Linux?.Namespaces ?? []).Any(n => n.Type == "user");

            // Created here rather than at clone3: a cgroup namespace's root is its creator's cgroup at that moment, and
            // only now is the init in the container's cgroup (cgroup_namespaces(7)). Neither kind implies CLONE_FS,
            // so unshare works in this multithreaded process.
            // The container's cgroup directories are read before the cgroup namespace hides them (see
            // RootFileSystem.CaptureControlGroups).
            var controlGroups = RootFileSystem.CaptureControlGroups();
            if (kinds.Contains("cgroup"))
            {
                RootFileSystem.Step("unshare of the cgroup namespace", () => NamespaceCalls.Unshare(NamespaceKinds.Cgroup));
            }
            if (kinds.Contains("time"))
            {
                CreateTimeNamespace(spec.Linux?.TimeOffsets);
            }
            if (spec.Hostname is { } hostname)
            {
                RootFileSystem.Step($"sethostname to {hostname}", () => NamespaceCalls.SetHostname(hostname));
            }
            if (spec.Domainname is { } domainname)
            {
                RootFileSystem.Step($"setdomainname to {domainname}", () => NamespaceCalls.SetDomainname(domainname));
            }
            if (!kinds.Contains("mount"))
            {
                throw new ContainerRuntimeException("Nestor's runtime needs a mount namespace (add {\"type\": \"mount\"} to linux.namespaces): pivot_root must not change the host's root");
            }
            string rootfs = Path.GetFullPath(Path.Combine(bundle, spec.Root?.Path ?? "rootfs"));
            var root = new RootFileSystem(rootfs, userNamespace, controlGroups);
            root.PrepareRoot(spec.Linux?.RootfsPropagation, spec.Annotations?.GetValueOrDefault(RuntimeAnnotations.RootOverlay));
            root.MountAll(spec.Mounts);
            root.CreateDevices(spec.Linux?.Devices);
            root.CreateDeviceLinks();

            WriteLine(report, InitProtocol.HooksLine);
            WaitFor(sync, InitProtocol.ContinueByte, "the runtime's createRuntime hooks");
            HookRunner.Run("createContainer", spec.Hooks?.CreateContainer, StateFor(spec, stateDirectory, bundle, "created"));

            // The FIFO lives in the runtime's state directory, which pivot_root takes out of reach: an O_PATH
            // descriptor opened now is reopened for writing through /proc/self/fd afterwards (runc's exec.fifo).
            int fifoPath = MountCalls.Open(Path.Combine(stateDirectory, ContainerStateStore.ExecFifo), MountCalls.OpenFlags.PathOnly);
            LoadEverythingNeededAfterPivot();
            root.PivotRoot();
            RootFileSystem.MaskPaths(spec.Linux?.MaskedPaths);
            RootFileSystem.MakeReadOnly(spec.Linux?.ReadonlyPaths);
            RootFileSystem.WriteSysctls(spec.Linux?.Sysctl);
            if (process.Terminal == true)
            {
                if (console < 0)
                {
                    throw new ContainerRuntimeException("process.terminal is true but no --console-socket was given");
                }
                terminalSlave = TerminalCalls.CreateAndSendMaster(console, process.ConsoleSize?.Height ?? 0, process.ConsoleSize?.Width ?? 0);
            }
            if (spec.Root?.Readonly == true)
            {
                RootFileSystem.MakeRootReadOnly();
            }
            WriteLine(report, InitProtocol.CreatedLine);
            ProcessCalls.Close(report);
            report = -1;

            // Blocks until start opens the FIFO for reading.
            fifo = MountCalls.Open($"/proc/self/fd/{fifoPath}", MountCalls.OpenFlags.WriteOnly);
            ProcessCalls.Close(fifoPath);
            ProcessCalls.WriteAll(fifo, [InitProtocol.StartedByte]);
        }
        catch (Exception exception) when (report >= 0)
        {
            WriteLine(report, InitProtocol.ErrorPrefix + Describe(exception));
            return 1;
        }
        catch (Exception exception)
        {
            Console.Error.WriteLine($"nestor init: {Describe(exception)}");
            return 1;
        }

        try
        {
            HookRunner.Run("startContainer", spec.Hooks?.StartContainer, StateFor(spec, stateDirectory, bundle, "running"));
            ExecuteUserProgram(process, security, spec.Linux?.Seccomp, terminalSlave);
            return 1;
        }
        catch (Exception exception)
        {
            byte[] text = Encoding.UTF8.GetBytes(Describe(exception));
            try
            {
                ProcessCalls.WriteAll(fifo, text);
            }
            catch (HostCallException)
            {
                Console.Error.WriteLine($"nestor init: {Describe(exception)}");
            }
            return 1;
        }
    }

    /// <summary>The runtime-spec's steps 6 and 7 of "Lifecycle" on this one thread: the credentials, capabilities,
    /// no_new_privs and seccomp filter are per-thread kernel state, and execve(2) from this thread keeps them for
    /// the whole new program (the runtime's other threads end with the exec).</summary>
    private static void ExecuteUserProgram(SpecProcess process, IContainerSecurity security, SpecSeccomp? seccomp, int terminalSlave)
    {
        var args = process.Args is { Count: > 0 } ? process.Args : throw new ContainerRuntimeException("process.args is empty (config.md: args is required and has at least one entry)");
        var environment = process.Env ?? [];
        string executable = ResolveExecutable(args[0], environment);
        if (terminalSlave >= 0)
        {
            TerminalCalls.MakeControllingTerminal(terminalSlave);
        }
        security.ApplyBeforeIdentity(process);
        if (process.User.Umask is { } umask)
        {
            MountCalls.SetUmask(umask);
        }
        // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN in the effective set (seccomp(2)), so it goes
        // before the switch to the process's user: setresuid(2) to a non-zero uid clears the effective capabilities
        // even with PR_SET_KEEPCAPS (capabilities(7), "Effect of user ID changes on capabilities"), and then the
        // kernel refuses the filter. The filter must then allow what follows (setgroups, setresuid, capset, prctl,
        // chdir, execve), as Docker's default profile does. With no_new_privs it is loaded as late as possible, so
        // that it sees only the user's program (runc's order).
        if (process.NoNewPrivileges != true)
        {
            security.LoadSeccomp(seccomp);
        }
        var groups = process.User.AdditionalGids;
        bool setgroupsAllowed = !File.Exists("/proc/self/setgroups") || File.ReadAllText("/proc/self/setgroups").Trim() != "deny";
        RootFileSystem.Step($"setting user {process.User.Uid}:{process.User.Gid}", () =>
            ProcessCalls.SetThreadCredentials(process.User.Uid, process.User.Gid, setgroupsAllowed ? groups ?? [] : null));
        RootFileSystem.Step($"chdir to the process's cwd {process.Cwd}", () => MountCalls.ChangeDirectory(process.Cwd));
        security.ApplyCapabilities(process);
        if (process.NoNewPrivileges == true)
        {
            RootFileSystem.Step("prctl(PR_SET_NO_NEW_PRIVS)", security.SetNoNewPrivileges);
            security.LoadSeccomp(seccomp);
        }
        RootFileSystem.Step($"execve of {executable}", () => ProcessCalls.Execute(executable, args, environment));
    }

    /// <summary>execvp(3)'s search, in the container's root and with the container's PATH.</summary>
    private static string ResolveExecutable(string name, IReadOnlyList<string> environment)
    {
        if (name.Contains('/'))
        {
            return File.Exists(name) ? name : throw new ContainerRuntimeException($"exec: {name}: no such file or directory");
        }
        string path = environment.FirstOrDefault(e => e.StartsWith("PATH=", StringComparison.Ordinal))?[5..]
            ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        foreach (string directory in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new ContainerRuntimeException($"exec: \"{name}\": executable file not found in $PATH");
    }

    /// <summary>unshare(CLONE_NEWTIME) makes a time namespace for this process's children and its next execve (the
    /// kernel moves an exec'ing task into time_for_children since Linux 5.17, commit 133e2d3e81de "fs/exec: switch
    /// timens when a task gets a new mm"); its offsets must be written before any task enters it, so before this
    /// process starts a hook (time_namespaces(7)).</summary>
    private static void CreateTimeNamespace(Dictionary<string, SpecTimeOffset>? offsets)
    {
        RootFileSystem.Step("unshare of the time namespace", () => NamespaceCalls.Unshare(NamespaceKinds.Time));
        if (offsets is null || offsets.Count == 0)
        {
            return;
        }
        var text = new StringBuilder();
        foreach (var (clock, offset) in offsets)
        {
            text.Append(CultureInfo.InvariantCulture, $"{clock} {offset.Secs} {offset.Nanosecs}\n");
        }
        try
        {
            File.WriteAllText("/proc/self/timens_offsets", text.ToString());
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
        {
            throw new ContainerRuntimeException($"writing the time namespace's offsets ({text.ToString().Trim()}): {exception.Message}", exception);
        }
    }

    /// <summary>After pivot_root the host's files are gone, so every assembly and native library the rest of the init
    /// could need is loaded now (the JIT loads assemblies lazily, on first use of a type). NativeAOT has them all in
    /// its one binary.</summary>
    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "Only loads what the build already references.")]
    private static void LoadEverythingNeededAfterPivot()
    {
        if (RuntimeFeature.IsDynamicCodeSupported)
        {
            var seen = new HashSet<string>();
            var pending = new Stack<Assembly>([typeof(ContainerInit).Assembly]);
            while (pending.Count > 0)
            {
                foreach (var name in pending.Pop().GetReferencedAssemblies())
                {
                    if (name.Name is { } simple && seen.Add(simple))
                    {
                        try
                        {
                            pending.Push(Assembly.Load(name));
                        }
                        catch (FileNotFoundException)
                        {
                        }
                    }
                }
            }
        }
        // libseccomp (the security part's filters) is opened by name on first use.
        NativeLibrary.TryLoad("libseccomp.so.2", out _);
        _ = Encoding.UTF8.GetBytes("x");
        _ = new System.Diagnostics.ProcessStartInfo();
    }

    private static SpecState StateFor(RuntimeSpec spec, string stateDirectory, string bundle, string status) => new()
    {
        Id = Path.GetFileName(stateDirectory),
        Status = status,
        Pid = Environment.ProcessId,
        Bundle = bundle,
        Annotations = spec.Annotations,
    };

    private static void WriteLine(int fd, string line) => ProcessCalls.WriteAll(fd, Encoding.UTF8.GetBytes(line.Replace('\n', ' ') + "\n"));

    private static void WaitFor(int fd, byte expected, string what)
    {
        Span<byte> buffer = stackalloc byte[1];
        int read = ProcessCalls.ReadSome(fd, buffer);
        if (read != 1 || buffer[0] != expected)
        {
            throw new ContainerRuntimeException($"the runtime went away while the init waited for {what}");
        }
    }

    internal static string Describe(Exception exception) => exception switch
    {
        ContainerRuntimeException or HostCallException or Security.ContainerSecurityException => exception.Message,
        System.Text.Json.JsonException => $"config.json is malformed: {exception.Message}",
        _ => $"{exception.GetType().Name}: {exception.Message}",
    };
}
