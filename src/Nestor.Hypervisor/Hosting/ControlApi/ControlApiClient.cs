using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Hosting.ControlApi;

/// <summary>The server answered a request with an error status; <see cref="NestorException.Advice"/> is empty and
/// the message is the server's fault message.</summary>
public sealed class ControlApiRefusedException(int status, string message) : NestorException(message, null)
{
    /// <summary>The HTTP status the server answered with.</summary>
    public int Status { get; } = status;

    public override FailureClass Class => FailureClass.BadInput;
}

/// <summary>A client of the control API over its Unix socket (what <c>nestor host ctl</c> and <c>nestor host top</c>
/// use): .NET's <see cref="HttpClient"/> with a connection callback that connects to the socket, one method per
/// route. A socket that is missing or that nobody serves is a <see cref="BadInputException"/> saying so; a refusal
/// by the server a <see cref="ControlApiRefusedException"/> with its status and fault message.</summary>
public sealed class ControlApiClient : IDisposable
{
    private readonly HttpClient http;

    /// <param name="socketPath">The socket <c>nestor host run --api-socket</c> made.</param>
    /// <param name="timeout">How long one request may take.</param>
    public ControlApiClient(string socketPath, TimeSpan? timeout = null)
    {
        SocketPath = socketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, cancel) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancel);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        // The host part of the address is only the Host header's value: the connection goes to the socket.
        http = new HttpClient(handler) { BaseAddress = new Uri("http://localhost/"), Timeout = timeout ?? TimeSpan.FromSeconds(10) };
    }

    /// <summary>The socket this client talks to.</summary>
    public string SocketPath { get; }

    /// <summary><c>GET /</c>.</summary>
    public InstanceInfoDocument Instance() => Get("/", ControlApiJson.Default.InstanceInfoDocument);

    /// <summary><c>GET /host</c>: the host's counters.</summary>
    public IReadOnlyList<CounterDocument> HostCounters() => Get("/host", ControlApiJson.Default.CountersDocument).Counters;

    /// <summary><c>GET /vms</c>.</summary>
    public IReadOnlyList<VmDocument> List() => Get("/vms", ControlApiJson.Default.VmListDocument).Vms;

    /// <summary><c>GET /vms/{name}</c>.</summary>
    public VmDocument Get(string name) => Get(VmPath(name), ControlApiJson.Default.VmDocument);

    /// <summary><c>GET /vms/{name}/counters</c>.</summary>
    public IReadOnlyList<CounterDocument> Counters(string name) => Get(VmPath(name) + "/counters", ControlApiJson.Default.CountersDocument).Counters;

    /// <summary><c>PATCH /vms/{name} {"state": "Paused"}</c>.</summary>
    public void Pause(string name) => Send(HttpMethod.Patch, VmPath(name), new VmStateDocument("Paused"), ControlApiJson.Default.VmStateDocument);

    /// <summary><c>PATCH /vms/{name} {"state": "Resumed"}</c>.</summary>
    public void Resume(string name) => Send(HttpMethod.Patch, VmPath(name), new VmStateDocument("Resumed"), ControlApiJson.Default.VmStateDocument);

    /// <summary><c>PUT /vms/{name}/actions {"action_type": "Stop"}</c>.</summary>
    public void Stop(string name) => Send(HttpMethod.Put, VmPath(name) + "/actions", new ActionDocument("Stop"), ControlApiJson.Default.ActionDocument);

    /// <summary><c>PUT /vms/{name}/cpu</c>: replaces the CPU controls (no reservation or limit unless given).</summary>
    public void ReplaceCpu(string name, int shares, double? reservation, double? limit) =>
        Send(HttpMethod.Put, VmPath(name) + "/cpu", new CpuDocument(shares, reservation, limit), ControlApiJson.Default.CpuDocument);

    /// <summary><c>PATCH /vms/{name}/cpu</c>: changes only the controls given; <paramref name="removeLimit"/> sends
    /// <c>"limit": null</c>, which removes the limit.</summary>
    public void ChangeCpu(string name, int? shares = null, double? reservation = null, double? limit = null, bool removeLimit = false)
    {
        // Written by hand, not from a CpuDocument: a PATCH must leave out what it does not change, and an absent
        // limit differs from a null one.
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            if (shares is { } s)
            {
                writer.WriteNumber("shares", s);
            }
            if (reservation is { } r)
            {
                writer.WriteNumber("reservation", r);
            }
            if (limit is { } l)
            {
                writer.WriteNumber("limit", l);
            }
            else if (removeLimit)
            {
                writer.WriteNull("limit");
            }
            writer.WriteEndObject();
        }
        SendBytes(HttpMethod.Patch, VmPath(name) + "/cpu", buffer.ToArray());
    }

    /// <summary><c>PUT /vms/{name}/snapshot</c>: saves the VM (HostSnapshots.cs).</summary>
    public SnapshotDocument Snapshot(string name, SnapshotCreateDocument document)
    {
        var request = new HttpRequestMessage(HttpMethod.Put, VmPath(name) + "/snapshot") { Content = new ByteArrayContent(JsonSerializer.SerializeToUtf8Bytes(document, ControlApiSnapshotJson.Default.SnapshotCreateDocument)) };
        request.Content.Headers.ContentType = new("application/json");
        return JsonSerializer.Deserialize(Exchange(request), ControlApiSnapshotJson.Default.SnapshotDocument) ?? throw new BadInputException($"the server at {SocketPath} answered the snapshot with null");
    }

    /// <summary><c>GET /vms/{name}/balloon</c>.</summary>
    public BalloonDocument Balloon(string name) => Get(VmPath(name) + "/balloon", ControlApiJson.Default.BalloonDocument);

    /// <summary><c>PUT /vms/{name}/balloon {"target_mib": N}</c>.</summary>
    public void SetBalloon(string name, long targetMib) =>
        Send(HttpMethod.Put, VmPath(name) + "/balloon", new BalloonTargetDocument(targetMib), ControlApiJson.Default.BalloonTargetDocument);

    /// <summary><c>PUT /vms/{name}/migration</c>: starts a live migration of the VM (MigrationRoutes.cs).</summary>
    public void StartMigration(string name, MigrationRequestDocument request) =>
        Send(HttpMethod.Put, VmPath(name) + "/migration", request, MigrationJson.Default.MigrationRequestDocument);

    /// <summary><c>GET /vms/{name}/migration</c>: how the VM's migration goes, polled by <c>nestor migrate</c>.</summary>
    public MigrationDocument Migration(string name) => Get(VmPath(name) + "/migration", MigrationJson.Default.MigrationDocument);

    private static string VmPath(string name) => "/vms/" + Uri.EscapeDataString(name);

    private T Get<T>(string path, JsonTypeInfo<T> type)
    {
        byte[] body = Exchange(new HttpRequestMessage(HttpMethod.Get, path));
        return JsonSerializer.Deserialize(body, type) ?? throw new BadInputException($"the server at {SocketPath} answered GET {path} with null");
    }

    private void Send<T>(HttpMethod method, string path, T document, JsonTypeInfo<T> type) =>
        SendBytes(method, path, JsonSerializer.SerializeToUtf8Bytes(document, type));

    private void SendBytes(HttpMethod method, string path, byte[] json)
    {
        var request = new HttpRequestMessage(method, path) { Content = new ByteArrayContent(json) };
        request.Content.Headers.ContentType = new("application/json");
        Exchange(request);
    }

    private byte[] Exchange(HttpRequestMessage request)
    {
        using (request)
        {
            HttpResponseMessage response;
            try
            {
                response = http.SendAsync(request).GetAwaiter().GetResult();
            }
            catch (HttpRequestException e) when (e.InnerException is SocketException socket)
            {
                throw !File.Exists(SocketPath) ? Missing(e) : socket.SocketErrorCode switch
                {
                    SocketError.ConnectionRefused => new BadInputException($"nothing serves the control API socket {SocketPath} (connection refused)",
                        "The host that made it has ended: start it again with nestor host run --api-socket.", e),
                    SocketError.AccessDenied => new BadInputException($"no permission to connect to {SocketPath}",
                        "The socket is its owner's only (mode 0600): run as the user who started the host.", e),
                    _ => new BadInputException($"cannot connect to the control API socket {SocketPath}: {socket.Message}", null, e),
                };
            }
            catch (HttpRequestException e)
            {
                throw new BadInputException($"the control API at {SocketPath} did not answer: {e.Message}", null, e);
            }
            catch (TaskCanceledException e)
            {
                throw new BadInputException($"the control API at {SocketPath} did not answer within {http.Timeout.TotalSeconds:0.#} s", null, e);
            }
            using (response)
            {
                byte[] body = response.Content.ReadAsByteArrayAsync().GetAwaiter().GetResult();
                if (response.IsSuccessStatusCode)
                {
                    return body;
                }
                string message;
                try
                {
                    message = JsonSerializer.Deserialize(body, ControlApiJson.Default.FaultDocument)?.FaultMessage ?? "";
                }
                catch (JsonException)
                {
                    message = Encoding.UTF8.GetString(body);
                }
                throw new ControlApiRefusedException((int)response.StatusCode,
                    $"the host refused {request.Method} {request.RequestUri}: {(int)response.StatusCode} {response.ReasonPhrase}: {message}");
            }
        }
    }

    private BadInputException Missing(Exception e) =>
        new($"there is no control API socket {SocketPath}", "Start the host with nestor host run --api-socket PATH and give that PATH.", e);

    public void Dispose() => http.Dispose();
}
