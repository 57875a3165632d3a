namespace Nestor.Host;

/// <summary>An anonymous, private, page-aligned host mapping (<c>mmap(MAP_ANONYMOUS|MAP_PRIVATE|MAP_NORESERVE)</c>),
/// the backing store of guest RAM and of the host's frame pool. Pages are allocated by the host kernel on first touch,
/// so a 64 MiB guest that touches 1 MiB costs about 1 MiB of resident memory; <see cref="Discard"/> gives pages back.</summary>
public sealed unsafe class HostMemory : IDisposable
{
    private nint address;

    private HostMemory(nint address, ulong length)
    {
        this.address = address;
        Length = length;
    }

    /// <summary>Size of the mapping in bytes.</summary>
    public ulong Length { get; }

    /// <summary>Host virtual address of the first byte.</summary>
    public nint Address => address != 0 ? address : throw new ObjectDisposedException(nameof(HostMemory));

    /// <summary>Maps <paramref name="length"/> bytes (rounded up to 4 KiB) of zeroed anonymous memory.</summary>
    /// <exception cref="HostCallException">mmap failed (errno in the exception).</exception>
    public static HostMemory MapAnonymous(ulong length)
    {
        if (length == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "a mapping needs at least one byte");
        }
        ulong rounded = (length + MemoryCalls.PageSize - 1) & ~(MemoryCalls.PageSize - 1);
        return new HostMemory(MemoryCalls.MapAnonymous(rounded), rounded);
    }

    /// <summary>The mapping as a span; <paramref name="offset"/> and <paramref name="length"/> are bounds-checked.</summary>
    public Span<byte> Slice(ulong offset, int length)
    {
        Check(offset, (ulong)length);
        return new Span<byte>((byte*)Address + offset, length);
    }

    /// <summary>Gives the pages of [<paramref name="offset"/>, +<paramref name="length"/>) (page-aligned) back to the
    /// host (<c>madvise(MADV_DONTNEED)</c>): they stop counting in the resident set and read as zeros afterwards.</summary>
    public void Discard(ulong offset, ulong length)
    {
        CheckPages(offset, length);
        MemoryCalls.Discard(Address + (nint)offset, length);
    }

    /// <summary>Sets the access rights of the pages of [<paramref name="offset"/>, +<paramref name="length"/>)
    /// (page-aligned) with <c>mprotect</c>.</summary>
    public void Protect(ulong offset, ulong length, HostProtection protection)
    {
        CheckPages(offset, length);
        MemoryCalls.Protect(Address + (nint)offset, length, protection);
    }

    /// <summary>Whether the page at <paramref name="offset"/> is resident in host memory now (<c>mincore</c>).</summary>
    public bool IsResident(ulong offset)
    {
        Check(offset, 1);
        return MemoryCalls.IsResident(Address + (nint)(offset & ~(MemoryCalls.PageSize - 1)));
    }

    /// <summary>Bytes of the mapping resident in host memory now (<c>mincore</c> over all of it): what it costs the
    /// host, which for a <c>MAP_NORESERVE</c> mapping is the pages written so far, less those discarded.</summary>
    public ulong ResidentBytes() => MemoryCalls.ResidentPages(Address, Length) * MemoryCalls.PageSize;

    private void Check(ulong offset, ulong length)
    {
        if (offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"0x{offset:x}+{length} is outside a mapping of {Length} bytes");
        }
    }

    private void CheckPages(ulong offset, ulong length)
    {
        Check(offset, length);
        if (((offset | length) & (MemoryCalls.PageSize - 1)) != 0)
        {
            throw new ArgumentException($"0x{offset:x}+0x{length:x} is not whole pages");
        }
    }

    public void Dispose()
    {
        nint a = Interlocked.Exchange(ref address, 0);
        if (a != 0)
        {
            MemoryCalls.Unmap(a, Length);
        }
    }
}
