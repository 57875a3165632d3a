using System.Runtime.InteropServices;
using System.Text;
using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>What a KVM statistic counts (bits 0–3 of the descriptor flags, <c>KVM_STATS_TYPE_*</c>).</summary>
public enum KvmStatisticKind
{
    Cumulative = 0,
    Instant = 1,
    Peak = 2,
    LinearHistogram = 3,
    LogarithmicHistogram = 4,
}

/// <summary>The unit of a KVM statistic (bits 4–7 of the descriptor flags, <c>KVM_STATS_UNIT_*</c>).</summary>
public enum KvmStatisticUnit
{
    None = 0,
    Bytes = 1,
    Seconds = 2,
    Cycles = 3,
    Boolean = 4,
}

/// <summary>Description of one statistic in a KVM binary statistics file.</summary>
/// <param name="Name">KVM's name, e.g. <c>exits</c>, <c>io_exits</c>, <c>pf_fixed</c>.</param>
/// <param name="Kind">Counter, instantaneous value, peak or histogram.</param>
/// <param name="Unit">Unit of the values.</param>
/// <param name="Exponent">Values are in units of Base^Exponent (e.g. -9 with base 10 for nanoseconds).</param>
/// <param name="PowerOfTwoBase">True when the exponent's base is 2, false for 10.</param>
/// <param name="Size">Number of 64-bit values (1 for scalars, the bucket count for histograms).</param>
/// <param name="Offset">Offset of the values inside the data block.</param>
public sealed record KvmStatisticDescriptor(string Name, KvmStatisticKind Kind, KvmStatisticUnit Unit, int Exponent,
    bool PowerOfTwoBase, int Size, int Offset);

/// <summary>One scalar statistic and its value at the time of reading.</summary>
public readonly record struct KvmStatistic(KvmStatisticDescriptor Descriptor, ulong Value)
{
    public string Name => Descriptor.Name;
}

/// <summary>A KVM binary statistics file (KVM_GET_STATS_FD, api.rst §4.133): a header, a block of descriptors read
/// once, and a data block re-read on every <see cref="Read"/>.</summary>
public sealed class KvmStatistics : IDisposable
{
    private readonly FileDescriptor file;
    private readonly int dataOffset;
    private readonly int dataLength;
    private readonly ulong[] data;

    internal unsafe KvmStatistics(FileDescriptor file)
    {
        this.file = file;
        Span<uint> header = stackalloc uint[6];
        fixed (uint* h = header)
        {
            ReadExactly(h, 24, 0, "KVM statistics header");
        }
        int nameSize = (int)header[1];
        int count = (int)header[2];
        int idOffset = (int)header[3];
        int descriptorOffset = (int)header[4];
        dataOffset = (int)header[5];

        byte[] id = new byte[nameSize];
        fixed (byte* p = id)
        {
            ReadExactly(p, nameSize, idOffset, "KVM statistics id");
        }
        Id = Encoding.ASCII.GetString(id).TrimEnd('\0');

        int descriptorSize = 16 + nameSize;
        byte[] descriptors = new byte[count * descriptorSize];
        fixed (byte* p = descriptors)
        {
            ReadExactly(p, descriptors.Length, descriptorOffset, "KVM statistics descriptors");
        }
        var list = new KvmStatisticDescriptor[count];
        int maxEnd = 0;
        for (int i = 0; i < count; i++)
        {
            ReadOnlySpan<byte> d = descriptors.AsSpan(i * descriptorSize, descriptorSize);
            uint flags = MemoryMarshal.Read<uint>(d);
            short exponent = MemoryMarshal.Read<short>(d[4..]);
            ushort size = MemoryMarshal.Read<ushort>(d[6..]);
            uint offset = MemoryMarshal.Read<uint>(d[8..]);
            ReadOnlySpan<byte> name = d[16..];
            int nul = name.IndexOf((byte)0);
            list[i] = new KvmStatisticDescriptor(
                Encoding.ASCII.GetString(nul < 0 ? name : name[..nul]),
                (KvmStatisticKind)(flags & 0xF),
                (KvmStatisticUnit)((flags >> 4) & 0xF),
                exponent,
                ((flags >> 8) & 0xF) == 1,
                size,
                (int)offset);
            maxEnd = Math.Max(maxEnd, (int)offset + size * 8);
        }
        Descriptors = list;
        dataLength = maxEnd;
        data = new ulong[(maxEnd + 7) / 8];
    }

    /// <summary>KVM's identifier of the statistics owner, e.g. <c>kvm-1234/vcpu-0</c>.</summary>
    public string Id { get; }

    /// <summary>All statistics KVM exposes for this VM or vCPU.</summary>
    public IReadOnlyList<KvmStatisticDescriptor> Descriptors { get; }

    /// <summary>Reads the current value of every scalar (non-histogram) statistic.</summary>
    public unsafe IReadOnlyList<KvmStatistic> Read()
    {
        fixed (ulong* p = data)
        {
            ReadExactly(p, dataLength, dataOffset, "KVM statistics data");
        }
        var result = new List<KvmStatistic>(Descriptors.Count);
        foreach (var d in Descriptors)
        {
            if (d.Size == 1)
            {
                result.Add(new KvmStatistic(d, data[d.Offset / 8]));
            }
        }
        return result;
    }

    private unsafe void ReadExactly(void* buffer, int length, int offset, string what)
    {
        int done = 0;
        while (done < length)
        {
            nint n = LibC.Pread(file.Value, (byte*)buffer + done, (nuint)(length - done), offset + done);
            if (n < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == LibC.EINTR)
                {
                    continue;
                }
                throw new KvmException($"reading {what}", errno);
            }
            if (n == 0)
            {
                throw new KvmException($"reading {what}", 0, "the statistics file ended early");
            }
            done += (int)n;
        }
    }

    public void Dispose() => file.Dispose();
}
