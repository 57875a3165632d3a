using System.Net;
using Nestor.Containers.Network;
using Nestor.Host;
using Nestor.Host.Netlink;

namespace Nestor.Containers.Tests.Network;

/// <summary>Subnets, leases, -p parsing and the netlink socket's answers, without containers.</summary>
public class AddressingTests
{
    [Fact]
    public void SubnetGivesTheGatewayFirstAndContainersTheRestUpToTheBroadcastAddress()
    {
        var subnet = Ipv4Subnet.Parse("10.77.3.9/29");
        Assert.Equal("10.77.3.8/29", subnet.ToString());
        Assert.Equal(IPAddress.Parse("10.77.3.9"), subnet.Gateway);
        Assert.Equal(Enumerable.Range(10, 5).Select(last => IPAddress.Parse($"10.77.3.{last}")), subnet.ContainerAddresses);
        Assert.True(subnet.Contains(IPAddress.Parse("10.77.3.15")));
        Assert.False(subnet.Contains(IPAddress.Parse("10.77.3.16")));
        Assert.Throws<ContainerNetworkException>(() => Ipv4Subnet.Parse("10.77.0.0"));
        Assert.Throws<ContainerNetworkException>(() => Ipv4Subnet.Parse("10.77.0.0/31"));
    }

    [Fact]
    public void LeasesAreSharedThroughTheFileKeptPerContainerAndReleased()
    {
        string directory = Directory.CreateTempSubdirectory("nestor-ipam-").FullName;
        try
        {
            var subnet = Ipv4Subnet.Parse("10.77.0.0/29");
            string file = Path.Combine(directory, "leases");
            var pool = new AddressPool(file, subnet, "nestor0");
            var first = pool.Lease("a");
            Assert.Equal(IPAddress.Parse("10.77.0.2"), first);
            Assert.Equal(first, pool.Lease("a"));
            // A second pool on the same file (another nestor process) sees the lease.
            var other = new AddressPool(file, subnet, "nestor0");
            Assert.Equal(IPAddress.Parse("10.77.0.3"), other.Lease("b"));
            foreach (string id in new[] { "c", "d", "e" })
            {
                other.Lease(id);
            }
            var refusal = Assert.Throws<ContainerNetworkException>(() => pool.Lease("f"));
            Assert.Equal("the address range 10.77.0.0/29 of bridge nestor0 is exhausted: all 5 container addresses are taken", refusal.Message);
            pool.Release("a");
            Assert.Equal(first, other.Lease("f"));
            Assert.Equal(["b", "c", "d", "e", "f"], pool.Leases.Select(lease => lease.ContainerId).Order());
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void StateLockIsExclusiveUntilDisposed()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nestor-lock-{Guid.NewGuid():N}");
        try
        {
            using (StateLock.Acquire(path, TimeSpan.FromSeconds(1)))
            {
                var refusal = Assert.Throws<ContainerNetworkException>(() => StateLock.Acquire(path, TimeSpan.FromMilliseconds(100)));
                Assert.Contains("stayed taken", refusal.Message);
            }
            StateLock.Acquire(path, TimeSpan.FromMilliseconds(100)).Dispose();
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("8080:80", "0.0.0.0", 8080, 80, "tcp")]
    [InlineData("127.0.0.1:8080:80", "127.0.0.1", 8080, 80, "tcp")]
    [InlineData("5353:53/UDP", "0.0.0.0", 5353, 53, "udp")]
    public void PortMappingsParseDockersNotation(string text, string host, int hostPort, int containerPort, string protocol) =>
        Assert.Equal(new PortMapping(host, hostPort, containerPort, protocol), PortMappings.Parse(text));

    [Theory]
    [InlineData("80")]
    [InlineData("a:80")]
    [InlineData("8080:80/sctp")]
    [InlineData("8080:70000")]
    [InlineData("::1:8080:80")]
    public void BadPortMappingsAreRefused(string text) => Assert.Throws<ContainerNetworkException>(() => PortMappings.Parse(text));

    [Fact]
    public void NetlinkFindsLoopbackAndReportsTheKernelsRefusals()
    {
        using var socket = RouteNetlinkSocket.Open();
        Assert.Equal(1, socket.FindLink("lo"));
        Assert.Null(socket.FindLink($"nx{NetworkTestSupport.Tag()}"));
        // lo already has 127.0.0.1/8: the kernel's EEXIST comes back as the exception's errno.
        var refusal = Assert.Throws<HostCallException>(() => socket.AddAddress(1, IPAddress.Loopback, 8));
        Assert.Equal(17, refusal.ErrorNumber);
    }
}
