using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>Access rights of a host mapping (mprotect(2)'s PROT_ bits).</summary>
[Flags]
public enum HostProtection
{
    None = LibC.PROT_NONE,
    Read = LibC.PROT_READ,
    Write = LibC.PROT_WRITE,
    Execute = LibC.PROT_EXEC,
    ReadWrite = Read | Write,
}

/// <summary>The host's memory system calls on raw addresses, each failing with a <see cref="HostCallException"/>
/// that carries errno. <see cref="HostMemory"/> is the owning, bounds-checked form.</summary>
public static class MemoryCalls
{
    /// <summary>Host page size the calls work in.</summary>
    public const ulong PageSize = 0x1000;

    /// <summary>mmap(2) of <paramref name="length"/> bytes of private anonymous memory, not reserved in swap, so that
    /// the host kernel allocates each page on first touch.</summary>
    public static nint MapAnonymous(ulong length) =>
        Map(length, LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_NORESERVE, -1, "mmap of anonymous memory");

    /// <summary>mmap(2) of <paramref name="length"/> bytes of the file <paramref name="fd"/> from offset 0, shared and
    /// read-write (a device's shared page, such as KVM's <c>kvm_run</c>).</summary>
    public static nint MapShared(int fd, ulong length) => Map(length, LibC.MAP_SHARED, fd, $"mmap of fd {fd}");

    private static nint Map(ulong length, int flags, int fd, string what)
    {
        nint result = LibC.Mmap(0, (nuint)length, LibC.PROT_READ | LibC.PROT_WRITE, flags, fd, 0);
        return result == LibC.MAP_FAILED ? throw HostCallException.LastError($"{what} ({length} bytes)") : result;
    }

    /// <summary>munmap(2).</summary>
    public static void Unmap(nint address, ulong length)
    {
        if (LibC.Munmap(address, (nuint)length) != 0)
        {
            throw HostCallException.LastError($"munmap of 0x{address:x}+{length}");
        }
    }

    /// <summary>madvise(MADV_DONTNEED): gives the pages of [<paramref name="address"/>, +<paramref name="length"/>) back
    /// to the host kernel; a private anonymous page reads as zeros on its next touch.</summary>
    public static void Discard(nint address, ulong length)
    {
        if (LibC.Madvise(address, (nuint)length, LibC.MADV_DONTNEED) != 0)
        {
            throw HostCallException.LastError($"madvise(MADV_DONTNEED) of 0x{address:x}+{length}");
        }
    }

    /// <summary>madvise(MADV_MERGEABLE) or madvise(MADV_UNMERGEABLE): offers the pages of the range to the host
    /// kernel's same-page merging (KSM), or takes them back (unmerging those it merged).</summary>
    public static void SetMergeable(nint address, ulong length, bool mergeable)
    {
        if (LibC.Madvise(address, (nuint)length, mergeable ? LibC.MADV_MERGEABLE : LibC.MADV_UNMERGEABLE) != 0)
        {
            throw HostCallException.LastError($"madvise({(mergeable ? "MADV_MERGEABLE" : "MADV_UNMERGEABLE")}) of 0x{address:x}+{length}");
        }
    }

    /// <summary>mprotect(2): sets the access rights of the pages in the range.</summary>
    public static void Protect(nint address, ulong length, HostProtection protection)
    {
        if (LibC.Mprotect(address, (nuint)length, (int)protection) != 0)
        {
            throw HostCallException.LastError($"mprotect of 0x{address:x}+{length} to {protection}");
        }
    }

    /// <summary>mincore(2): whether the page at <paramref name="address"/> (page-aligned) is resident in host memory.</summary>
    public static unsafe bool IsResident(nint address)
    {
        byte vector = 0;
        if (LibC.Mincore(address, (nuint)PageSize, &vector) != 0)
        {
            throw HostCallException.LastError($"mincore of 0x{address:x}");
        }
        return (vector & 1) != 0;
    }

    /// <summary>mincore(2) over <paramref name="length"/> bytes from <paramref name="address"/> (page-aligned): how many
    /// of its pages are resident in host memory, in calls of up to 64 Ki pages (one byte of vector each).</summary>
    public static unsafe ulong ResidentPages(nint address, ulong length)
    {
        const ulong Chunk = 64 * 1024;
        byte* vector = stackalloc byte[(int)Chunk];
        ulong pages = (length + PageSize - 1) / PageSize, resident = 0;
        for (ulong first = 0; first < pages; first += Chunk)
        {
            ulong count = Math.Min(Chunk, pages - first);
            nint start = address + (nint)(first * PageSize);
            if (LibC.Mincore(start, (nuint)(count * PageSize), vector) != 0)
            {
                throw HostCallException.LastError($"mincore of 0x{start:x}+{count * PageSize}");
            }
            for (ulong i = 0; i < count; i++)
            {
                resident += (ulong)(vector[i] & 1);
            }
        }
        return resident;
    }
}
