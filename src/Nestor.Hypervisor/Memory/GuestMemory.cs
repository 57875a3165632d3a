using System.Buffers.Binary;
using Nestor.Host;
using Nestor.Hypervisor.Errors;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Memory;

/// <summary>A VM's RAM: guest-physical regions, each backed by an anonymous host mapping that is allocated page by
/// page as the guest touches it.</summary>
public sealed class GuestMemory : IDisposable
{
    private readonly (RamRegion Region, HostMemory Backing)[] regions;

    public GuestMemory(ulong memoryBytes)
    {
        var layout = GuestMemoryLayout.RamRegions(memoryBytes);
        regions = new (RamRegion, HostMemory)[layout.Count];
        try
        {
            for (int i = 0; i < layout.Count; i++)
            {
                regions[i] = (layout[i], MapRam(layout[i].Length));
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        Size = memoryBytes;
    }

    private static HostMemory MapRam(ulong length)
    {
        try
        {
            return HostMemory.MapAnonymous(length);
        }
        catch (HostCallException e)
        {
            throw new HostUnsupportedException($"guest memory cannot be mapped: {e.Message}", "Ask for less guest memory (--memory)", e);
        }
    }

    /// <summary>Total RAM in bytes.</summary>
    public ulong Size { get; }

    /// <summary>The RAM regions and their host backing, for engines that map them (KVM memory slots).</summary>
    public IEnumerable<(RamRegion Region, HostMemory Backing)> Regions => regions.Where(r => r.Backing is not null);

    /// <summary>True when [<paramref name="address"/>, +<paramref name="length"/>) is RAM in a single region.</summary>
    public bool IsRam(GuestPhysical address, ulong length) => FindRegion(address, length) >= 0;

    /// <summary>The bytes at [<paramref name="address"/>, +<paramref name="length"/>), which must be RAM.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Part of the range is not RAM.</exception>
    public Span<byte> Span(GuestPhysical address, int length)
    {
        int i = FindRegion(address, (ulong)length);
        if (i < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(address),
                $"{address}+0x{length:x} is not inside guest RAM ({Configuration.Size.Format(Size)})");
        }
        return regions[i].Backing.Slice(address.Value - regions[i].Region.Start.Value, length);
    }

    /// <summary>Copies as many bytes as are RAM starting at <paramref name="address"/> (for diagnostics).</summary>
    public int ReadAvailable(GuestPhysical address, Span<byte> destination)
    {
        int n = destination.Length;
        while (n > 0 && !IsRam(address, (ulong)n))
        {
            n--;
        }
        if (n > 0)
        {
            Span(address, n).CopyTo(destination);
        }
        return n;
    }

    public void Write(GuestPhysical address, ReadOnlySpan<byte> data) => data.CopyTo(Span(address, data.Length));

    public void WriteUInt64(GuestPhysical address, ulong value) =>
        BinaryPrimitives.WriteUInt64LittleEndian(Span(address, 8), value);

    public void WriteUInt32(GuestPhysical address, uint value) =>
        BinaryPrimitives.WriteUInt32LittleEndian(Span(address, 4), value);

    public ulong ReadUInt64(GuestPhysical address) => BinaryPrimitives.ReadUInt64LittleEndian(Span(address, 8));

    public uint ReadUInt32(GuestPhysical address) => BinaryPrimitives.ReadUInt32LittleEndian(Span(address, 4));

    private int FindRegion(GuestPhysical address, ulong length)
    {
        for (int i = 0; i < regions.Length; i++)
        {
            if (regions[i].Backing is not null && regions[i].Region.Contains(address, length))
            {
                return i;
            }
        }
        return -1;
    }

    public void Dispose()
    {
        foreach (var (_, backing) in regions)
        {
            backing?.Dispose();
        }
    }
}
