using System.Diagnostics;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Nestor.Host;

namespace Nestor.Containers.Network;

/// <summary>Where <see cref="SlirpNetwork"/> keeps its API sockets and pid files, which program it runs and how.</summary>
/// <param name="StateDirectory">A directory the user running slirp4netns can write.</param>
/// <param name="CommandPrefix">Words put before the program (tests run it as the rootless user through setpriv; the
/// engine's monitor already is that user and gives none).</param>
public sealed record SlirpNetworkOptions(string StateDirectory, string Program = "slirp4netns", IReadOnlyList<string>? CommandPrefix = null)
{
    /// <summary>$XDG_RUNTIME_DIR/nestor/network, or /tmp/nestor-UID/network without it (Podman's choice too).</summary>
    public static SlirpNetworkOptions ForCurrentUser() => new(
        Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } runtimeDirectory
            ? Path.Combine(runtimeDirectory, "nestor", "network")
            : Path.Combine(Path.GetTempPath(), $"nestor-{RootDirectoryCalls.EffectiveUserId}", "network"));
}

/// <summary>Rootless networking through Debian's slirp4netns, as Podman does it: an unprivileged user cannot create
/// veths, bridges or NAT rules in the host's namespace, so a user-space TCP/IP stack in the host's namespace (libslirp)
/// talks to a tap device inside the container's namespace. <c>slirp4netns --configure --mtu=65520
/// --disable-host-loopback --api-socket S --ready-fd FD PID tap0</c> joins the namespaces of PID (its user namespace
/// first, which is what lets it act there without privileges), makes <c>tap0</c> with 10.0.2.100/24 and the default
/// route via 10.0.2.2, and writes to the ready fd when done. Published ports are asked of its JSON API
/// (<c>add_hostfwd</c>): slirp4netns itself listens on the host's port. It runs inside the container's monitor
/// (<see cref="StartForwarding"/>) and is killed at <see cref="Detach"/>.</summary>
public sealed class SlirpNetwork(SlirpNetworkOptions? options = null) : IContainerNetwork
{
    /// <summary>slirp4netns's fixed addresses in its default 10.0.2.0/24: the container's, the gateway (the host).</summary>
    public const string ContainerAddress = "10.0.2.100";
    public const string GatewayAddress = "10.0.2.2";
    public const string TapInterface = "tap0";

    private const int SIGTERM = 15;
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(15);

    private readonly SlirpNetworkOptions _options = options ?? SlirpNetworkOptions.ForCurrentUser();

    public SlirpNetworkOptions Options => _options;

    /// <summary>Records what the container will get; slirp4netns itself starts with <see cref="StartForwarding"/>.
    /// Published ports are checked free now, so that a taken port refuses the container before it runs.</summary>
    public NetworkAttachment Attach(string containerId, int pid, NetworkMode mode, IReadOnlyList<PortMapping> ports)
    {
        if (mode != NetworkMode.Bridge)
        {
            // host: the host's namespace; none: the runtime's own loopback. Nothing for slirp4netns to do.
            return new NetworkAttachment(containerId, mode, null, null, null, [], true) { NamespacePid = pid };
        }
        var published = ports.Select(PortMappings.Normalize).ToList();
        foreach (var port in published)
        {
            PortForwarder.CheckFree(PortMappings.ListenEndPoint(port), port.Protocol);
        }
        return new NetworkAttachment(containerId, mode, ContainerAddress, GatewayAddress, TapInterface, published, true) { NamespacePid = pid };
    }

    /// <summary>Starts slirp4netns for the container's namespace, waits for its readiness byte, publishes the ports
    /// through its API. Disposing the result kills it.</summary>
    public IDisposable StartForwarding(NetworkAttachment attachment)
    {
        if (attachment.Mode != NetworkMode.Bridge)
        {
            return new SlirpProcess(null, null, null);
        }
        int pid = attachment.NamespacePid ?? throw new ArgumentException("the attachment has no namespace pid", nameof(attachment));
        Directory.CreateDirectory(_options.StateDirectory);
        string apiSocket = ApiSocketPath(attachment.ContainerId);
        File.Delete(apiSocket);

        using var ready = new ReadinessPipe();
        var start = new ProcessStartInfo((_options.CommandPrefix ?? []).Concat([_options.Program]).First())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (string argument in (_options.CommandPrefix ?? []).Concat([_options.Program]).Skip(1).Concat([
            "--configure", "--mtu=65520", "--disable-host-loopback", "--api-socket", apiSocket,
            "--ready-fd", ready.WriteDescriptor.ToString(System.Globalization.CultureInfo.InvariantCulture),
            pid.ToString(System.Globalization.CultureInfo.InvariantCulture), TapInterface]))
        {
            start.ArgumentList.Add(argument);
        }
        var messages = new StringBuilder();
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new ContainerNetworkException($"{_options.Program} cannot be started: {e.Message}",
                "Install slirp4netns (apt-get install slirp4netns) for rootless networking, or use --network none", e);
        }
        ready.CloseWriteEnd();
        DataReceivedEventHandler collect = (_, line) =>
        {
            if (line.Data is not null)
            {
                lock (messages)
                {
                    messages.AppendLine(line.Data);
                }
            }
        };
        process.OutputDataReceived += collect;
        process.ErrorDataReceived += collect;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        var slirp = new SlirpProcess(process, apiSocket, PidFilePath(attachment.ContainerId));
        try
        {
            bool isReady;
            try
            {
                isReady = ready.WaitForByte(ReadyTimeout);
            }
            catch (TimeoutException)
            {
                isReady = false;
            }
            if (!isReady)
            {
                process.WaitForExit(TimeSpan.FromSeconds(1));
                string said;
                lock (messages)
                {
                    said = messages.ToString().Trim();
                }
                throw new ContainerNetworkException($"slirp4netns did not configure the network of pid {pid}: {(said.Length > 0 ? said : "no message")}",
                    said.Contains("/dev/net/tun", StringComparison.Ordinal)
                        ? "An unprivileged user needs /dev/net/tun readable and writable by all (chmod 0666 /dev/net/tun, as Debian's udev rule sets it; scripts/install-prerequisites does)"
                        : "The container's process must be running, and slirp4netns must be able to join its user namespace (same user)");
            }
            File.WriteAllText(slirp.PidFile!, process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            foreach (var port in attachment.Ports)
            {
                AddHostForward(apiSocket, port);
            }
            return slirp;
        }
        catch
        {
            slirp.Dispose();
            throw;
        }
    }

    /// <summary>Kills the container's slirp4netns (found by its pid file, so that another process than the monitor
    /// can do it) and removes its files; its forwarded ports close with it.</summary>
    public void Detach(NetworkAttachment attachment)
    {
        string pidFile = PidFilePath(attachment.ContainerId);
        if (File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out int pid) && IsSlirp(pid))
        {
            NetworkCalls.Signal(pid, SIGTERM);
        }
        File.Delete(pidFile);
        File.Delete(ApiSocketPath(attachment.ContainerId));
    }

    /// <summary>The pid of the container's running slirp4netns, or null.</summary>
    public int? ProcessOf(string containerId)
    {
        string pidFile = PidFilePath(containerId);
        return File.Exists(pidFile) && int.TryParse(File.ReadAllText(pidFile).Trim(), out int pid) && IsSlirp(pid) ? pid : null;
    }

    private static bool IsSlirp(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim() == "slirp4netns";
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>A Unix socket path must fit sun_path (108 bytes): the file is named by a hash of the id.</summary>
    private string ApiSocketPath(string containerId) => Path.Combine(_options.StateDirectory, $"slirp-{Hash(containerId)}.sock");

    private string PidFilePath(string containerId) => Path.Combine(_options.StateDirectory, $"slirp-{Hash(containerId)}.pid");

    private static string Hash(string containerId) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(containerId)))[..16];

    /// <summary>slirp4netns's API (docs: slirp4netns(1), "API SOCKET"): one JSON request per connection,
    /// <c>{"execute": "add_hostfwd", "arguments": {"proto", "host_addr", "host_port", "guest_port"}}</c>, answered
    /// with <c>{"return": {"id": N}}</c> or <c>{"error": {"desc": …}}</c>.</summary>
    private static void AddHostForward(string apiSocket, PortMapping port)
    {
        var request = new MemoryStream();
        using (var writer = new Utf8JsonWriter(request))
        {
            writer.WriteStartObject();
            writer.WriteString("execute", "add_hostfwd");
            writer.WriteStartObject("arguments");
            writer.WriteString("proto", port.Protocol);
            writer.WriteString("host_addr", port.HostAddress);
            writer.WriteNumber("host_port", port.HostPort);
            writer.WriteString("guest_addr", ContainerAddress);
            writer.WriteNumber("guest_port", port.ContainerPort);
            writer.WriteEndObject();
            writer.WriteEndObject();
        }
        string answer;
        using (var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            socket.Connect(new UnixDomainSocketEndPoint(apiSocket));
            socket.Send(request.ToArray());
            socket.Shutdown(SocketShutdown.Send);
            var reply = new MemoryStream();
            var buffer = new byte[4096];
            int count;
            while ((count = socket.Receive(buffer)) > 0)
            {
                reply.Write(buffer, 0, count);
            }
            answer = Encoding.UTF8.GetString(reply.ToArray());
        }
        using var document = JsonDocument.Parse(answer);
        if (document.RootElement.TryGetProperty("error", out var error))
        {
            string description = error.TryGetProperty("desc", out var desc) ? desc.GetString() ?? "" : error.ToString();
            throw new ContainerNetworkException($"port {port.HostPort} could not be forwarded on {port.HostAddress}: slirp4netns said {description} (is it already in use?)",
                $"Publish another host port (-p OTHER:{port.ContainerPort}); an unprivileged user cannot publish ports below 1024 unless net.ipv4.ip_unprivileged_port_start allows it");
        }
    }

    /// <summary>A running slirp4netns: disposing it terminates it (SIGTERM, then SIGKILL) and removes its files.</summary>
    private sealed class SlirpProcess(Process? process, string? apiSocket, string? pidFile) : IDisposable
    {
        public string? PidFile { get; } = pidFile;

        public void Dispose()
        {
            if (process is not null)
            {
                if (!process.HasExited)
                {
                    NetworkCalls.Signal(process.Id, SIGTERM);
                    if (!process.WaitForExit(TimeSpan.FromSeconds(5)))
                    {
                        process.Kill();
                    }
                }
                process.WaitForExit();
                process.Dispose();
            }
            foreach (string? file in new[] { apiSocket, PidFile })
            {
                if (file is not null)
                {
                    File.Delete(file);
                }
            }
        }
    }
}
