using System.Buffers.Binary;
using Nestor.Hypervisor.Memory;

namespace Nestor.Hypervisor.Migration;

/// <summary>A copy of a VM's RAM in host memory, page by page in the order of its RAM regions: on the source, RAM as
/// the destination has it (what was sent last), which is what a page is compared with to find whether it changed; on
/// the destination, what arrived, installed into the VM once it is built. Pages are numbered by index (0..Pages-1);
/// <see cref="GuestFrame"/> and <see cref="IndexOf"/> convert to and from guest frame numbers, which the stream
/// carries.</summary>
public sealed class RamImage
{
    private const int PageSize = 4096;
    private readonly (ulong FirstFrame, long FirstIndex, long Count)[] regions;

    /// <summary>An all-zero image of RAM laid out as <paramref name="memory"/>'s regions.</summary>
    public RamImage(GuestMemory memory)
    {
        var list = new List<(ulong, long, long)>();
        long index = 0;
        foreach (var (region, _) in memory.Regions)
        {
            long count = (long)(region.Length / PageSize);
            list.Add((region.Start.Value / PageSize, index, count));
            index += count;
        }
        regions = [.. list];
        Pages = index;
        Bytes = new byte[index * PageSize];
    }

    /// <summary>Pages the image holds.</summary>
    public long Pages { get; }

    /// <summary>The pages' bytes, page <c>i</c> at <c>i * 4096</c>.</summary>
    public byte[] Bytes { get; }

    /// <summary>Page <paramref name="index"/>'s bytes.</summary>
    public Span<byte> Page(long index) => Bytes.AsSpan(checked((int)(index * PageSize)), PageSize);

    /// <summary>The guest frame of page <paramref name="index"/>.</summary>
    public ulong GuestFrame(long index)
    {
        foreach (var (first, at, count) in regions)
        {
            if (index >= at && index < at + count)
            {
                return first + (ulong)(index - at);
            }
        }
        throw new ArgumentOutOfRangeException(nameof(index), $"page {index} is past the image's {Pages}");
    }

    /// <summary>The index of guest frame <paramref name="frame"/>, or -1 when it is not RAM.</summary>
    public long IndexOf(ulong frame)
    {
        foreach (var (first, at, count) in regions)
        {
            if (frame >= first && frame < first + (ulong)count)
            {
                return at + (long)(frame - first);
            }
        }
        return -1;
    }

    /// <summary>The VM's live page of index <paramref name="index"/> in <paramref name="memory"/>.</summary>
    public static Span<byte> Live(GuestMemory memory, RamImage image, long index) =>
        memory.Span(new Machine.Addresses.GuestPhysical(image.GuestFrame(index) * PageSize), PageSize);

    /// <summary>Where page <c>index</c>'s bytes go.</summary>
    public delegate Span<byte> PageAt(long index);

    /// <summary>Applies one <c>PAGE</c> section's entries to the image.</summary>
    /// <returns>The pages it held.</returns>
    /// <exception cref="MigrationStreamException">An entry of a frame that is not RAM, or of an unknown kind.</exception>
    public int Apply(ReadOnlySpan<byte> payload) => Apply(payload, Page);

    /// <summary>Applies one <c>PAGE</c> section's entries to the pages <paramref name="target"/> gives (the VM's RAM,
    /// laid out as this image).</summary>
    public int Apply(ReadOnlySpan<byte> payload, PageAt target)
    {
        if (payload.Length < 8)
        {
            throw Bad("a PAGE section shorter than its count");
        }
        int count = BinaryPrimitives.ReadInt32LittleEndian(payload[4..]);
        int at = 8;
        for (int i = 0; i < count; i++)
        {
            if (payload.Length - at < 9)
            {
                throw Bad($"a PAGE section that ends inside entry {i} of {count}");
            }
            ulong frame = BinaryPrimitives.ReadUInt64LittleEndian(payload[at..]);
            byte kind = payload[at + 8];
            at += 9;
            long index = IndexOf(frame);
            if (index < 0)
            {
                throw Bad($"a page for guest frame 0x{frame:x}, which is not RAM of this VM");
            }
            switch (kind)
            {
                case MigrationStream.FilledPage when payload.Length - at >= 1:
                    target(index).Fill(payload[at]);
                    at += 1;
                    break;
                case MigrationStream.RawPage when payload.Length - at >= PageSize:
                    payload.Slice(at, PageSize).CopyTo(target(index));
                    at += PageSize;
                    break;
                default:
                    throw Bad($"page entry {i} of kind {kind} (or cut short)");
            }
        }
        if (at != payload.Length)
        {
            throw Bad($"a PAGE section with {payload.Length - at} bytes after its {count} entries");
        }
        return count;
    }

    private static MigrationStreamException Bad(string what) =>
        new($"the migration stream holds {what}", MigrationRefusal.Invalid, "Migrate between two Nestors of the same version");
}
