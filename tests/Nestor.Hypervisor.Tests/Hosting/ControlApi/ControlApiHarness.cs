using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Hosting.ControlApi;
using Nestor.Tests.Shared;

namespace Nestor.Hypervisor.Tests.Hosting.ControlApi;

/// <summary>A control API server on a socket in a fresh directory, over a host, with a real HTTP client
/// (<see cref="HttpClient"/> connecting to the Unix socket); disposing it disposes the server, the host and the
/// directory, also when the test failed.</summary>
internal sealed class ControlApiHarness : IDisposable
{
    private readonly DirectoryInfo directory = Directory.CreateTempSubdirectory("nestor-api-");
    private readonly IDisposable? ownedHost;

    public ControlApiHarness(IHostControl host, ControlApiOptions? options = null, bool ownsHost = true)
    {
        Host = host;
        ownedHost = ownsHost ? host as IDisposable : null;
        SocketPath = Path.Combine(directory.FullName, "api.sock");
        Server = ControlApiServer.Start(SocketPath, host, options);
        Http = NewClient(SocketPath);
    }

    public static ControlApiHarness OverSpinningVms(bool running, ControlApiOptions? options = null, params string[] names) =>
        new(new SpinningVmHost(names.Length == 0 ? ["alpha", "beta"] : names, running), options);

    public IHostControl Host { get; }
    public SpinningVmHost Spinning => (SpinningVmHost)Host;
    public string SocketPath { get; }
    public ControlApiServer Server { get; }
    public HttpClient Http { get; }

    /// <summary>An <see cref="HttpClient"/> whose every connection goes to <paramref name="socketPath"/>.</summary>
    public static HttpClient NewClient(string socketPath) => new(new SocketsHttpHandler
    {
        ConnectCallback = async (_, cancel) =>
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancel);
            return new NetworkStream(socket, ownsSocket: true);
        },
    })
    { BaseAddress = new Uri("http://localhost/"), Timeout = TimeSpan.FromSeconds(30) };

    /// <summary>Sends a request with an optional JSON body and returns the status and the body's text.</summary>
    public (int Status, string Body, HttpResponseMessage Response) Send(string method, string path, string? json = null)
    {
        var request = new HttpRequestMessage(new HttpMethod(method), path);
        if (json is not null)
        {
            request.Content = new StringContent(json, Encoding.UTF8, "application/json");
        }
        var response = Http.SendAsync(request).GetAwaiter().GetResult();
        string body = response.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        return ((int)response.StatusCode, body, response);
    }

    public JsonElement GetJson(string path)
    {
        var (status, body, _) = Send("GET", path);
        Assert.True(status == 200, $"GET {path}: {status} {body}");
        return JsonDocument.Parse(body).RootElement.Clone();
    }

    /// <summary>The fault message of an error answer (every error has one).</summary>
    public static string FaultOf(string body) => JsonDocument.Parse(body).RootElement.GetProperty("fault_message").GetString()!;

    public RawConnection Raw() => new(SocketPath);

    /// <summary>Leaves at <paramref name="path"/> what a killed server leaves: a socket file nobody listens on.
    /// (Socket.Dispose unlinks the name it bound, so the socket is bound under another name and renamed.)</summary>
    public static void MakeStaleSocket(string path)
    {
        using var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        dead.Bind(new UnixDomainSocketEndPoint(path + ".bound"));
        File.Move(path + ".bound", path);
    }

    public void Dispose()
    {
        Http.Dispose();
        Server.Dispose();
        ownedHost?.Dispose();
        directory.Delete(recursive: true);
    }
}

/// <summary>A connection that writes bytes as given, for requests no HTTP client would send.</summary>
internal sealed class RawConnection : IDisposable
{
    private readonly Socket socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly List<byte> pending = [];

    public RawConnection(string path)
    {
        socket.Connect(new UnixDomainSocketEndPoint(path));
        socket.ReceiveTimeout = 10_000;
    }

    public void Send(string text) => socket.Send(Encoding.Latin1.GetBytes(text));

    /// <summary>Reads one response: status, head and body (by its Content-Length).</summary>
    public (int Status, string Head, string Body) ReadResponse()
    {
        int end;
        while ((end = IndexOf("\r\n\r\n")) < 0)
        {
            if (!Fill())
            {
                throw new IOException($"the server closed the connection before a whole response (got '{Encoding.Latin1.GetString([.. pending])}')");
            }
        }
        string head = Encoding.Latin1.GetString([.. pending.Take(end)]);
        pending.RemoveRange(0, end + 4);
        int length = 0;
        foreach (var line in head.Split("\r\n").Skip(1))
        {
            if (line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase))
            {
                length = int.Parse(line["Content-Length:".Length..].Trim());
            }
        }
        while (pending.Count < length)
        {
            if (!Fill())
            {
                throw new IOException("the server closed the connection in the middle of a body");
            }
        }
        string body = Encoding.UTF8.GetString([.. pending.Take(length)]);
        pending.RemoveRange(0, length);
        return (int.Parse(head.Split(' ')[1]), head, body);
    }

    /// <summary>Whether the server has closed the connection (end of stream) with nothing more sent.</summary>
    public bool ClosedByServer()
    {
        try
        {
            return !Fill() && pending.Count == 0;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            return true;
        }
    }

    private bool Fill()
    {
        var buffer = new byte[4096];
        int n = socket.Receive(buffer);
        pending.AddRange(buffer.AsSpan(0, n).ToArray());
        return n > 0;
    }

    private int IndexOf(string text)
    {
        byte[] needle = Encoding.Latin1.GetBytes(text);
        for (int i = 0; i + needle.Length <= pending.Count; i++)
        {
            bool match = true;
            for (int j = 0; j < needle.Length && match; j++)
            {
                match = pending[i + j] == needle[j];
            }
            if (match)
            {
                return i;
            }
        }
        return -1;
    }

    public void Dispose() => socket.Dispose();
}
