using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Nestor.Containers.Network;
using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.External;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>The process that owns one running container, in the shape of Podman's conmon: started detached by
/// <c>container start|run</c> (its own session, standard streams on /dev/null), it mounts the root, writes the
/// bundle, has the runtime create the container with the monitor's own pipes (or a terminal), attaches the network,
/// serves the attach socket, starts the container, copies its output to the json-file log and to attached clients,
/// reaps it (it is the child subreaper, so the container's first process becomes its child once the runtime's create
/// command exits), records the exit status, cleans up and exits. No daemon: each container has its own monitor, and
/// what it records is in files, so its death loses neither the log so far nor, for the next command, the fact that
/// the container ended.</summary>
public sealed class ContainerMonitor
{
    private readonly ContainerStore store;
    private readonly ContainerRuntimes runtimes;
    private readonly IContainerNetwork? network;
    private readonly BundleBuilder bundles;
    private readonly Lock clientsGate = new();
    private readonly List<Socket> clients = [];
    private int stdinWrite = -1;
    private int terminal = -1;

    public ContainerMonitor(ContainerStore store, ContainerRuntimes runtimes, IContainerNetwork? network, BundleBuilder bundles)
    {
        this.store = store;
        this.runtimes = runtimes;
        this.network = network;
        this.bundles = bundles;
    }

    /// <summary>Runs the container <paramref name="id"/> to its end. <paramref name="syncFd"/> is the pipe on which
    /// the starting command hears <c>ready</c> (the attach socket listens, the container is created), then
    /// <c>started PID</c> or <c>error STATUS MESSAGE</c>. With <paramref name="waitForAttach"/> the container is
    /// started only once a client has connected, so that a foreground <c>run</c> sees all of its output.</summary>
    public int Run(string id, int syncFd, bool waitForAttach)
    {
        var paths = store.Paths;
        ProcessCalls.BecomeChildSubreaper();
        using var monitorLock = FileLock.TryAcquire(paths.MonitorLock(id));
        if (monitorLock is null)
        {
            Sync(syncFd, $"error 125 another monitor already runs container {id}");
            return 125;
        }
        var record = store.Load(id);
        var runtime = runtimes.Create(record.HostConfig.Runtime);
        Socket? listener = null;
        Socket? consoleListener = null;
        IDisposable? forwarding = null;
        int pid = 0;
        int exitCode;
        var pumps = new List<Thread>();
        ContainerLogWriter? log = null;
        bool created = false;
        string? failure = null;
        try
        {
            MountRoot(record.RootFileSystem, ContainerPaths.Rootless);
            var spec = bundles.Build(record, Path.Combine(paths.ContainerData(id), "etc"), ContainerPaths.Rootless);
            string bundle = paths.Bundle(id);
            Directory.CreateDirectory(bundle);
            File.WriteAllText(Path.Combine(bundle, "config.json"), spec.ToJson());
            Directory.CreateDirectory(Path.GetDirectoryName(paths.AttachSocket(id))!);
            log = new ContainerLogWriter(paths.LogFile(id));

            int nullFd = MountCalls.Open("/dev/null", MountCalls.OpenFlags.ReadWrite);
            var childEnds = new List<int> { nullFd };
            RuntimeIo io;
            (int Read, int Write)? stdout = null, stderr = null;
            if (record.Config.Tty)
            {
                File.Delete(paths.ConsoleSocket(id));
                consoleListener = Listen(paths.ConsoleSocket(id));
                io = new RuntimeIo(nullFd, nullFd, nullFd, paths.ConsoleSocket(id));
            }
            else
            {
                int stdin = nullFd;
                if (record.Config.OpenStdin)
                {
                    var pipe = ProcessCalls.CreatePipe();
                    stdin = pipe.Read;
                    stdinWrite = pipe.Write;
                    childEnds.Add(pipe.Read);
                }
                stdout = ProcessCalls.CreatePipe();
                stderr = ProcessCalls.CreatePipe();
                childEnds.Add(stdout.Value.Write);
                childEnds.Add(stderr.Value.Write);
                io = new RuntimeIo(stdin, stdout.Value.Write, stderr.Value.Write);
            }
            Thread? consoleAccept = null;
            if (consoleListener is not null)
            {
                consoleAccept = new Thread(() =>
                {
                    using var connection = consoleListener.Accept();
                    terminal = TerminalCalls.ReceiveDescriptor((int)connection.Handle).Descriptor;
                })
                { IsBackground = true };
                consoleAccept.Start();
            }
            try
            {
                File.Delete(paths.PidFile(id));
                runtime.Create(id, bundle, io, paths.PidFile(id));
                created = true;
            }
            finally
            {
                foreach (int fd in childEnds)
                {
                    ProcessCalls.Close(fd);
                }
            }
            if (consoleAccept is not null && !consoleAccept.Join(TimeSpan.FromSeconds(10)))
            {
                throw new ContainerRuntimeException($"{runtime.Name} did not send the container's terminal");
            }
            pid = int.Parse(File.ReadAllText(paths.PidFile(id)).Trim(), CultureInfo.InvariantCulture);
            if (record.HostConfig.NetworkMode == NetworkMode.Bridge || record.HostConfig.PortBindings.Count > 0)
            {
                if (network is null)
                {
                    throw new ContainerEngineException("the bridge network is not available in this build; use --network none or host");
                }
                var attachment = network.Attach(id, pid, record.HostConfig.NetworkMode, record.HostConfig.PortBindings);
                store.Update(id, r => r.Network = attachment);
                forwarding = network.StartForwarding(attachment);
            }

            File.Delete(paths.AttachSocket(id));
            listener = Listen(paths.AttachSocket(id));
            var firstClient = new ManualResetEventSlim();
            var acceptor = new Thread(() => AcceptClients(listener, firstClient)) { IsBackground = true };
            acceptor.Start();
            Sync(syncFd, "ready");
            if (waitForAttach)
            {
                firstClient.Wait(TimeSpan.FromSeconds(30));
            }

            if (terminal >= 0)
            {
                pumps.Add(Pump(terminal, "stdout", AttachProtocol.Stdout, log));
            }
            else
            {
                pumps.Add(Pump(stdout!.Value.Read, "stdout", AttachProtocol.Stdout, log));
                pumps.Add(Pump(stderr!.Value.Read, "stderr", AttachProtocol.Stderr, log));
            }
            runtime.Start(id);
            ulong startTime = ProcessFacts.StartTime(pid);
            store.Update(id, r =>
            {
                r.State = new ContainerRunState
                {
                    Status = ContainerState.Running,
                    Running = true,
                    Pid = pid,
                    PidStartTime = startTime,
                    MonitorPid = Environment.ProcessId,
                    BootId = ProcessFacts.BootId(),
                    StartedAt = DateTimeOffset.UtcNow,
                };
                r.StartCount++;
            });
            Sync(syncFd, $"started {pid}");
            ProcessCalls.Close(syncFd);
            syncFd = -1;

            exitCode = WaitForExit(pid);
        }
        catch (Exception exception) when (exception is ContainerRuntimeException or ContainerEngineException or ContainerNetworkException
            or Nestor.Host.HostCallException or IOException)
        {
            string message = exception is ContainerNetworkException { Advice: { } advice } ? $"{exception.Message}: {advice}" : exception.Message;
            if (runtime is ExternalRuntime external && external.LastLogError(id) is { } detail && !message.Contains(detail, StringComparison.Ordinal))
            {
                message = $"{message}: {detail}";
            }
            exitCode = ExternalRuntime.ClassifyStartFailure(message) ?? 125;
            if (exception is ContainerEngineException or ContainerNetworkException)
            {
                exitCode = 125;
            }
            string oneLine = message.ReplaceLineEndings(" ");
            log?.Append("stderr", Encoding.UTF8.GetBytes($"nestor: {oneLine}\n"));
            store.Update(id, r =>
            {
                r.State.Status = ContainerState.Exited;
                r.State.Running = false;
                r.State.Pid = 0;
                r.State.ExitCode = exitCode;
                r.State.Error = oneLine;
                r.State.FinishedAt = DateTimeOffset.UtcNow;
            });
            failure = $"error {exitCode} {oneLine}";
        }
        // The first process is gone; its output ends when the last holder of the pipes closes them, which in a pid
        // namespace is at once (its end kills the namespace's other processes).
        foreach (var pump in pumps)
        {
            pump.Join(TimeSpan.FromSeconds(5));
        }
        log?.Dispose();
        forwarding?.Dispose();
        var final = store.Load(id);
        ContainerCleanup.Release(final, runtime, network, created);
        bool remove = final.HostConfig.AutoRemove;
        if (final.State.Status != ContainerState.Exited || final.State.Pid != 0)
        {
            final = store.Update(id, r =>
            {
                r.State.Status = ContainerState.Exited;
                r.State.Running = false;
                r.State.Pid = 0;
                r.State.ExitCode = exitCode;
                r.State.FinishedAt = DateTimeOffset.UtcNow;
            });
        }
        if (final.Network is not null)
        {
            final = store.Update(id, r => r.Network = null); // released above; a restart attaches anew
        }
        if (remove)
        {
            using var names = store.LockNames();
            store.Delete(id);
        }
        // The starting command hears of a failure only now, once everything is released (and, with --rm, removed).
        if (failure is not null && syncFd >= 0)
        {
            Sync(syncFd, failure);
        }
        Broadcast(AttachProtocol.Frame(AttachProtocol.Exit, Encoding.ASCII.GetBytes(exitCode.ToString(CultureInfo.InvariantCulture))));
        lock (clientsGate)
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
        listener?.Dispose();
        consoleListener?.Dispose();
        File.Delete(paths.AttachSocket(id));
        File.Delete(paths.ConsoleSocket(id));
        if (syncFd >= 0)
        {
            ProcessCalls.Close(syncFd);
        }
        return exitCode;
    }

    /// <summary>Reaps children until the container's first process ends; returns its status as Docker reports it.
    /// The process becomes this monitor's child when the runtime's create command exits (child subreaper); should
    /// it not be (a runtime that double-forks into another parent), its end is found by polling.</summary>
    private static int WaitForExit(int pid)
    {
        while (true)
        {
            var (reaped, status) = ProcessCalls.WaitForAnyChild();
            if (reaped == pid)
            {
                return status;
            }
            if (reaped < 0)
            {
                while (ProcessCalls.Signal(pid, 0))
                {
                    Thread.Sleep(50);
                }
                return 255;
            }
        }
    }

    /// <summary>Rootless, only the directories: the runtime mounts the overlay inside the container's namespaces
    /// (<see cref="Runtime.RuntimeAnnotations.RootOverlay"/>).</summary>
    private static void MountRoot(ContainerRootLayers root, bool rootless)
    {
        if (ProcessFacts.IsMountPoint(root.MergedDirectory))
        {
            return;
        }
        Directory.CreateDirectory(root.MergedDirectory);
        Directory.CreateDirectory(root.UpperDirectory);
        Directory.CreateDirectory(root.WorkDirectory);
        if (rootless)
        {
            return;
        }
        MountCalls.Mount("overlay", root.MergedDirectory, "overlay", MountFlags.None, root.MountOptions);
    }

    private static Socket Listen(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(path));
        socket.Listen(16);
        return socket;
    }

    private void AcceptClients(Socket listener, ManualResetEventSlim firstClient)
    {
        while (true)
        {
            Socket client;
            try
            {
                client = listener.Accept();
            }
            catch (Exception exception) when (exception is SocketException or ObjectDisposedException)
            {
                return;
            }
            var mode = new byte[1];
            if (client.Receive(mode) != 1)
            {
                client.Dispose();
                continue;
            }
            lock (clientsGate)
            {
                clients.Add(client);
            }
            firstClient.Set();
            if (mode[0] != AttachProtocol.OutputOnly)
            {
                bool once = mode[0] == AttachProtocol.InputOnce;
                new Thread(() => ForwardInput(client, once)) { IsBackground = true }.Start();
            }
        }
    }

    /// <summary>A client's input to the container's stdin (or terminal).</summary>
    private void ForwardInput(Socket client, bool closeAtEnd)
    {
        var buffer = new byte[16 * 1024];
        while (true)
        {
            int count;
            try
            {
                count = client.Receive(buffer);
            }
            catch (Exception exception) when (exception is SocketException or ObjectDisposedException)
            {
                count = 0;
            }
            int target = terminal >= 0 ? terminal : stdinWrite;
            if (count <= 0)
            {
                if (closeAtEnd && terminal < 0 && stdinWrite >= 0)
                {
                    int fd = Interlocked.Exchange(ref stdinWrite, -1);
                    if (fd >= 0)
                    {
                        ProcessCalls.Close(fd);
                    }
                }
                return;
            }
            if (target >= 0)
            {
                ProcessCalls.TryWriteAll(target, buffer.AsSpan(0, count));
            }
        }
    }

    private Thread Pump(int fd, string stream, byte frameType, ContainerLogWriter log)
    {
        var thread = new Thread(() =>
        {
            var buffer = new byte[32 * 1024];
            while (true)
            {
                int count = ProcessCalls.TryReadSome(fd, buffer);
                if (count <= 0)
                {
                    break;
                }
                log.Append(stream, buffer.AsSpan(0, count));
                Broadcast(AttachProtocol.Frame(frameType, buffer.AsSpan(0, count)));
            }
            log.Flush();
            ProcessCalls.Close(fd);
        })
        { IsBackground = true, Name = $"pump {stream}" };
        thread.Start();
        return thread;
    }

    private void Broadcast(byte[] frame)
    {
        lock (clientsGate)
        {
            for (int i = clients.Count - 1; i >= 0; i--)
            {
                try
                {
                    clients[i].Send(frame);
                }
                catch (Exception exception) when (exception is SocketException or ObjectDisposedException)
                {
                    clients[i].Dispose();
                    clients.RemoveAt(i);
                }
            }
        }
    }

    private static void Sync(int fd, string line)
    {
        if (fd >= 0)
        {
            ProcessCalls.TryWriteAll(fd, Encoding.UTF8.GetBytes(line + "\n"));
        }
    }
}
