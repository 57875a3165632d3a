using System.Net;

namespace Nestor.Containers.Network;

/// <summary><c>-p</c> mappings: parsing Docker's notation, and the checks and normal form the bridge and slirp4netns
/// networks share.</summary>
public static class PortMappings
{
    /// <summary>Parses <c>[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]</c> (Docker's <c>-p</c>; no HOSTIP means every
    /// address, 0.0.0.0); a <see cref="ContainerNetworkException"/> saying what is wrong otherwise.</summary>
    public static PortMapping Parse(string text)
    {
        string[] protocolParts = text.Split('/');
        string protocol = protocolParts.Length == 2 ? protocolParts[1] : "tcp";
        string[] parts = protocolParts[0].Split(':');
        if (protocolParts.Length > 2 || parts.Length is < 2 or > 3
            || !int.TryParse(parts[^2], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int hostPort)
            || !int.TryParse(parts[^1], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int containerPort))
        {
            throw new ContainerNetworkException($"'{text}' is not a port mapping",
                "Write -p HOSTPORT:CONTAINERPORT, optionally with a host address before and /udp after: -p 127.0.0.1:8080:80/tcp");
        }
        return Normalize(new PortMapping(parts.Length == 3 ? parts[0] : "0.0.0.0", hostPort, containerPort, protocol));
    }

    /// <summary>The mapping with its protocol in lower case and its host address given (0.0.0.0 when none was);
    /// a <see cref="ContainerNetworkException"/> for a protocol other than tcp/udp, a port out of range or a host
    /// address that is not IPv4.</summary>
    internal static PortMapping Normalize(PortMapping port)
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

    internal static IPEndPoint ListenEndPoint(PortMapping port) => new(IPAddress.Parse(port.HostAddress), port.HostPort);
}
