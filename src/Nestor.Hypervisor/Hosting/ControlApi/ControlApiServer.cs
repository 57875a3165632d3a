using System.Net.Sockets;
using Nestor.Host;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary>The control API of a host of many VMs: HTTP/1.1 with JSON bodies on a Unix domain socket, in
/// Firecracker's REST shape (routes in <see cref="ControlApiRoutes"/>, documented in docs/host.md). The socket is
/// the API's only access control, so it is made mode 0600 (its owner only) before it listens; a path already served
/// by a live process is refused, a stale socket left by a process that died is replaced, and the file is removed when
/// the server is disposed. One thread accepts; each connection has its own thread, at most
/// <see cref="ControlApiOptions.MaxConnections"/> of them, each bounded in what it holds and how long it waits.</summary>
public sealed class ControlApiServer : IDisposable
{
    private readonly Socket listener;
    private readonly ControlApiRoutes routes;
    private readonly ControlApiOptions options;
    private readonly FileSystemCalls.Stat boundFile;
    private readonly Thread acceptThread;
    private readonly Lock gate = new();
    private readonly Dictionary<Socket, Thread> connections = [];
    private bool disposed;
    private long requestsServed, requestsRefused, connectionsRefused, internalErrors;

    private ControlApiServer(string socketPath, Socket listener, FileSystemCalls.Stat boundFile, IHostControl host, ControlApiOptions options)
    {
        SocketPath = socketPath;
        this.listener = listener;
        this.boundFile = boundFile;
        this.options = options;
        routes = new ControlApiRoutes(host);
        acceptThread = new Thread(AcceptLoop) { IsBackground = true, Name = "control-api-accept" };
        acceptThread.Start();
    }

    /// <summary>The socket's path.</summary>
    public string SocketPath { get; }

    /// <summary>Requests answered with a 2xx status.</summary>
    public long RequestsServed => Interlocked.Read(ref requestsServed);

    /// <summary>Requests answered with an error status (4xx, 5xx), malformed ones among them.</summary>
    public long RequestsRefused => Interlocked.Read(ref requestsRefused);

    /// <summary>Connections answered 503 because <see cref="ControlApiOptions.MaxConnections"/> were open.</summary>
    public long ConnectionsRefused => Interlocked.Read(ref connectionsRefused);

    /// <summary>Requests whose handling failed inside Nestor (answered 500): each is a bug.</summary>
    public long InternalErrors => Interlocked.Read(ref internalErrors);

    /// <summary>Connections open now.</summary>
    public int OpenConnections
    {
        get
        {
            lock (gate)
            {
                return connections.Count;
            }
        }
    }

    /// <summary>Creates the socket at <paramref name="socketPath"/> and starts serving <paramref name="host"/>.</summary>
    /// <exception cref="BadInputException">The path is served by a live process, is not a socket, or cannot be
    /// made.</exception>
    public static ControlApiServer Start(string socketPath, IHostControl host, ControlApiOptions? options = null)
    {
        options ??= new ControlApiOptions();
        string path = Path.GetFullPath(socketPath);
        RemoveStaleSocket(path);
        // Bound under a name of its own, then renamed into place: the path never exists with the umask's mode, and
        // .NET's own clean-up (Socket.Dispose unlinks the name it bound) removes that name, not the path, which
        // Dispose removes only while it is still this server's socket.
        string bindPath = $"{path}.{Environment.ProcessId}";
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            try
            {
                File.Delete(bindPath); // a leftover of a process with this id that died between bind and rename
                listener.Bind(new UnixDomainSocketEndPoint(bindPath));
            }
            catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
            {
                throw new BadInputException($"cannot create the control API socket {path}: {e.Message}",
                    "Check that its directory exists and is writable, and that the path is shorter than 100 bytes.", e);
            }
            // Mode 0600 before listen(2): until then a connect(2) is refused (ECONNREFUSED) anyway.
            FileSystemCalls.Chmod(bindPath, 0x180); // 0600
            try
            {
                File.Move(bindPath, path); // refuses to replace a file made at the path since the check above
            }
            catch (IOException e)
            {
                File.Delete(bindPath);
                throw new BadInputException($"cannot create the control API socket {path}: {e.Message}",
                    "Another process made it just now; choose another --api-socket path.", e);
            }
            var bound = FileSystemCalls.LStat(path);
            listener.Listen(options.MaxConnections);
            return new ControlApiServer(path, listener, bound, host, options);
        }
        catch
        {
            listener.Dispose();
            throw;
        }
    }

    /// <summary>Removes a socket file nobody serves (a process that died left it); refuses a live one and anything
    /// that is not a socket.</summary>
    private static void RemoveStaleSocket(string path)
    {
        if (FileSystemCalls.TryLStat(path) is not { } existing)
        {
            return;
        }
        if ((existing.Mode & FileSystemCalls.S_IFMT) != FileSystemCalls.S_IFSOCK)
        {
            throw new BadInputException($"{path} exists and is not a socket", "Choose another --api-socket path; Nestor removes only stale sockets.");
        }
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            File.Delete(path); // nobody listens: stale
            return;
        }
        catch (SocketException e)
        {
            throw new BadInputException($"cannot tell whether the socket {path} is in use: {e.Message}", "Choose another --api-socket path.", e);
        }
        throw new BadInputException($"another process serves the socket {path}", "Stop that host first, or choose another --api-socket path.");
    }

    private void AcceptLoop()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = listener.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                lock (gate)
                {
                    if (disposed)
                    {
                        return;
                    }
                }
                continue; // an accept that failed for this client alone (ECONNABORTED): the next one
            }
            lock (gate)
            {
                if (disposed)
                {
                    client.Dispose();
                    return;
                }
                if (connections.Count >= options.MaxConnections)
                {
                    Interlocked.Increment(ref connectionsRefused);
                    RefuseBusy(client);
                    continue;
                }
                var thread = new Thread(() => Serve(client)) { IsBackground = true, Name = "control-api-connection" };
                connections.Add(client, thread);
                thread.Start();
            }
        }
    }

    private void RefuseBusy(Socket client)
    {
        try
        {
            var refusal = ControlApiRoutes.Fault(503, $"the control API serves at most {options.MaxConnections} connections at once: close one and try again");
            // A fresh connection's send buffer takes the short answer at once, so the accept thread does not wait.
            new HttpConnection(client, options with { MaxHeadBytes = 1 }).WriteResponse(503, refusal.Body, close: true);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            client.Dispose();
        }
    }

    private void Serve(Socket client)
    {
        try
        {
            var connection = new HttpConnection(client, options);
            while (true)
            {
                HttpRequest? request;
                try
                {
                    request = connection.ReadRequest();
                }
                catch (HttpProtocolException e)
                {
                    Interlocked.Increment(ref requestsRefused);
                    connection.WriteResponse(e.Status, ControlApiRoutes.Fault(e.Status, e.Message).Body, close: true);
                    connection.LingerAndClose();
                    return;
                }
                if (request is null)
                {
                    return;
                }
                ControlApiResponse response;
                try
                {
                    response = routes.Handle(request.Method, request.Target, request.Body);
                }
                catch (Exception e)
                {
                    // The host's implementation failed: a bug, reported to the client and counted, not a crash of the
                    // process that runs every VM.
                    Interlocked.Increment(ref internalErrors);
                    response = ControlApiRoutes.Fault(500, $"the host failed to answer {request.Method} {request.Target}: {e.GetType().Name}: {e.Message}");
                }
                if (response.Status < 300)
                {
                    Interlocked.Increment(ref requestsServed);
                }
                else
                {
                    Interlocked.Increment(ref requestsRefused);
                }
                connection.WriteResponse(response.Status, response.Body, close: !request.KeepAlive, response.Allow);
                if (!request.KeepAlive)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            // The client went away or the server is being disposed: nothing left to answer.
        }
        finally
        {
            lock (gate)
            {
                connections.Remove(client);
            }
            client.Dispose();
        }
    }

    /// <summary>Stops accepting, closes every connection, waits for their threads and removes the socket file (if
    /// it is still the one this server made).</summary>
    public void Dispose()
    {
        List<KeyValuePair<Socket, Thread>> open;
        lock (gate)
        {
            if (disposed)
            {
                return;
            }
            disposed = true;
            open = [.. connections];
        }
        listener.Dispose();
        foreach (var (socket, _) in open)
        {
            try
            {
                socket.Shutdown(SocketShutdown.Both);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }
        acceptThread.Join(TimeSpan.FromSeconds(5));
        foreach (var (_, thread) in open)
        {
            thread.Join(TimeSpan.FromSeconds(5));
        }
        // Only our file: a later server may have replaced a socket this one left (it would have found it stale only
        // if this one was gone, but a path can be reused by hand).
        if (FileSystemCalls.TryLStat(SocketPath) is { } now && now.Inode == boundFile.Inode && now.Device == boundFile.Device)
        {
            File.Delete(SocketPath);
        }
    }
}
