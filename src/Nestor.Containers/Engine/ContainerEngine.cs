using System.Formats.Tar;
using System.Globalization;
using System.Net.Sockets;
using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Images;
using Nestor.Containers.Network;
using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>The daemonless container engine behind <c>nestor container</c>: every operation is a command that reads
/// and writes the container records under their locks, and a started container belongs to its own monitor process
/// (<see cref="ContainerMonitor"/>), not to a daemon. Errors of the engine itself are
/// <see cref="ContainerEngineException"/>s (Docker's exit status 125).</summary>
public sealed class ContainerEngine
{
    private readonly Func<IImageStore> images;
    private IImageStore? imageStore;

    /// <param name="paths">Where state and data go.</param>
    /// <param name="images">The image store, made on first use (commands such as <c>ps</c> never need it).</param>
    /// <param name="runtimes">The OCI runtimes.</param>
    /// <param name="network">The bridge network, or null where it is not available.</param>
    /// <param name="monitorCommand">The command that runs <c>nestor</c> (its executable, and the assembly when run
    /// through <c>dotnet</c>); the monitor is that command with <c>__container-monitor</c>.</param>
    public ContainerEngine(ContainerPaths paths, Func<IImageStore> images, ContainerRuntimes runtimes,
        IContainerNetwork? network, IReadOnlyList<string> monitorCommand)
    {
        Store = new ContainerStore(paths);
        this.images = images;
        Runtimes = runtimes;
        Network = network;
        MonitorCommand = monitorCommand;
    }

    public ContainerStore Store { get; }
    public ContainerRuntimes Runtimes { get; }
    public IContainerNetwork? Network { get; }
    public IReadOnlyList<string> MonitorCommand { get; }
    public ContainerPaths Paths => Store.Paths;
    public IImageStore Images => imageStore ??= images();

    /// <summary><c>container create</c>: a record, a name and the root's directories; nothing runs.</summary>
    public ContainerRecord Create(CreateOptions options)
    {
        var runtimeName = options.Runtime ?? Runtimes.Default;
        Runtimes.Create(runtimeName); // an unknown or missing runtime is refused now, not at start
        StoredImage image;
        try
        {
            image = Images.Resolve(options.Image);
        }
        catch (ImageNotFoundException exception)
        {
            throw new ContainerEngineException($"unable to find image '{options.Image}': {exception.Message}", exception);
        }
        return Create(options, image);
    }

    /// <summary>As <see cref="Create(CreateOptions)"/> with the image given rather than named: <c>nestor build</c>
    /// runs each RUN on its stage's state so far, an image that no name in the store points at yet
    /// (<see cref="CreateOptions.Image"/> is then only what <c>ps</c> shows).</summary>
    public ContainerRecord Create(CreateOptions options, StoredImage image)
    {
        var runtimeName = options.Runtime ?? Runtimes.Default;
        Runtimes.Create(runtimeName);
        var ports = options.Ports.Select(CreateOptions.ParsePort).ToList();
        // Rootless, published ports need slirp4netns (bridge): -p without --network asks for it, as in Podman.
        var network = ParseNetwork(options.Network ?? (ContainerPaths.Rootless && ports.Count > 0 ? "bridge" : null));
        foreach (string bind in options.Volumes)
        {
            BundleBuilder.ParseBind(bind);
        }
        var host = new ContainerHostConfiguration
        {
            Runtime = runtimeName,
            AutoRemove = options.AutoRemove,
            Binds = [.. options.Volumes],
            Tmpfs = [.. options.Tmpfs.Select(BundleBuilder.CheckTmpfs)],
            PortBindings = ports,
            NetworkMode = network,
            Memory = options.Memory is null ? 0 : CreateOptions.ParseMemory(options.Memory),
            NanoCpus = options.Cpus is { } cpus ? (cpus > 0 ? (long)(cpus * 1e9) : throw new ContainerEngineException($"bad --cpus {cpus}: give a positive number of CPUs, e.g. 0.5")) : 0,
            PidsLimit = options.PidsLimit ?? 0,
            CapAdd = [.. options.CapAdd],
            CapDrop = [.. options.CapDrop],
            Privileged = options.Privileged,
            ReadonlyRootfs = options.ReadOnly,
        };
        BundleBuilder.CheckCapabilities(host); // refuse unknown capability names now
        if (ContainerPaths.Rootless)
        {
            CheckRootless(host);
        }
        var imageConfig = image.Config;
        var environment = new List<string>(imageConfig.Env ?? []);
        foreach (string file in options.EnvFiles)
        {
            if (!File.Exists(file))
            {
                throw new ContainerEngineException($"--env-file {file}: no such file");
            }
            foreach (string line in File.ReadLines(file))
            {
                string trimmed = line.Trim();
                if (trimmed.Length > 0 && !trimmed.StartsWith('#'))
                {
                    SetVariable(environment, trimmed);
                }
            }
        }
        foreach (string variable in options.Env)
        {
            SetVariable(environment, variable);
        }
        List<string> entrypoint = options.Entrypoint is null ? [.. imageConfig.Entrypoint ?? []]
            : options.Entrypoint.Length == 0 ? [] : [options.Entrypoint];
        // Docker: a given --entrypoint drops the image's Cmd too; given words replace the Cmd.
        List<string> command = options.Command.Count > 0 ? [.. options.Command]
            : options.Entrypoint is null ? [.. imageConfig.Cmd ?? []] : [];
        if (entrypoint.Count + command.Count == 0)
        {
            throw new ContainerEngineException($"no command specified: the image '{options.Image}' has neither Entrypoint nor Cmd; give one after the image name");
        }
        string id = ContainerNames.NewId();
        ContainerRecord record;
        using (Store.LockNames())
        {
            var taken = Store.All().Select(existing => existing.Name).ToHashSet();
            string name;
            if (options.Name is { } given)
            {
                if (!ContainerNames.IsValid(given))
                {
                    throw new ContainerEngineException($"invalid container name '{given}': only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed");
                }
                if (taken.Contains(given))
                {
                    string owner = Store.All().First(existing => existing.Name == given).Id;
                    throw new ContainerEngineException($"the container name \"/{given}\" is already in use by container \"{owner}\". You have to remove (or rename) that container to be able to reuse that name.");
                }
                name = given;
            }
            else
            {
                name = ContainerNames.NewName(taken);
            }
            string data = Paths.ContainerData(id);
            Directory.CreateDirectory(data);
            var root = Images.CreateRootFileSystem(image, data);
            record = new ContainerRecord
            {
                Id = id,
                Name = name,
                Created = DateTimeOffset.UtcNow,
                Image = options.Image,
                ImageId = image.Id,
                Config = new ContainerConfiguration
                {
                    Hostname = options.Hostname ?? id[..12],
                    User = options.User ?? imageConfig.User ?? "",
                    Env = environment,
                    Cmd = command,
                    Entrypoint = entrypoint,
                    WorkingDir = options.WorkingDir ?? imageConfig.WorkingDir ?? "",
                    Tty = options.Tty,
                    OpenStdin = options.Interactive,
                    StdinOnce = options.StdinOnce,
                    StopSignal = imageConfig.StopSignal ?? "SIGTERM",
                    Labels = imageConfig.Labels is null ? [] : new(imageConfig.Labels),
                    Image = options.Image,
                },
                HostConfig = host,
                RootFileSystem = new ContainerRootLayers
                {
                    LowerDirectories = [.. root.LowerDirectories],
                    LowerDiffIds = [.. image.LayerDiffIds],
                    UpperDirectory = root.UpperDirectory,
                    WorkDirectory = root.WorkDirectory,
                    MergedDirectory = root.MergedDirectory,
                },
            };
            Store.Save(record);
        }
        return record;
    }

    private static void SetVariable(List<string> environment, string variable)
    {
        string assignment = variable.Contains('=') ? variable
            : Environment.GetEnvironmentVariable(variable) is { } value ? $"{variable}={value}" : "";
        if (assignment.Length == 0)
        {
            return; // Docker: -e NAME with NAME unset in the caller's environment sets nothing.
        }
        string key = assignment[..(assignment.IndexOf('=') + 1)];
        environment.RemoveAll(existing => existing.StartsWith(key, StringComparison.Ordinal));
        environment.Add(assignment);
    }

    /// <summary>Rootless refusals made at create (status 125) rather than when the monitor starts it: an unprivileged
    /// user has no cgroup of its own to delegate here (no systemd, cgroups(7) delegation), so limits cannot be set,
    /// and only Nestor's runtime mounts the overlay root inside the container.</summary>
    private static void CheckRootless(ContainerHostConfiguration host)
    {
        var limits = new List<string>();
        if (host.Memory > 0)
        {
            limits.Add("--memory");
        }
        if (host.NanoCpus > 0)
        {
            limits.Add("--cpus");
        }
        if (host.PidsLimit > 0)
        {
            limits.Add("--pids-limit");
        }
        if (limits.Count > 0)
        {
            throw new ContainerEngineException($"{string.Join(", ", limits)}: rootless containers get no cgroup limits (an unprivileged user has no delegated cgroup here); drop the option, or run as root for limits");
        }
        if (host.Runtime != "nestor")
        {
            throw new ContainerEngineException($"rootless containers need Nestor's runtime: {host.Runtime} does not honour {Runtime.RuntimeAnnotations.RootOverlay} (the overlay root mounted inside the container); drop --runtime {host.Runtime} or run as root");
        }
    }

    /// <summary>Docker's network modes; the default is <c>bridge</c> as in Docker (for root; rootless containers
    /// default to <c>none</c> here).</summary>
    public static NetworkMode ParseNetwork(string? text) => (text ?? (ContainerPaths.Rootless ? "none" : "bridge")) switch
    {
        "none" => NetworkMode.None,
        "bridge" or "default" => NetworkMode.Bridge,
        "host" => NetworkMode.Host,
        _ => throw new ContainerEngineException($"unknown network '{text}': choose none, bridge or host"),
    };

    /// <summary><c>container start</c>: starts the container's monitor and waits until the container runs (or failed
    /// to start: a <see cref="ContainerStartException"/> with Docker's status). With <paramref name="attach"/> the
    /// monitor waits for a client before it starts the process: <see cref="MonitorStart.Attach"/> is that client.</summary>
    public MonitorStart Start(string reference, bool attach = false)
    {
        var record = Refresh(Store.Resolve(reference));
        if (record.State.Running)
        {
            return new MonitorStart(this, record, -1, alreadyRunning: true);
        }
        var (read, write) = ProcessCalls.CreatePipe();
        int nullFd = MountCalls.Open("/dev/null", MountCalls.OpenFlags.ReadWrite);
        try
        {
            var arguments = new List<string>(MonitorCommand)
            {
                "__container-monitor", record.Id, "--root", Paths.DataRoot, "--state", Paths.StateRoot, "--sync-fd", "3",
            };
            if (attach)
            {
                arguments.Add("--attach");
            }
            // No debugger pipes and diagnostics socket in /tmp for the monitor (under the JIT): a monitor that is
            // killed would leave them behind (see NestorRuntime.InitEnvironment).
            var environment = SpawnCalls.CurrentEnvironment();
            environment.Add("DOTNET_EnableDiagnostics=0");
            SpawnCalls.Spawn(MonitorCommand[0], arguments, environment,
                [(0, nullFd), (1, nullFd), (2, nullFd), (3, write)], newSession: true);
        }
        finally
        {
            ProcessCalls.Close(write);
            ProcessCalls.Close(nullFd);
        }
        var start = new MonitorStart(this, record, read, alreadyRunning: false);
        start.WaitReady();
        if (!attach)
        {
            start.WaitStarted();
        }
        return start;
    }

    /// <summary>Brings a record up to date with the world: a container whose monitor died (its lock is free) is
    /// stopped if its process is gone too, with exit status 255 (unknown, as Docker records it) unless the monitor had
    /// recorded one, and what it held is released; after a reboot nothing of it runs.</summary>
    public ContainerRecord Refresh(ContainerRecord record)
    {
        if (record.State.Status != ContainerState.Running)
        {
            return record;
        }
        if (FileLock.IsHeld(Paths.MonitorLock(record.Id)))
        {
            return record;
        }
        using var hold = Store.LockContainer(record.Id);
        var current = Store.TryLoad(record.Id);
        if (current is null || current.State.Status != ContainerState.Running || FileLock.IsHeld(Paths.MonitorLock(record.Id)))
        {
            return current ?? record;
        }
        bool sameBoot = current.State.BootId == ProcessFacts.BootId();
        if (sameBoot && ProcessFacts.IsAlive(current.State.Pid, current.State.PidStartTime))
        {
            return current; // still running, without its monitor: stop and kill still reach it through the runtime
        }
        ContainerCleanup.Release(current, Runtimes.Create(current.HostConfig.Runtime), Network);
        current.State.Status = ContainerState.Exited;
        current.State.Running = false;
        current.State.Pid = 0;
        current.State.ExitCode = 255;
        current.State.Error = "the container's monitor ended before the container: its exit status is unknown";
        current.State.FinishedAt = DateTimeOffset.UtcNow;
        Store.Save(current);
        return current;
    }

    /// <summary>Every container (<c>ps -a</c>), brought up to date.</summary>
    public List<ContainerRecord> List() => [.. Store.All().Select(r => ContainerFreezer.WithPauseState(Paths, Refresh(r)))];

    public ContainerRecord Inspect(string reference) => ContainerFreezer.WithPauseState(Paths, Refresh(Store.Resolve(reference)));

    /// <summary><c>container pause</c>: freezes every process of the container (cgroup freezer).</summary>
    public void Pause(string reference)
    {
        var record = Inspect(reference);
        using (Store.LockContainer(record.Id))
        {
            ContainerFreezer.Pause(Paths, record);
        }
    }

    /// <summary><c>container unpause</c>.</summary>
    public void Unpause(string reference)
    {
        var record = Inspect(reference);
        using (Store.LockContainer(record.Id))
        {
            ContainerFreezer.Unpause(Paths, record);
        }
    }

    /// <summary><c>container kill</c>: a signal to the container's first process.</summary>
    public void Kill(string reference, int signal)
    {
        var record = Inspect(reference);
        if (!record.State.Running)
        {
            throw new ContainerEngineException($"cannot kill container {record.Name}: it is not running");
        }
        Runtimes.Create(record.HostConfig.Runtime).Kill(record.Id, signal, all: signal == 9);
        if (signal == 9 || signal == Signals.Parse(record.Config.StopSignal))
        {
            ContainerFreezer.ThawToDeliver(Paths, record);
        }
    }

    /// <summary><c>container stop</c>: the image's stop signal (SIGTERM), then SIGKILL after
    /// <paramref name="timeoutSeconds"/>; returns once the container's monitor has recorded its end.</summary>
    public ContainerRecord Stop(string reference, int timeoutSeconds = 10)
    {
        var record = Inspect(reference);
        if (!record.State.Running)
        {
            return record;
        }
        var runtime = Runtimes.Create(record.HostConfig.Runtime);
        TryKill(runtime, record.Id, Signals.Parse(record.Config.StopSignal), all: false);
        ContainerFreezer.ThawToDeliver(Paths, record);
        if (WaitForExit(record.Id, TimeSpan.FromSeconds(timeoutSeconds)) is { } stopped)
        {
            return stopped;
        }
        TryKill(runtime, record.Id, 9, all: true);
        return WaitForExit(record.Id, TimeSpan.FromSeconds(30))
            ?? throw new ContainerEngineException($"container {record.Name} did not stop after SIGKILL");
    }

    private static void TryKill(IContainerRuntime runtime, string id, int signal, bool all)
    {
        try
        {
            runtime.Kill(id, signal, all);
        }
        catch (ContainerRuntimeException)
        {
            // It ended between the check and the signal.
        }
    }

    /// <summary>Waits until the container is no longer running; null after <paramref name="timeout"/>. A container
    /// removed meanwhile (<c>--rm</c>) counts as ended.</summary>
    public ContainerRecord? WaitForExit(string id, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var record = Store.TryLoad(id);
            if (record is null)
            {
                return new ContainerRecord { Id = id, State = new ContainerRunState { Status = ContainerState.Exited } };
            }
            record = Refresh(record);
            if (!record.State.Running && !FileLock.IsHeld(Paths.MonitorLock(id)))
            {
                return record;
            }
            if (DateTime.UtcNow >= deadline)
            {
                return null;
            }
            Thread.Sleep(20);
        }
    }

    /// <summary><c>container wait</c>: the exit status once the container ends.</summary>
    public int Wait(string reference)
    {
        var record = Inspect(reference);
        return WaitForExit(record.Id, TimeSpan.FromDays(365))!.State.ExitCode;
    }

    /// <summary><c>container restart</c>.</summary>
    public void Restart(string reference, int timeoutSeconds = 10)
    {
        var record = Stop(reference, timeoutSeconds);
        Start(record.Id).Dispose();
    }

    /// <summary><c>container rm</c>: a stopped container's record, root, log and bundle; with
    /// <paramref name="force"/> a running one is killed first.</summary>
    public void Remove(string reference, bool force)
    {
        var record = Inspect(reference);
        if (record.State.Running)
        {
            if (!force)
            {
                throw new ContainerEngineException($"cannot remove container {record.Name}: it is running. Stop it first, or force the removal with rm -f");
            }
            TryKill(Runtimes.Create(record.HostConfig.Runtime), record.Id, 9, all: true);
            ContainerFreezer.ThawToDeliver(Paths, record);
            WaitForExit(record.Id, TimeSpan.FromSeconds(30));
        }
        using var names = Store.LockNames();
        using (Store.LockContainer(record.Id))
        {
            var current = Store.TryLoad(record.Id);
            if (current is null)
            {
                return; // --rm's monitor removed it meanwhile
            }
            ContainerCleanup.Release(current, Runtimes.Create(current.HostConfig.Runtime), Network,
                Runtimes.Create(current.HostConfig.Runtime).List().Contains(current.Id));
        }
        Store.Delete(record.Id);
    }

    /// <summary><c>container exec</c>: another process in a running container, with the first process's
    /// capabilities and security settings, and the given command, environment, directory and user.</summary>
    public IRuntimeProcess Exec(string reference, ExecOptions options, RuntimeIo io)
    {
        var record = Inspect(reference);
        if (!record.State.Running)
        {
            throw new ContainerEngineException($"container {record.Name} is not running (start it first: nestor container start {record.Name})");
        }
        if (record.State.Paused)
        {
            throw new ContainerEngineException($"Container {record.Id} is paused, unpause the container before exec");
        }
        if (options.Command.Count == 0)
        {
            throw new ContainerEngineException("exec needs a command");
        }
        var spec = RuntimeSpec.Load(Path.Combine(Paths.Bundle(record.Id), "config.json"));
        var process = spec.Process ?? new SpecProcess();
        process.Args = [.. options.Command];
        process.Terminal = options.Tty && io.ConsoleSocket is not null ? true : null;
        process.ConsoleSize = process.Terminal == true && ExecTerminal.ClientSize() is { } size ? new SpecConsoleSize { Height = size.Rows, Width = size.Columns } : null;
        var environment = new List<string>(process.Env ?? []);
        foreach (string variable in options.Env)
        {
            SetVariable(environment, variable);
        }
        process.Env = environment;
        if (options.WorkingDir is not null)
        {
            process.Cwd = options.WorkingDir;
        }
        if (options.User is not null)
        {
            process.User = BundleBuilder.ResolveUser(options.User, record.RootFileSystem.MergedDirectory);
        }
        return Runtimes.Create(record.HostConfig.Runtime).Exec(record.Id, process, io);
    }

    /// <summary><c>container exec</c> with this process's own standard streams (stdin only with -i; none with
    /// <paramref name="detach"/>; a pseudo-terminal in the container with <see cref="ExecOptions.Tty"/>); returns the
    /// process's exit status, or 0 at once when detached.</summary>
    public int RunExec(string reference, ExecOptions options, bool detach)
    {
        int nullFd = MountCalls.Open("/dev/null", MountCalls.OpenFlags.ReadWrite);
        try
        {
            if (options.Tty && !detach)
            {
                using var terminal = ExecTerminal.Listen(Path.Combine(Paths.StateRoot, "s"));
                using var withTerminal = Exec(reference, options, new RuntimeIo(nullFd, nullFd, 2, terminal.SocketPath));
                return terminal.Relay(withTerminal, options.Interactive);
            }
            var io = detach ? new RuntimeIo(nullFd, nullFd, nullFd) : new RuntimeIo(options.Interactive ? 0 : nullFd, 1, 2);
            var process = Exec(reference, options, io);
            if (detach)
            {
                return 0;
            }
            using (process)
            {
                return process.WaitForExit();
            }
        }
        finally
        {
            ProcessCalls.Close(nullFd);
        }
    }

    /// <summary><c>container logs</c>: the entries of the json-file log, the last <paramref name="tail"/> if given.</summary>
    public List<LogEntry> Logs(string reference, int? tail = null)
    {
        var record = Inspect(reference);
        var entries = ContainerLogReader.Read(Paths.LogFile(record.Id));
        return tail is { } count && count < entries.Count ? entries[^count..] : entries;
    }

    /// <summary><c>container top</c>: the processes in the container's pid namespace, with their host pids.</summary>
    public List<(int Pid, int ParentPid, uint Uid, string Command)> Top(string reference)
    {
        var record = Inspect(reference);
        if (!record.State.Running)
        {
            throw new ContainerEngineException($"container {record.Name} is not running");
        }
        string? target = NamespaceLink(record.State.Pid, "pid");
        var processes = new List<(int, int, uint, string)>();
        foreach (string directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), CultureInfo.InvariantCulture, out int pid) || NamespaceLink(pid, "pid") != target)
            {
                continue;
            }
            try
            {
                string stat = File.ReadAllText($"/proc/{pid}/stat");
                string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                int parent = int.Parse(fields[1], CultureInfo.InvariantCulture);
                string command = File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Trim();
                uint uid = File.ReadLines($"/proc/{pid}/status").Where(line => line.StartsWith("Uid:", StringComparison.Ordinal))
                    .Select(line => uint.Parse(line.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture)).FirstOrDefault();
                processes.Add((pid, parent, uid, command.Length > 0 ? command : stat[(stat.IndexOf('(') + 1)..stat.LastIndexOf(')')]));
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
            {
                // It ended while being listed.
            }
        }
        return processes;
    }

    /// <summary>The target of /proc/PID/ns/NAME (<c>pid:[4026531836]</c>), null if unreadable.</summary>
    public static string? NamespaceLink(int pid, string name)
    {
        try
        {
            return new FileInfo($"/proc/{pid}/ns/{name}").LinkTarget;
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary><c>container commit</c>: the container's changes (its overlay's upper directory as a layer, read
    /// directly, never mounted) on its image, with its config, tagged <paramref name="reference"/> if given.</summary>
    public StoredImage Commit(string container, string? reference, string? message = null) =>
        Commit(container, new CommitOptions { Reference = reference, Message = message });

    /// <summary><c>container commit [-m] [-a] [--change …] CONTAINER [REPOSITORY[:TAG]]</c>: as Docker's, the new
    /// image's config is the container's (its command, environment, user, directory, labels) with the image's exposed
    /// ports and volumes, then the <c>--change</c> instructions; the history entry's <c>created_by</c> is the
    /// container's command and its comment the message.</summary>
    public StoredImage Commit(string container, CommitOptions options)
    {
        var record = Inspect(container);
        var parent = Images.Resolve(record.ImageId);
        var config = new ImageConfig
        {
            User = record.Config.User.Length > 0 ? record.Config.User : null,
            Env = [.. record.Config.Env],
            Entrypoint = record.Config.Entrypoint.Count > 0 ? [.. record.Config.Entrypoint] : null,
            Cmd = record.Config.Cmd.Count > 0 ? [.. record.Config.Cmd] : null,
            WorkingDir = record.Config.WorkingDir.Length > 0 ? record.Config.WorkingDir : null,
            Labels = record.Config.Labels.Count > 0 ? new(record.Config.Labels) : null,
            StopSignal = record.Config.StopSignal,
            ExposedPorts = parent.Config.ExposedPorts is null ? null : new(parent.Config.ExposedPorts),
            Volumes = parent.Config.Volumes is null ? null : new(parent.Config.Volumes),
        };
        // Checked before the layer is written: a bad --change costs nothing.
        CommitChanges.Apply(config, options.Changes);
        string createdBy = string.Join(' ', record.Config.Entrypoint.Concat(record.Config.Cmd));
        // Docker's commit --pause default: the container's files do not change while they are copied.
        using var paused = ContainerFreezer.PausedWhile(Paths, record);
        if (ContainerPaths.Rootless)
        {
            // Files of the container's other users may be unreadable here: read in a user namespace that maps them.
            string layer = Path.Combine(Paths.ContainerData(record.Id), $"commit-{Guid.NewGuid():N}.tar");
            try
            {
                using var stream = new FileStream(layer, FileMode.CreateNew, FileAccess.ReadWrite);
                RootlessStorage.WriteLayerDiff(MonitorCommand, record.RootFileSystem.UpperDirectory, stream);
                stream.Position = 0;
                return Images.CommitLayer(parent, stream, config, options.Reference, createdBy, options.Message, options.Author);
            }
            finally
            {
                File.Delete(layer);
            }
        }
        return Images.Commit(parent, record.RootFileSystem.UpperDirectory, config, options.Reference, createdBy,
            options.Message, options.Author);
    }

    /// <summary><c>container export</c>: the container's merged root as a tar archive (what the process sees at /,
    /// without the file systems the runtime mounts over it).</summary>
    public void Export(string reference, Stream output)
    {
        var record = Inspect(reference);
        if (ContainerPaths.Rootless && record.State.Running)
        {
            // Its overlay is mounted only in its own mount namespace, where / also holds /proc, /sys and /dev.
            throw new ContainerEngineException($"cannot export the running rootless container {record.Name}: stop it first (nestor container stop {record.Name}), then export");
        }
        if (ContainerPaths.Rootless)
        {
            var layers = record.RootFileSystem;
            using (Store.LockContainer(record.Id))
            {
                RootlessStorage.WriteMergedRoot(MonitorCommand, new ContainerRootFileSystem(layers.LowerDirectories,
                    layers.UpperDirectory, layers.WorkDirectory, layers.MergedDirectory), output);
            }
            return;
        }
        WithMergedRoot(record, merged => TarFile.CreateFromDirectory(merged, output, includeBaseDirectory: false));
    }

    /// <summary><c>container cp</c>: copies between the host and the container's root; <paramref name="toContainer"/>
    /// says which way. A path in the container is resolved inside its root (a symbolic link there cannot lead out).</summary>
    public void Copy(string reference, string containerPath, string hostPath, bool toContainer)
    {
        var record = Inspect(reference);
        WithMergedRoot(record, runningView: true, merged =>
        {
            string inside = ResolveInside(merged, containerPath);
            if (toContainer)
            {
                CopyPath(hostPath, inside);
            }
            else
            {
                if (!Path.Exists(inside))
                {
                    throw new ContainerEngineException($"could not find the file {containerPath} in container {record.Name}");
                }
                CopyPath(inside, hostPath);
            }
        });
    }

    /// <summary>Runs <paramref name="action"/> with the container's merged root mounted on the host (mounting it for the
    /// time of the action when the container is not running). Rootless nothing is mounted on the host
    /// (<see cref="RootlessStorage"/>): a running container's root is <c>/proc/PID/root</c> when
    /// runningView (its mount namespace, with what the runtime mounted in it, as docker cp sees it),
    /// otherwise the overlay is mounted for the action in a helper's user and mount namespaces.</summary>
    private void WithMergedRoot(ContainerRecord record, Action<string> action) => WithMergedRoot(record, runningView: false, action);

    private void WithMergedRoot(ContainerRecord record, bool runningView, Action<string> action)
    {
        if (ContainerPaths.Rootless)
        {
            if (runningView && record.State.Running && record.State.Pid > 0)
            {
                action($"/proc/{record.State.Pid}/root");
                return;
            }
            var layers = record.RootFileSystem;
            using var mounted = RootlessStorage.Mount(new ContainerRootFileSystem(layers.LowerDirectories, layers.UpperDirectory,
                layers.WorkDirectory, layers.MergedDirectory));
            action(mounted.Path);
            return;
        }
        string merged = record.RootFileSystem.MergedDirectory;
        bool mountedHere = false;
        using (Store.LockContainer(record.Id))
        {
            if (!ProcessFacts.IsMountPoint(merged))
            {
                Directory.CreateDirectory(merged);
                MountCalls.Mount("overlay", merged, "overlay", MountFlags.None, record.RootFileSystem.MountOptions);
                mountedHere = true;
            }
        }
        try
        {
            action(merged);
        }
        finally
        {
            if (mountedHere)
            {
                MountCalls.TryUnmountDetached(merged);
            }
        }
    }

    /// <summary>A container path inside the root <paramref name="root"/>, each symbolic link but the last followed as the
    /// container would see it (absolute targets relative to the root, '..' never above it; the runtime's one resolver).</summary>
    public static string ResolveInside(string root, string containerPath) =>
        Runtime.PathJoin.InRoot(root, containerPath, followLast: false);

    private static void CopyPath(string source, string destination)
    {
        if (Directory.Exists(destination))
        {
            destination = Path.Combine(destination, Path.GetFileName(source.TrimEnd('/')));
        }
        if (Directory.Exists(source) && new DirectoryInfo(source).LinkTarget is null)
        {
            Directory.CreateDirectory(destination);
            foreach (string entry in Directory.EnumerateFileSystemEntries(source))
            {
                CopyPath(entry, Path.Combine(destination, Path.GetFileName(entry)));
            }
            return;
        }
        if (new FileInfo(source).LinkTarget is { } link)
        {
            File.Delete(destination);
            File.CreateSymbolicLink(destination, link);
            return;
        }
        if (!File.Exists(source))
        {
            throw new ContainerEngineException($"no such file or directory: {source}");
        }
        File.Copy(source, destination, overwrite: true);
    }
}

/// <summary>A container start in progress: the pipe on which its monitor reports, and for a foreground
/// <c>run</c> the attach client.</summary>
public sealed class MonitorStart : IDisposable
{
    private readonly ContainerEngine engine;
    private readonly StreamReader? sync;

    internal MonitorStart(ContainerEngine engine, ContainerRecord record, int syncFd, bool alreadyRunning)
    {
        this.engine = engine;
        Record = record;
        AlreadyRunning = alreadyRunning;
        if (syncFd >= 0)
        {
            sync = new StreamReader(new FileStream(new SafeFileHandle(syncFd, true), FileAccess.Read));
        }
    }

    public ContainerRecord Record { get; }
    public ContainerEngine Engine => engine;
    public bool AlreadyRunning { get; }
    public int Pid { get; private set; }

    /// <summary>Waits for <c>ready</c>: the container is created and the attach socket listens.</summary>
    public void WaitReady() => Expect("ready");

    /// <summary>Waits for <c>started PID</c>.</summary>
    public void WaitStarted()
    {
        string line = Expect("started");
        Pid = int.Parse(line.Split(' ')[1], CultureInfo.InvariantCulture);
    }

    /// <summary>Connects to the container's attach socket.</summary>
    public Socket Attach(byte mode) =>
        AttachProtocol.Connect(engine.Paths.AttachSocket(Record.Id), mode)
        ?? throw new ContainerEngineException($"cannot attach to container {Record.Name}: its monitor does not answer");

    private string Expect(string word)
    {
        string? line = sync?.ReadLine();
        if (line is null)
        {
            var record = engine.Store.TryLoad(Record.Id);
            throw new ContainerStartException(record?.State.ExitCode is > 0 and var code ? code : 125,
                record?.State.Error is { Length: > 0 } error ? error : "the container's monitor ended without a word (see 'nestor container logs')");
        }
        if (line.StartsWith("error ", StringComparison.Ordinal))
        {
            string[] parts = line.Split(' ', 3);
            throw new ContainerStartException(int.Parse(parts[1], CultureInfo.InvariantCulture), parts.Length > 2 ? parts[2] : "");
        }
        if (!line.StartsWith(word, StringComparison.Ordinal))
        {
            throw new ContainerStartException(125, $"the monitor said '{line}' where '{word}' was expected");
        }
        return line;
    }

    public void Dispose() => sync?.Dispose();
}

/// <summary>The container could not be started: <see cref="Status"/> is Docker's (125 the engine's or runtime's
/// error, 126 the program cannot be executed, 127 it was not found).</summary>
public sealed class ContainerStartException(int status, string message) : ContainerEngineException(message)
{
    public int Status { get; } = status;
}

/// <summary>Signal names and numbers (signal(7), x86-64).</summary>
public static class Signals
{
    private static readonly string[] Names =
    [
        "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
        "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
        "WINCH", "IO", "PWR", "SYS",
    ];

    /// <summary><c>SIGTERM</c>, <c>TERM</c>, <c>term</c> or <c>15</c>.</summary>
    public static int Parse(string text)
    {
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int number) && number is > 0 and < 65)
        {
            return number;
        }
        string name = text.Trim().ToUpperInvariant();
        if (name.StartsWith("SIG", StringComparison.Ordinal))
        {
            name = name[3..];
        }
        int index = Array.IndexOf(Names, name);
        return index > 0 ? index : throw new ContainerEngineException($"unknown signal '{text}' (signal(7) names them: TERM, KILL, HUP…)");
    }
}
