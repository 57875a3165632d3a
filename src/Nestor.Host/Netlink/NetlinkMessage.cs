using System.Buffers.Binary;
using System.Text;

namespace Nestor.Host.Netlink;

/// <summary>One netlink request being built: the nlmsghdr, a family header (ifinfomsg, ifaddrmsg, rtmsg) and
/// route attributes, nested ones included (netlink(7), rtnetlink(7); every part 4-byte aligned, NLMSG_ALIGN and
/// RTA_ALIGN).</summary>
internal sealed class NetlinkMessage
{
    private const int HeaderLength = 16;
    private byte[] _buffer = new byte[256];
    private int _length;

    public NetlinkMessage(ushort type, ushort flags)
    {
        _length = HeaderLength;
        BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(4), type);
        BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(6), flags);
    }

    /// <summary>struct ifinfomsg: family, type, index, flags, change mask.</summary>
    public NetlinkMessage InterfaceHeader(int index, uint flags = 0, uint change = 0, byte family = 0)
    {
        Span<byte> header = Reserve(16);
        header[0] = family;
        BinaryPrimitives.WriteInt32LittleEndian(header[4..], index);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], flags);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], change);
        return this;
    }

    /// <summary>struct ifaddrmsg: family, prefix length, flags, scope, index.</summary>
    public NetlinkMessage AddressHeader(byte family, byte prefixLength, int index)
    {
        Span<byte> header = Reserve(8);
        header[0] = family;
        header[1] = prefixLength;
        BinaryPrimitives.WriteInt32LittleEndian(header[4..], index);
        return this;
    }

    /// <summary>struct rtmsg: family, destination prefix length, table, protocol, scope, type.</summary>
    public NetlinkMessage RouteHeader(byte family, byte destinationLength, byte table, byte protocol, byte scope, byte type)
    {
        Span<byte> header = Reserve(12);
        header[0] = family;
        header[1] = destinationLength;
        header[4] = table;
        header[5] = protocol;
        header[6] = scope;
        header[7] = type;
        return this;
    }

    public NetlinkMessage Attribute(ushort type, ReadOnlySpan<byte> value)
    {
        Span<byte> attribute = Reserve(4 + value.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(attribute, (ushort)(4 + value.Length));
        BinaryPrimitives.WriteUInt16LittleEndian(attribute[2..], type);
        value.CopyTo(attribute[4..]);
        return this;
    }

    /// <summary>A NUL-terminated string attribute (IFLA_IFNAME, IFLA_INFO_KIND).</summary>
    public NetlinkMessage Attribute(ushort type, string value) => Attribute(type, Encoding.UTF8.GetBytes(value + "\0"));

    public NetlinkMessage Attribute(ushort type, uint value)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
        return Attribute(type, bytes);
    }

    /// <summary>Opens a nested attribute; the attributes appended until <see cref="EndNested"/> are its payload.</summary>
    public int BeginNested(ushort type)
    {
        int start = _length;
        Span<byte> attribute = Reserve(4);
        BinaryPrimitives.WriteUInt16LittleEndian(attribute[2..], type);
        return start;
    }

    public NetlinkMessage EndNested(int start)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(_buffer.AsSpan(start), (ushort)(_length - start));
        return this;
    }

    /// <summary>The finished message with sequence number <paramref name="sequence"/>.</summary>
    public ReadOnlySpan<byte> Finish(uint sequence)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(_buffer, (uint)_length);
        BinaryPrimitives.WriteUInt32LittleEndian(_buffer.AsSpan(8), sequence);
        return _buffer.AsSpan(0, _length);
    }

    private Span<byte> Reserve(int count)
    {
        int needed = _length + Align(count);
        if (needed > _buffer.Length)
        {
            Array.Resize(ref _buffer, Math.Max(needed, _buffer.Length * 2));
        }
        Span<byte> reserved = _buffer.AsSpan(_length, Align(count));
        reserved.Clear();
        _length += Align(count);
        return reserved[..count];
    }

    private static int Align(int length) => (length + 3) & ~3;
}
