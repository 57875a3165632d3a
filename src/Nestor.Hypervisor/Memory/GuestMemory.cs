using System.Buffers.Binary;
using Nestor.Host;
using Nestor.Hypervisor.Errors;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Memory;

/// <summary>A VM's RAM: guest-physical regions, each backed by an anonymous host mapping that is allocated page by
/// page as the guest touches it. Under a VMM a page's bytes may be elsewhere (shared copy-on-write, or in the host
/// swap file, its memory here given back: <see cref="IGuestPageSource"/>); every access here goes through the P2M
/// then, so that the VMM reads what the guest would, and writes only pages that are the guest's own.</summary>
public sealed partial class GuestMemory : IDisposable
{
    private readonly (RamRegion Region, HostMemory Backing)[] regions;
    private IGuestPageSource? elsewhere;

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

    /// <summary>The bytes at [<paramref name="address"/>, +<paramref name="length"/>), which must be RAM, to read or
    /// write: under a VMM, pages of it that were shared or swapped out are first made the VM's own again (a private
    /// copy, or read back in). To only read, <see cref="Read"/> leaves them shared.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Part of the range is not RAM.</exception>
    public Span<byte> Span(GuestPhysical address, int length)
    {
        var span = Home(address, length);
        if (elsewhere is { AnyReleased: true } source)
        {
            source.BringHome(address.Value, (ulong)length);
        }
        return span;
    }

    /// <summary>Copies the bytes at <paramref name="address"/>, which must be RAM, into <paramref name="destination"/>:
    /// what the guest sees there, also where a page is shared (read from the shared frame, which stays shared) or in
    /// the host swap file (read back in).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Part of the range is not RAM.</exception>
    public void Read(GuestPhysical address, Span<byte> destination)
    {
        var home = Home(address, destination.Length);
        if (elsewhere is not { AnyReleased: true } source)
        {
            home.CopyTo(destination);
            return;
        }
        // Page by page: each may be elsewhere.
        int done = 0;
        while (done < destination.Length)
        {
            ulong at = address.Value + (ulong)done;
            int chunk = (int)Math.Min((ulong)(destination.Length - done), 0x1000 - (at & 0xFFF));
            var part = destination.Slice(done, chunk);
            if (!source.ReadReleased(at, part))
            {
                home.Slice(done, chunk).CopyTo(part);
            }
            done += chunk;
        }
    }

    /// <summary>The VM's own memory at [<paramref name="address"/>, +<paramref name="length"/>), without asking where
    /// the bytes are: for the P2M, which knows (a page's home).</summary>
    internal Span<byte> Home(GuestPhysical address, int length)
    {
        int i = FindRegion(address, (ulong)length);
        if (i < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(address),
                $"{address}+0x{length:x} is not inside guest RAM ({Configuration.Size.Format(Size)})");
        }
        return regions[i].Backing.Slice(address.Value - regions[i].Region.Start.Value, length);
    }

    /// <summary>The P2M whose pages may be away from their homes now (null: none). One at a time: a VM's runs each
    /// have their own P2M, the previous one having brought everything home when it was disposed.</summary>
    internal IGuestPageSource? PageSource
    {
        get => elsewhere;
        set => elsewhere = value is not null && elsewhere is { AnyReleased: true } && elsewhere != value
            ? throw new InvalidOperationException("another P2M of this VM still has guest pages away from their homes: dispose it first")
            : value;
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
            Read(address, destination[..n]);
        }
        return n;
    }

    public void Write(GuestPhysical address, ReadOnlySpan<byte> data) => data.CopyTo(Span(address, data.Length));

    public void WriteUInt64(GuestPhysical address, ulong value) =>
        BinaryPrimitives.WriteUInt64LittleEndian(Span(address, 8), value);

    public void WriteUInt32(GuestPhysical address, uint value) =>
        BinaryPrimitives.WriteUInt32LittleEndian(Span(address, 4), value);

    public ulong ReadUInt64(GuestPhysical address)
    {
        Span<byte> value = stackalloc byte[8];
        Read(address, value);
        return BinaryPrimitives.ReadUInt64LittleEndian(value);
    }

    public uint ReadUInt32(GuestPhysical address)
    {
        Span<byte> value = stackalloc byte[4];
        Read(address, value);
        return BinaryPrimitives.ReadUInt32LittleEndian(value);
    }

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

// Snapshots (issue 11): RAM as its touched pages. A page that is all zeros is left out: it reads the same as a page the
// guest never touched, and restoring it would only commit host memory the fresh VM need not have.
public sealed partial class GuestMemory : Persistence.ISnapshottable
{
    private const int PageSize = 4096;

    public string SectionTag => "RAM ";

    public ushort SectionVersion => 1;

    /// <summary>Writes the regions' layout, then every page holding a non-zero byte: its guest-physical address and
    /// its 4 KiB.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        var backed = Regions.ToList();
        writer.WriteInt32(backed.Count);
        foreach (var (region, backing) in backed)
        {
            writer.WriteUInt64(region.Start.Value);
            writer.WriteUInt64(region.Length);
            // Through the P2M (Read): a shared page's home holds nothing, its bytes are in the shared frame.
            var pages = new List<ulong>();
            var page = new byte[PageSize];
            for (ulong offset = 0; offset < region.Length; offset += PageSize)
            {
                Read(new GuestPhysical(region.Start.Value + offset), page);
                if (page.AsSpan().ContainsAnyExcept((byte)0))
                {
                    pages.Add(offset);
                }
            }
            writer.WriteInt32(pages.Count);
            foreach (ulong offset in pages)
            {
                Read(new GuestPhysical(region.Start.Value + offset), page);
                writer.WriteUInt64(region.Start.Value + offset);
                writer.WriteBytes(page);
            }
        }
    }

    /// <summary>Makes RAM what the snapshot holds: its pages written, every other page zero. The VM restored into
    /// must have the same RAM layout.</summary>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        var backed = Regions.ToList();
        int count = reader.ReadInt32();
        if (count != backed.Count)
        {
            throw reader.Invalid($"the snapshot has {count} RAM regions and this VM {backed.Count}: restore into a VM of the same memory size");
        }
        foreach (var (region, backing) in backed)
        {
            ulong start = reader.ReadUInt64(), length = reader.ReadUInt64();
            if (start != region.Start.Value || length != region.Length)
            {
                throw reader.Invalid($"a RAM region at 0x{start:x}+0x{length:x} where this VM has 0x{region.Start.Value:x}+0x{region.Length:x}");
            }
            if (elsewhere is { AnyReleased: true } source)
            {
                source.BringHome(start, length); // every page is written: none may stay shared or swapped out
            }
            int pages = reader.ReadInt32();
            ulong next = 0; // pages below it are restored or cleared
            for (int i = 0; i < pages; i++)
            {
                ulong address = reader.ReadUInt64();
                ulong offset = address - start;
                if (address < start || offset >= length || (offset & (PageSize - 1)) != 0 || offset < next)
                {
                    throw reader.Invalid($"page 0x{address:x} is not the next page of the region at 0x{start:x}");
                }
                ClearNonZero(backing, next, offset);
                reader.ReadBytes(PageSize).CopyTo(backing.Slice(offset, PageSize));
                next = offset + PageSize;
            }
            ClearNonZero(backing, next, length);
        }
    }

    // Only pages that hold something are written: reading an untouched anonymous page commits no memory, writing does.
    private static void ClearNonZero(HostMemory backing, ulong from, ulong to)
    {
        for (ulong offset = from; offset < to; offset += PageSize)
        {
            var page = backing.Slice(offset, PageSize);
            if (page.ContainsAnyExcept((byte)0))
            {
                page.Clear();
            }
        }
    }
}
