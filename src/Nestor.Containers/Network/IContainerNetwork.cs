namespace Nestor.Containers.Network;

/// <summary>Docker's network modes: <c>none</c> (loopback only), <c>bridge</c> (a veth pair on the host's bridge, NAT,
/// port forwarding) and <c>host</c> (the host's network namespace).</summary>
public enum NetworkMode
{
    None,
    Bridge,
    Host,
}

/// <summary><c>-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]</c>.</summary>
public sealed record PortMapping(string HostAddress, int HostPort, int ContainerPort, string Protocol = "tcp");

/// <summary>What a container's network is after setup: its address, gateway, host-side interface, the forwarded ports,
/// and what must be undone at teardown. Saved with the container so that another process can tear it down.</summary>
public sealed record NetworkAttachment(string ContainerId, NetworkMode Mode, string? Address, string? Gateway,
    string? HostInterface, IReadOnlyList<PortMapping> Ports, bool Rootless)
{
    /// <summary>The pid whose network namespace was attached (what slirp4netns joins when forwarding starts).</summary>
    public int? NamespacePid { get; init; }
}

/// <summary>Connects a container's network namespace (created by the runtime; known by the pid of its first process)
/// to the host, and disconnects it.</summary>
public interface IContainerNetwork
{
    NetworkAttachment Attach(string containerId, int pid, NetworkMode mode, IReadOnlyList<PortMapping> ports);

    /// <summary>Starts what must run for the container's lifetime inside its monitor process (user-space port
    /// forwarders for loopback, slirp4netns for rootless); disposing it stops them.</summary>
    IDisposable StartForwarding(NetworkAttachment attachment);

    void Detach(NetworkAttachment attachment);
}
