using System.Net;
using System.Net.Sockets;
using Nestor.Containers.Network;

namespace Nestor.Containers.Tests.Network;

/// <summary>A bridge network of the test's own (bridge, subnet, state directory, nftables table, all uniquely
/// named), removed after the test whatever happened.</summary>
internal sealed class TestBridge : IDisposable
{
    public TestBridge(int prefixLength = 24)
    {
        string tag = NetworkTestSupport.Tag();
        var (second, third) = NetworkTestSupport.RandomSubnet();
        StateDirectory = Directory.CreateTempSubdirectory("nestor-net-").FullName;
        Network = new BridgeNetwork(new BridgeNetworkOptions($"ntb{tag}", $"10.{second}.{third}.0/{prefixLength}", StateDirectory, $"nestor_test_{tag}"));
    }

    public BridgeNetwork Network { get; }
    public string StateDirectory { get; }
    public string BridgeName => Network.Options.BridgeName;

    public string? FirewallTable() =>
        HostProcess.Run("nft", "list", "table", "ip", Network.Options.TableName) is { ExitCode: 0 } outcome ? outcome.Output : null;

    public void Dispose()
    {
        HostProcess.Run("ip", "link", "delete", BridgeName);
        HostProcess.Run("nft", "delete", "table", "ip", Network.Options.TableName);
        Directory.Delete(StateDirectory, recursive: true);
    }
}

public class BridgeNetworkTests
{
    private static bool LinkExists(string name) => HostProcess.Run("ip", "link", "show", name).ExitCode == 0;

    [Fact]
    public void AttachGivesEth0WithItsAddressAndTheDefaultRouteAndDetachRemovesIt()
    {
        using var bridge = new TestBridge();
        using var container = new NamespaceProcess(["sleep", "600"]);
        string id = $"attach-{NetworkTestSupport.Tag()}";
        var attachment = bridge.Network.Attach(id, container.Pid, NetworkMode.Bridge, []);
        try
        {
            Assert.True(bridge.Network.Subnet.Contains(IPAddress.Parse(attachment.Address!)));
            Assert.Equal(bridge.Network.Subnet.Gateway.ToString(), attachment.Gateway);
            string addresses = container.Run("ip", "-4", "-o", "address", "show", "dev", "eth0").Output;
            Assert.Contains($"inet {attachment.Address}/{bridge.Network.Subnet.PrefixLength}", addresses);
            Assert.Contains($"default via {attachment.Gateway} dev eth0", container.Run("ip", "route").Output);
            Assert.Contains("UP", container.Run("ip", "-o", "link", "show", "lo").Output.Split('>')[0]);
            // The host end is on the bridge, the bridge has the gateway address.
            Assert.Contains($"master {bridge.BridgeName}", HostProcess.Check("ip", "-o", "link", "show", attachment.HostInterface!));
            Assert.Contains($"inet {attachment.Gateway}/", HostProcess.Check("ip", "-4", "-o", "address", "show", "dev", bridge.BridgeName));
            Assert.Equal([(IPAddress.Parse(attachment.Address!), id)], bridge.Network.Leases());
        }
        finally
        {
            bridge.Network.Detach(attachment);
        }
        Assert.False(LinkExists(attachment.HostInterface!));
        Assert.DoesNotContain("eth0", container.Run("ip", "-o", "link").Output);
        Assert.Empty(bridge.Network.Leases());
        // Detach twice is harmless (a second nestor rm after a crash).
        bridge.Network.Detach(attachment);
    }

    [Fact]
    public void TwoContainersPingEachOtherOverTheBridge()
    {
        using var bridge = new TestBridge();
        using var first = new NamespaceProcess(["sleep", "600"]);
        using var second = new NamespaceProcess(["sleep", "600"]);
        var one = bridge.Network.Attach($"ping-a-{NetworkTestSupport.Tag()}", first.Pid, NetworkMode.Bridge, []);
        try
        {
            var two = bridge.Network.Attach($"ping-b-{NetworkTestSupport.Tag()}", second.Pid, NetworkMode.Bridge, []);
            try
            {
                Assert.NotEqual(one.Address, two.Address);
                var ping = first.Run("busybox", "ping", "-c", "2", "-W", "3", two.Address!);
                Assert.True(ping.ExitCode == 0, ping.ToString());
                Assert.Contains("2 packets received", ping.Output);
                Assert.Equal(0, second.Run("busybox", "ping", "-c", "1", "-W", "3", one.Address!).ExitCode);
            }
            finally
            {
                bridge.Network.Detach(two);
            }
        }
        finally
        {
            bridge.Network.Detach(one);
        }
    }

    /// <summary>busybox httpd inside answers on the host's loopback through the forwarder, and from another network
    /// namespace (a "remote client" on a veth of its own) through DNAT alone: with the forwarder stopped, the client
    /// still gets the page and the loopback does not. After detach, neither does.</summary>
    [Fact]
    public void PublishedPortAnswersOnLoopbackThroughTheForwarderAndFromOutsideThroughDnat()
    {
        using var bridge = new TestBridge();
        string token = $"hello-{Guid.NewGuid():N}";
        string webRoot = NetworkTestSupport.WebRoot(token);
        string tag = NetworkTestSupport.Tag();
        int hostPort = NetworkTestSupport.FreePort();
        try
        {
            using var container = new NamespaceProcess(["busybox", "httpd", "-f", "-p", "80", "-h", webRoot]);
            using var client = new ClientNamespace();
            string hostAddress = client.HostAddress;
            var attachment = bridge.Network.Attach($"web-{tag}", container.Pid, NetworkMode.Bridge, [new PortMapping("0.0.0.0", hostPort, 80)]);
            try
            {
                using (bridge.Network.StartForwarding(attachment))
                {
                    Assert.Equal(token, NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{hostPort}/")?.Trim());
                }
                Assert.Null(NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{hostPort}/"));
                Assert.Equal(token, NetworkTestSupport.Curl(client.Run, $"http://{hostAddress}:{hostPort}/")?.Trim());
                Assert.Contains($"tcp . {hostPort} : {attachment.Address} . 80", bridge.FirewallTable());
            }
            finally
            {
                bridge.Network.Detach(attachment);
            }
            Assert.DoesNotContain($"{hostPort}", bridge.FirewallTable());
            Assert.Null(NetworkTestSupport.Curl(client.Run, $"http://{hostAddress}:{hostPort}/"));
            Assert.Empty(bridge.Network.Leases());
        }
        finally
        {
            Directory.Delete(webRoot, recursive: true);
        }
    }

    /// <summary>UDP both ways: to 127.0.0.1 through the forwarder (a published 0.0.0.0 port), and from the client
    /// namespace through DNAT to a port published on one host address only (the <c>ports_at</c> map).</summary>
    [Fact]
    public void UdpPortsAnswerThroughTheForwarderAndThroughDnatOnAGivenAddress()
    {
        using var bridge = new TestBridge();
        using var container = new NamespaceProcess([UdpEcho.Program, "serve", "5353"]);
        using var client = new ClientNamespace();
        int anyPort = NetworkTestSupport.FreePort(), addressPort = NetworkTestSupport.FreePort();
        var attachment = bridge.Network.Attach($"udp-{NetworkTestSupport.Tag()}", container.Pid, NetworkMode.Bridge,
            [new PortMapping("0.0.0.0", anyPort, 5353, "udp"), new PortMapping(client.HostAddress, addressPort, 5353, "UDP")]);
        try
        {
            using (bridge.Network.StartForwarding(attachment))
            {
                var local = HostProcess.Run(UdpEcho.Program, "ask", "127.0.0.1", anyPort.ToString(), "from-loopback");
                Assert.True(local.ExitCode == 0, local.ToString());
                Assert.Equal("from-loopback", local.Output.Trim());
            }
            var remote = client.Run([UdpEcho.Program, "ask", client.HostAddress, addressPort.ToString(), "from-outside"]);
            Assert.True(remote.ExitCode == 0, remote.ToString());
            Assert.Equal("from-outside", remote.Output.Trim());
            Assert.Contains($"{client.HostAddress} . udp . {addressPort} : {attachment.Address} . 5353", bridge.FirewallTable());
        }
        finally
        {
            bridge.Network.Detach(attachment);
        }
        Assert.NotEqual(0, client.Run([UdpEcho.Program, "ask", client.HostAddress, addressPort.ToString(), "after-detach"]).ExitCode);
        Assert.DoesNotContain($"{addressPort}", bridge.FirewallTable());
    }

    [Fact]
    public void PortInUseIsRefusedBeforeAnythingIsMade()
    {
        using var bridge = new TestBridge();
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var container = new NamespaceProcess(["sleep", "600"]);
        string id = $"busy-{NetworkTestSupport.Tag()}";
        var refusal = Assert.Throws<ContainerNetworkException>(() =>
            bridge.Network.Attach(id, container.Pid, NetworkMode.Bridge, [new PortMapping("127.0.0.1", port, 80)]));
        Assert.Equal($"port {port} is already in use on 127.0.0.1", refusal.Message);
        Assert.NotNull(refusal.Advice);
        Assert.False(LinkExists(BridgeNetwork.HostInterfaceFor(id)));
        Assert.Empty(bridge.Network.Leases());
    }

    [Fact]
    public void ExhaustedRangeIsRefusedAndTheFailedAttachLeavesNothing()
    {
        // A /30 has one container address (the first is the gateway, the last the broadcast address).
        using var bridge = new TestBridge(prefixLength: 30);
        using var first = new NamespaceProcess(["sleep", "600"]);
        using var second = new NamespaceProcess(["sleep", "600"]);
        var one = bridge.Network.Attach($"full-a-{NetworkTestSupport.Tag()}", first.Pid, NetworkMode.Bridge, []);
        try
        {
            string id = $"full-b-{NetworkTestSupport.Tag()}";
            var refusal = Assert.Throws<ContainerNetworkException>(() => bridge.Network.Attach(id, second.Pid, NetworkMode.Bridge, []));
            Assert.Contains($"the address range {bridge.Network.Subnet} of bridge {bridge.BridgeName} is exhausted", refusal.Message);
            Assert.False(LinkExists(BridgeNetwork.HostInterfaceFor(id)));
            Assert.Single(bridge.Network.Leases());
        }
        finally
        {
            bridge.Network.Detach(one);
        }
    }

    [Fact]
    public void NoneBringsUpOnlyLoopback()
    {
        using var bridge = new TestBridge();
        using var container = new NamespaceProcess(["sleep", "600"]);
        Assert.Contains("DOWN", container.Run("ip", "-o", "link", "show", "lo").Output);
        var attachment = bridge.Network.Attach($"none-{NetworkTestSupport.Tag()}", container.Pid, NetworkMode.None, []);
        Assert.Null(attachment.Address);
        string links = container.Run("ip", "-o", "link").Output;
        Assert.Single(links.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("LOOPBACK,UP", links);
        Assert.Equal(0, container.Run("busybox", "ping", "-c", "1", "-W", "2", "127.0.0.1").ExitCode);
        Assert.False(LinkExists(bridge.BridgeName));
    }
}
