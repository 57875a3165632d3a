using Nestor.Containers.Network;

namespace Nestor.Containers.Tests.Network;

/// <summary>Rootless networking as the unprivileged user nestor-rootless: its "container" is busybox httpd in a user
/// namespace (root mapped to the user) with a network namespace of its own, and slirp4netns runs as that user too
/// (setpriv, which execs, so the pid is slirp4netns's own).</summary>
public class SlirpNetworkTests
{
    private static readonly string[] AsRootlessUser = ["setpriv", "--reuid=nestor-rootless", "--regid=nestor-rootless", "--clear-groups", "--"];

    private static (SlirpNetwork Network, string StateDirectory) CreateNetwork()
    {
        string state = Directory.CreateTempSubdirectory("nestor-slirp-").FullName;
        // The rootless user makes its API socket and pid file there.
        HostProcess.Check("chmod", "777", state);
        return (new SlirpNetwork(new SlirpNetworkOptions(state, CommandPrefix: AsRootlessUser)), state);
    }

    [Fact]
    public void ForwardedPortReachesTheRootlessContainerAndStopsWithSlirp()
    {
        var (network, state) = CreateNetwork();
        string token = $"rootless-{Guid.NewGuid():N}";
        string webRoot = NetworkTestSupport.WebRoot(token);
        int hostPort = NetworkTestSupport.FreePort();
        try
        {
            using var container = new NamespaceProcess(["busybox", "httpd", "-f", "-p", "80", "-h", webRoot],
                ["--user", "--map-root-user", "--net"], AsRootlessUser);
            Assert.Equal("1001", File.ReadAllLines($"/proc/{container.Pid}/status").First(line => line.StartsWith("Uid:")).Split('\t')[1]);
            var attachment = network.Attach($"slirp-{NetworkTestSupport.Tag()}", container.Pid, NetworkMode.Bridge, [new PortMapping("127.0.0.1", hostPort, 80)]);
            Assert.True(attachment.Rootless);
            int slirpPid;
            using (network.StartForwarding(attachment))
            {
                slirpPid = network.ProcessOf(attachment.ContainerId) ?? throw new InvalidOperationException("no slirp4netns recorded");
                Assert.Equal("1001", File.ReadAllLines($"/proc/{slirpPid}/status").First(line => line.StartsWith("Uid:")).Split('\t')[1]);
                Assert.Contains($"inet {SlirpNetwork.ContainerAddress}/24", container.Run("ip", "-4", "-o", "address", "show", "dev", SlirpNetwork.TapInterface).Output);
                Assert.Contains($"default via {SlirpNetwork.GatewayAddress}", container.Run("ip", "route").Output);
                Assert.Equal(token, NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{hostPort}/")?.Trim());
            }
            Assert.False(Directory.Exists($"/proc/{slirpPid}") && File.ReadAllText($"/proc/{slirpPid}/comm").Trim() == "slirp4netns");
            Assert.Null(NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{hostPort}/"));
            Assert.Empty(Directory.GetFiles(state));
        }
        finally
        {
            Directory.Delete(webRoot, recursive: true);
            Directory.Delete(state, recursive: true);
        }
    }

    /// <summary>Another process (a <c>nestor container rm</c>) ends the container's slirp4netns through its pid file.</summary>
    [Fact]
    public void DetachKillsSlirpFromItsPidFile()
    {
        var (network, state) = CreateNetwork();
        try
        {
            using var container = new NamespaceProcess(["sleep", "600"], ["--user", "--map-root-user", "--net"], AsRootlessUser);
            var attachment = network.Attach($"slirp-{NetworkTestSupport.Tag()}", container.Pid, NetworkMode.Bridge, []);
            using var forwarding = network.StartForwarding(attachment);
            int slirpPid = network.ProcessOf(attachment.ContainerId) ?? throw new InvalidOperationException("no slirp4netns recorded");
            new SlirpNetwork(network.Options).Detach(attachment);
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (network.ProcessOf(attachment.ContainerId) is not null || IsRunningSlirp(slirpPid))
            {
                Assert.True(DateTime.UtcNow < deadline, "slirp4netns still runs after Detach");
                Thread.Sleep(20);
            }
        }
        finally
        {
            Directory.Delete(state, recursive: true);
        }
    }

    [Fact]
    public void PortInUseIsRefusedAtAttach()
    {
        var (network, state) = CreateNetwork();
        try
        {
            using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            listener.Start();
            int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
            var refusal = Assert.Throws<ContainerNetworkException>(() =>
                network.Attach("slirp-busy", Environment.ProcessId, NetworkMode.Bridge, [new PortMapping("127.0.0.1", port, 80)]));
            Assert.Equal($"port {port} is already in use on 127.0.0.1", refusal.Message);
        }
        finally
        {
            Directory.Delete(state, recursive: true);
        }
    }

    private static bool IsRunningSlirp(int pid)
    {
        try
        {
            // A zombie (killed, not yet reaped by its parent, this test's Process) counts as ended.
            string status = File.ReadAllText($"/proc/{pid}/status");
            return File.ReadAllText($"/proc/{pid}/comm").Trim() == "slirp4netns" && !status.Contains("State:\tZ");
        }
        catch (IOException)
        {
            return false;
        }
    }
}
