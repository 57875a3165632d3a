using Nestor.Kvm.Native;

namespace Nestor.Kvm;

/// <summary>An anonymous, private, page-aligned host mapping (<c>mmap(MAP_ANONYMOUS|MAP_PRIVATE|MAP_NORESERVE)</c>)
/// used as the backing store of guest RAM. Pages are allocated by the host kernel on first touch, so a 64 MiB guest
/// that touches 1 MiB costs about 1 MiB of resident memory.</summary>
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
    public static HostMemory MapAnonymous(ulong length)
    {
        if (length == 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), "a mapping needs at least one byte");
        }
        ulong rounded = (length + 0xFFF) & ~0xFFFUL;
        nint result = LibC.Mmap(0, (nuint)rounded, LibC.PROT_READ | LibC.PROT_WRITE,
            LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_NORESERVE, -1, 0);
        if (result == LibC.MAP_FAILED)
        {
            int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
            throw new KvmException($"mmap of {rounded} bytes of guest memory", errno,
                "Ask for less guest memory (--memory)");
        }
        return new HostMemory(result, rounded);
    }

    /// <summary>The mapping as a span; <paramref name="offset"/> and <paramref name="length"/> are bounds-checked.</summary>
    public Span<byte> Slice(ulong offset, int length)
    {
        if (offset > Length || (ulong)length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"0x{offset:x}+{length} is outside a mapping of {Length} bytes");
        }
        return new Span<byte>((byte*)Address + offset, length);
    }

    public void Dispose()
    {
        nint a = Interlocked.Exchange(ref address, 0);
        if (a != 0)
        {
            LibC.Munmap(a, (nuint)Length);
        }
    }
}
