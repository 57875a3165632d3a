using System.Buffers.Binary;
using System.Net;

namespace Nestor.Containers.Network;

/// <summary>An IPv4 network in CIDR form (<c>10.77.0.0/16</c>): the bridge's gateway is its first host address,
/// containers get the others, up to the one before the broadcast address.</summary>
public readonly record struct Ipv4Subnet(uint Network, int PrefixLength)
{
    public static Ipv4Subnet Parse(string cidr)
    {
        string[] parts = cidr.Split('/');
        if (parts.Length != 2 || !IPAddress.TryParse(parts[0], out var address) || address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork
            || !int.TryParse(parts[1], out int prefix) || prefix is < 8 or > 30)
        {
            throw new ContainerNetworkException($"'{cidr}' is not an IPv4 subnet", "Write it as ADDRESS/PREFIX with a prefix from 8 to 30, e.g. 10.77.0.0/16");
        }
        uint mask = uint.MaxValue << (32 - prefix);
        return new Ipv4Subnet(BinaryPrimitives.ReadUInt32BigEndian(address.GetAddressBytes()) & mask, prefix);
    }

    /// <summary>The first host address, the bridge's own (.1).</summary>
    public IPAddress Gateway => ToAddress(Network + 1);

    /// <summary>The host addresses containers can have: after the gateway, before the broadcast address.</summary>
    public IEnumerable<IPAddress> ContainerAddresses
    {
        get
        {
            uint last = Network + (uint)((1L << (32 - PrefixLength)) - 2);
            for (uint value = Network + 2; value <= last; value++)
            {
                yield return ToAddress(value);
            }
        }
    }

    public bool Contains(IPAddress address) =>
        (BinaryPrimitives.ReadUInt32BigEndian(address.GetAddressBytes()) & (uint.MaxValue << (32 - PrefixLength))) == Network;

    public override string ToString() => $"{ToAddress(Network)}/{PrefixLength}";

    private static IPAddress ToAddress(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return new IPAddress(bytes);
    }
}
