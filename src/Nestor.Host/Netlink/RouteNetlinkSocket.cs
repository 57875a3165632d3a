using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Nestor.Host.Native;

namespace Nestor.Host.Netlink;

/// <summary>A NETLINK_ROUTE socket (rtnetlink(7)) and the link, address and route requests container networking
/// needs. A netlink socket belongs to the network namespace it was created in, for its whole life: one opened with
/// <see cref="OpenInNetworkNamespaceOf"/> configures a container's interfaces from the host's process. Every request
/// asks for an acknowledgement; a refusal is a <see cref="HostCallException"/> with the kernel's errno.</summary>
public sealed class RouteNetlinkSocket : IDisposable
{
    // rtnetlink(7) message types and netlink(7) flags.
    private const ushort RTM_NEWLINK = 16, RTM_DELLINK = 17, RTM_GETLINK = 18, RTM_NEWADDR = 20, RTM_DELADDR = 21, RTM_NEWROUTE = 24;
    private const ushort NLMSG_ERROR = 2, NLMSG_DONE = 3;
    private const ushort NLM_F_REQUEST = 0x1, NLM_F_ACK = 0x4, NLM_F_EXCL = 0x200, NLM_F_CREATE = 0x400;
    // if_link.h / veth.h / if_addr.h / rtnetlink.h attribute numbers.
    private const ushort IFLA_IFNAME = 3, IFLA_MTU = 4, IFLA_MASTER = 10, IFLA_LINKINFO = 18, IFLA_NET_NS_PID = 19;
    private const ushort IFLA_INFO_KIND = 1, IFLA_INFO_DATA = 2, VETH_INFO_PEER = 1;
    private const ushort IFA_ADDRESS = 1, IFA_LOCAL = 2;
    private const ushort RTA_GATEWAY = 5;
    private const byte AF_INET = 2, RT_TABLE_MAIN = 254, RTPROT_BOOT = 3, RT_SCOPE_UNIVERSE = 0, RTN_UNICAST = 1;
    private const uint IFF_UP = 0x1;

    private readonly int _fd;
    private readonly byte[] _receiveBuffer = new byte[64 * 1024];
    private uint _sequence;

    private RouteNetlinkSocket(int fd)
    {
        _fd = fd;
    }

    /// <summary>A socket in the calling thread's network namespace.</summary>
    public static unsafe RouteNetlinkSocket Open()
    {
        int fd = LibCNet.Socket(LibCNet.AF_NETLINK, LibCNet.SOCK_RAW | LibCNet.SOCK_CLOEXEC, LibCNet.NETLINK_ROUTE);
        if (fd < 0)
        {
            throw HostCallException.LastError("socket(AF_NETLINK, NETLINK_ROUTE)");
        }
        // struct sockaddr_nl with nl_pid 0: the kernel assigns the port id.
        Span<byte> address = stackalloc byte[12];
        address.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(address, LibCNet.AF_NETLINK);
        fixed (byte* pointer = address)
        {
            if (LibCNet.Bind(fd, pointer, address.Length) != 0)
            {
                var error = HostCallException.LastError("bind of a netlink socket");
                LibCNet.Close(fd);
                throw error;
            }
        }
        return new RouteNetlinkSocket(fd);
    }

    /// <summary>A socket in the network namespace of process <paramref name="pid"/>. setns(2) into a network namespace
    /// is allowed in a multithreaded process (only the user and mount namespaces are not), but it changes the calling
    /// thread; so a thread of its own enters the namespace, opens the socket there and ends, leaving the caller's
    /// threads where they were.</summary>
    public static RouteNetlinkSocket OpenInNetworkNamespaceOf(int pid)
    {
        string path = $"/proc/{pid}/ns/net";
        int namespaceFd = LibCNet.Open(path, LibCNet.O_RDONLY | LibCNet.O_CLOEXEC);
        if (namespaceFd < 0)
        {
            throw HostCallException.LastError($"open of {path}");
        }
        try
        {
            RouteNetlinkSocket? socket = null;
            Exception? failure = null;
            var thread = new Thread(() =>
            {
                try
                {
                    if (LibCNet.Setns(namespaceFd, LibCNet.CLONE_NEWNET) != 0)
                    {
                        throw HostCallException.LastError($"setns to the network namespace of pid {pid}");
                    }
                    socket = Open();
                }
                catch (Exception e)
                {
                    failure = e;
                }
            })
            { IsBackground = true, Name = $"netns {pid}" };
            thread.Start();
            thread.Join();
            return failure is not null ? throw failure : socket!;
        }
        finally
        {
            LibCNet.Close(namespaceFd);
        }
    }

    /// <summary>The index of the interface named <paramref name="name"/>, or null when there is none (RTM_GETLINK).</summary>
    public int? FindLink(string name)
    {
        var request = new NetlinkMessage(RTM_GETLINK, NLM_F_REQUEST).InterfaceHeader(0).Attribute(IFLA_IFNAME, name);
        int? index = null;
        int error = Exchange(request, $"RTM_GETLINK of {name}", reply =>
        {
            if (reply.Type == RTM_NEWLINK)
            {
                index = BinaryPrimitives.ReadInt32LittleEndian(reply.Payload[4..]);
            }
        }, expectAcknowledgement: false);
        return error == Errno.ENODEV ? null : error != 0 ? throw new HostCallException($"RTM_GETLINK of {name}", error) : index;
    }

    /// <summary>The index of <paramref name="name"/>; a <see cref="HostCallException"/> (ENODEV) if there is none.</summary>
    public int LinkIndex(string name) => FindLink(name) ?? throw new HostCallException($"finding interface {name}", Errno.ENODEV);

    /// <summary>Creates a bridge (RTM_NEWLINK, IFLA_INFO_KIND "bridge"); EEXIST if the name is taken.</summary>
    public void CreateBridge(string name)
    {
        var request = new NetlinkMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .InterfaceHeader(0).Attribute(IFLA_IFNAME, name);
        int linkInfo = request.BeginNested(IFLA_LINKINFO);
        request.Attribute(IFLA_INFO_KIND, "bridge");
        request.EndNested(linkInfo);
        Check(request, $"creating bridge {name}");
    }

    /// <summary>Creates a veth pair: <paramref name="name"/> here and its peer <paramref name="peerName"/> created
    /// directly in the network namespace of <paramref name="peerNamespacePid"/> (VETH_INFO_PEER carries the peer's own
    /// ifinfomsg and attributes, IFLA_NET_NS_PID among them), so the peer never exists under its name on this side.</summary>
    public void CreateVethPair(string name, string peerName, int peerNamespacePid, int? mtu = null)
    {
        var request = new NetlinkMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .InterfaceHeader(0).Attribute(IFLA_IFNAME, name);
        if (mtu is { } linkMtu)
        {
            request.Attribute(IFLA_MTU, (uint)linkMtu);
        }
        int linkInfo = request.BeginNested(IFLA_LINKINFO);
        request.Attribute(IFLA_INFO_KIND, "veth");
        int data = request.BeginNested(IFLA_INFO_DATA);
        int peer = request.BeginNested(VETH_INFO_PEER);
        request.InterfaceHeader(0).Attribute(IFLA_IFNAME, peerName).Attribute(IFLA_NET_NS_PID, (uint)peerNamespacePid);
        if (mtu is { } peerMtu)
        {
            request.Attribute(IFLA_MTU, (uint)peerMtu);
        }
        request.EndNested(peer);
        request.EndNested(data);
        request.EndNested(linkInfo);
        Check(request, $"creating veth pair {name} / {peerName} (in the network namespace of pid {peerNamespacePid})");
    }

    /// <summary>Enslaves interface <paramref name="index"/> to the bridge <paramref name="masterIndex"/> (IFLA_MASTER).</summary>
    public void SetMaster(int index, int masterIndex) =>
        Check(new NetlinkMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK).InterfaceHeader(index).Attribute(IFLA_MASTER, (uint)masterIndex),
            $"attaching interface {index} to bridge {masterIndex}");

    /// <summary>Sets IFF_UP on interface <paramref name="index"/>.</summary>
    public void SetUp(int index) =>
        Check(new NetlinkMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK).InterfaceHeader(index, IFF_UP, IFF_UP), $"bringing interface {index} up");

    /// <summary>Deletes interface <paramref name="index"/> (RTM_DELLINK); for a veth end, the pair goes.</summary>
    public void DeleteLink(int index) =>
        Check(new NetlinkMessage(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK).InterfaceHeader(index), $"deleting interface {index}");

    /// <summary>Adds the IPv4 address <paramref name="address"/>/<paramref name="prefixLength"/> to interface
    /// <paramref name="index"/> (RTM_NEWADDR with IFA_LOCAL and IFA_ADDRESS); EEXIST if it has it.</summary>
    public void AddAddress(int index, IPAddress address, int prefixLength)
    {
        byte[] bytes = IPv4Bytes(address);
        Check(new NetlinkMessage(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
                .AddressHeader(AF_INET, (byte)prefixLength, index).Attribute(IFA_LOCAL, bytes).Attribute(IFA_ADDRESS, bytes),
            $"adding address {address}/{prefixLength} to interface {index}");
    }

    /// <summary>Removes an IPv4 address from interface <paramref name="index"/> (RTM_DELADDR).</summary>
    public void DeleteAddress(int index, IPAddress address, int prefixLength)
    {
        byte[] bytes = IPv4Bytes(address);
        Check(new NetlinkMessage(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)
                .AddressHeader(AF_INET, (byte)prefixLength, index).Attribute(IFA_LOCAL, bytes).Attribute(IFA_ADDRESS, bytes),
            $"removing address {address}/{prefixLength} from interface {index}");
    }

    /// <summary>Adds the IPv4 default route via <paramref name="gateway"/> to the main table (RTM_NEWROUTE,
    /// destination length 0, RTA_GATEWAY).</summary>
    public void AddDefaultRoute(IPAddress gateway) =>
        Check(new NetlinkMessage(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
                .RouteHeader(AF_INET, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST).Attribute(RTA_GATEWAY, IPv4Bytes(gateway)),
            $"adding the default route via {gateway}");

    public void Dispose() => LibCNet.Close(_fd);

    private static byte[] IPv4Bytes(IPAddress address) => address.AddressFamily == AddressFamily.InterNetwork
        ? address.GetAddressBytes()
        : throw new ArgumentException($"{address} is not an IPv4 address", nameof(address));

    private void Check(NetlinkMessage request, string operation)
    {
        int error = Exchange(request, operation, _ => { }, expectAcknowledgement: true);
        if (error != 0)
        {
            throw new HostCallException(operation, error);
        }
    }

    private readonly ref struct Reply(ushort type, ReadOnlySpan<byte> payload)
    {
        public ushort Type { get; } = type;
        public ReadOnlySpan<byte> Payload { get; } = payload;
    }

    private delegate void ReplyHandler(Reply reply);

    /// <summary>Sends the request and reads replies until its acknowledgement (an NLMSG_ERROR whose error is 0 or
    /// -errno) or, for a get without NLM_F_ACK, its answer. Returns the errno (0 for success).</summary>
    private unsafe int Exchange(NetlinkMessage request, string operation, ReplyHandler handle, bool expectAcknowledgement)
    {
        uint sequence = ++_sequence;
        ReadOnlySpan<byte> message = request.Finish(sequence);
        fixed (byte* pointer = message)
        {
            if (LibCNet.Send(_fd, pointer, (nuint)message.Length, 0) < 0)
            {
                throw HostCallException.LastError($"netlink send ({operation})");
            }
        }
        while (true)
        {
            nint received;
            fixed (byte* pointer = _receiveBuffer)
            {
                received = LibCNet.Recv(_fd, pointer, (nuint)_receiveBuffer.Length, 0);
            }
            if (received < 0)
            {
                throw HostCallException.LastError($"netlink receive ({operation})");
            }
            var data = _receiveBuffer.AsSpan(0, (int)received);
            while (data.Length >= 16)
            {
                int length = (int)BinaryPrimitives.ReadUInt32LittleEndian(data);
                ushort type = BinaryPrimitives.ReadUInt16LittleEndian(data[4..]);
                uint replySequence = BinaryPrimitives.ReadUInt32LittleEndian(data[8..]);
                if (length < 16 || length > data.Length)
                {
                    throw new InvalidDataException($"netlink reply of length {length} in {data.Length} bytes ({operation})");
                }
                var payload = data[16..length];
                if (replySequence == sequence)
                {
                    if (type == NLMSG_ERROR)
                    {
                        return -BinaryPrimitives.ReadInt32LittleEndian(payload);
                    }
                    if (type == NLMSG_DONE)
                    {
                        return 0;
                    }
                    handle(new Reply(type, payload));
                    if (!expectAcknowledgement)
                    {
                        return 0;
                    }
                }
                data = data[Math.Min((length + 3) & ~3, data.Length)..];
            }
        }
    }

    private static class Errno
    {
        public const int ENODEV = 19;
    }

    /// <summary>Decodes a NUL-terminated name attribute (for diagnostics).</summary>
    internal static string DecodeName(ReadOnlySpan<byte> value) => Encoding.UTF8.GetString(value.TrimEnd((byte)0));
}
