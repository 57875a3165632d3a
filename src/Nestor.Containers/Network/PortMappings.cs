using System.Net;

namespace Nestor.Containers.Network;

/// <summary>Checks and normal forms of <c>-p</c> mappings shared by the bridge and slirp4netns networks.</summary>
internal static class PortMappings
{
    /// <summary>The mapping with its protocol in lower case and its host address given (0.0.0.0 when none was);
    /// a <see cref="ContainerNetworkException"/> for a protocol other than tcp/udp, a port out of range or a host
    /// address that is not IPv4.</summary>
    public static PortMapping Normalize(PortMapping port)
    {
        string protocol = port.Protocol.ToLowerInvariant();
        if (protocol is not ("tcp" or "udp"))
        {
            throw new ContainerNetworkException($"'{port.Protocol}' is not a protocol a port can be published for", "Use /tcp (the default) or /udp");
        }
        if (port.HostPort is < 1 or > 65535 || port.ContainerPort is < 1 or > 65535)
        {
            throw new ContainerNetworkException($"port {port.HostPort}:{port.ContainerPort} is out of range", "Ports are 1 to 65535");
        }
        string host = string.IsNullOrEmpty(port.HostAddress) ? "0.0.0.0" : port.HostAddress;
        if (!IPAddress.TryParse(host, out var parsed) || parsed.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            throw new ContainerNetworkException($"'{host}' is not an IPv4 host address to publish on", "Give -p IPV4:HOSTPORT:CONTAINERPORT, e.g. -p 127.0.0.1:8080:80");
        }
        return port with { HostAddress = host, Protocol = protocol };
    }

    public static IPEndPoint ListenEndPoint(PortMapping port) => new(IPAddress.Parse(port.HostAddress), port.HostPort);
}
