using System.Net;
using System.Security.Cryptography;
using System.Text;
using Nestor.Host;
using Nestor.Host.Netlink;

namespace Nestor.Containers.Network;

/// <summary>Where and under which names <see cref="BridgeNetwork"/> keeps its shared state. The defaults are the
/// engine's; tests give each run its own bridge, subnet, state directory and table.</summary>
/// <param name="Subnet">CIDR; the default 10.77.0.0/16 stays clear of podman's 10.88.0.0/16 and Docker's
/// 172.17.0.0/16.</param>
public sealed record BridgeNetworkOptions(
    string BridgeName = "nestor0",
    string Subnet = "10.77.0.0/16",
    string StateDirectory = "/run/nestor/network",
    string TableName = "nestor");

/// <summary>Docker's <c>bridge</c> network for root: one bridge (<c>nestor0</c>, the subnet's first address as the
/// containers' gateway, created on first use and kept), a veth pair per container (the host end on the bridge, the
/// other end made directly inside the container's network namespace as <c>eth0</c>, with its address from the
/// <see cref="AddressPool"/> and the default route via the gateway), NAT and published ports through the
/// <see cref="NftablesFirewall"/>, and a <see cref="PortForwarder"/> per published port for connections from the
/// host itself. <c>none</c> brings only the container's loopback up; <c>host</c> has nothing to do (the engine leaves
/// the network namespace out of the spec). All links, addresses and routes are made through rtnetlink
/// (<see cref="RouteNetlinkSocket"/>).</summary>
public sealed class BridgeNetwork(BridgeNetworkOptions? options = null) : IContainerNetwork
{
    /// <summary>The name of the container's end of the pair, as Docker names it.</summary>
    public const string ContainerInterface = "eth0";

    private const int EEXIST = 17, ENODEV = 19, EPERM = 1;

    private readonly BridgeNetworkOptions _options = options ?? new BridgeNetworkOptions();
    private readonly Ipv4Subnet _subnet = Ipv4Subnet.Parse((options ?? new BridgeNetworkOptions()).Subnet);

    public BridgeNetworkOptions Options => _options;

    /// <summary>The bridge's subnet.</summary>
    public Ipv4Subnet Subnet => _subnet;

    private NftablesFirewall Firewall => new(_options.TableName, _options.BridgeName, _subnet);

    private AddressPool Pool => new(Path.Combine(_options.StateDirectory, $"{_options.BridgeName}.addresses"), _subnet, _options.BridgeName);

    /// <summary>The host end's name for a container: a hash of its id, so that it fits IFNAMSIZ (15 characters) and
    /// another process can find it from the id alone.</summary>
    public static string HostInterfaceFor(string containerId) =>
        "nv" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(containerId)))[..12];

    public NetworkAttachment Attach(string containerId, int pid, NetworkMode mode, IReadOnlyList<PortMapping> ports)
    {
        switch (mode)
        {
            case NetworkMode.Host:
                return new NetworkAttachment(containerId, mode, null, null, null, [], false) { NamespacePid = pid };
            case NetworkMode.None:
                using (var inside = OpenInside(pid))
                {
                    inside.SetUp(inside.LinkIndex("lo"));
                }
                return new NetworkAttachment(containerId, mode, null, null, null, [], false) { NamespacePid = pid };
        }

        if (RootDirectoryCalls.EffectiveUserId != 0)
        {
            throw RootlessRefusal(null);
        }
        var published = ports.Select(PortMappings.Normalize).ToList();
        // Ports first: a port already taken refuses the container before anything is made that would need undoing.
        foreach (var port in published)
        {
            PortForwarder.CheckFree(PortMappings.ListenEndPoint(port), port.Protocol);
        }

        Directory.CreateDirectory(_options.StateDirectory);
        IPAddress address;
        using (StateLock.Acquire(LockPath, TimeSpan.FromSeconds(30)))
        {
            EnsureBridge();
            Firewall.Ensure();
            EnableForwarding();
            address = Pool.Lease(containerId);
        }

        string hostInterface = HostInterfaceFor(containerId);
        var attachment = new NetworkAttachment(containerId, mode, address.ToString(), _subnet.Gateway.ToString(), hostInterface, published, false)
        { NamespacePid = pid };
        try
        {
            using (var host = RouteNetlinkSocket.Open())
            {
                host.CreateVethPair(hostInterface, ContainerInterface, pid);
                int index = host.LinkIndex(hostInterface);
                host.SetMaster(index, host.LinkIndex(_options.BridgeName));
                host.SetUp(index);
            }
            using (var inside = OpenInside(pid))
            {
                inside.SetUp(inside.LinkIndex("lo"));
                int eth0 = inside.LinkIndex(ContainerInterface);
                inside.AddAddress(eth0, address, _subnet.PrefixLength);
                inside.SetUp(eth0);
                inside.AddDefaultRoute(_subnet.Gateway);
            }
            foreach (var port in published)
            {
                Firewall.AddPort(port, address);
            }
            return attachment;
        }
        catch (Exception e)
        {
            Detach(attachment);
            throw e is ContainerNetworkException ? e
                : new ContainerNetworkException($"connecting container {containerId} (pid {pid}) to bridge {_options.BridgeName} failed: {e.Message}",
                    "Check that the container's process is still running and that this runs as root", e);
        }
    }

    /// <summary>Starts one <see cref="PortForwarder"/> per published port, relaying to the container's address.</summary>
    public IDisposable StartForwarding(NetworkAttachment attachment)
    {
        var forwarders = new List<PortForwarder>();
        if (attachment.Mode != NetworkMode.Bridge || attachment.Address is null)
        {
            return new Forwarders(forwarders);
        }
        var target = IPAddress.Parse(attachment.Address);
        try
        {
            foreach (var port in attachment.Ports)
            {
                forwarders.Add(PortForwarder.Start(PortMappings.ListenEndPoint(port), new IPEndPoint(target, port.ContainerPort), port.Protocol));
            }
        }
        catch
        {
            new Forwarders(forwarders).Dispose();
            throw;
        }
        return new Forwarders(forwarders);
    }

    /// <summary>Removes the veth pair (if the container's namespace has not taken it away already), the DNAT elements
    /// and the lease. Safe to call twice, and from another process than the one that attached.</summary>
    public void Detach(NetworkAttachment attachment)
    {
        if (attachment.Mode != NetworkMode.Bridge)
        {
            return;
        }
        if (attachment.HostInterface is { } hostInterface)
        {
            using var host = RouteNetlinkSocket.Open();
            if (host.FindLink(hostInterface) is { } index)
            {
                try
                {
                    host.DeleteLink(index);
                }
                catch (HostCallException e) when (e.ErrorNumber == ENODEV)
                {
                    // Gone meanwhile with the container's namespace: the pair dies with either end.
                }
            }
        }
        foreach (var port in attachment.Ports)
        {
            Firewall.RemovePort(port);
        }
        if (Directory.Exists(_options.StateDirectory))
        {
            using (StateLock.Acquire(LockPath, TimeSpan.FromSeconds(30)))
            {
                Pool.Release(attachment.ContainerId);
            }
        }
    }

    /// <summary>The containers' current leases (for <c>inspect</c> and tests).</summary>
    public IReadOnlyList<(IPAddress Address, string ContainerId)> Leases() => Pool.Leases;

    private string LockPath => Path.Combine(_options.StateDirectory, $"{_options.BridgeName}.lock");

    private static RouteNetlinkSocket OpenInside(int pid)
    {
        try
        {
            return RouteNetlinkSocket.OpenInNetworkNamespaceOf(pid);
        }
        catch (HostCallException e)
        {
            throw new ContainerNetworkException($"cannot enter the network namespace of pid {pid}: {e.Message}",
                "The container's first process must be running; entering another user's namespace needs root", e);
        }
    }

    /// <summary>Creates the bridge with the gateway address if it is missing and brings it up; an existing bridge
    /// and address are kept as they are.</summary>
    private void EnsureBridge()
    {
        using var host = RouteNetlinkSocket.Open();
        if (host.FindLink(_options.BridgeName) is not { } index)
        {
            try
            {
                host.CreateBridge(_options.BridgeName);
            }
            catch (HostCallException e) when (e.ErrorNumber == EPERM)
            {
                throw RootlessRefusal(e);
            }
            catch (HostCallException e) when (e.ErrorNumber == EEXIST)
            {
                // Made meanwhile by a process that does not take our lock: use it.
            }
            index = host.LinkIndex(_options.BridgeName);
        }
        try
        {
            host.AddAddress(index, _subnet.Gateway, _subnet.PrefixLength);
        }
        catch (HostCallException e) when (e.ErrorNumber == EEXIST)
        {
            // The bridge kept its address from an earlier container.
        }
        host.SetUp(index);
    }

    /// <summary>net.ipv4.ip_forward=1: without it the host does not route between the bridge and its other interfaces
    /// (ip-sysctl.txt), and neither NAT nor DNAT traffic passes.</summary>
    private static void EnableForwarding()
    {
        const string path = "/proc/sys/net/ipv4/ip_forward";
        if (File.ReadAllText(path).Trim() != "1")
        {
            File.WriteAllText(path, "1");
        }
    }

    private ContainerNetworkException RootlessRefusal(Exception? inner) => new(
        $"cannot create bridge {_options.BridgeName}: creating interfaces and NAT rules needs root (CAP_NET_ADMIN in the host's network namespace)",
        "As an unprivileged user, use rootless networking (slirp4netns), which nestor picks for rootless containers; or run as root, or use --network none",
        inner);

    private sealed class Forwarders(List<PortForwarder> forwarders) : IDisposable
    {
        public void Dispose()
        {
            foreach (var forwarder in forwarders)
            {
                forwarder.Dispose();
            }
            forwarders.Clear();
        }
    }
}
