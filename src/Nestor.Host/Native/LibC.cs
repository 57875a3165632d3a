using System.Runtime.InteropServices;

namespace Nestor.Host.Native;

/// <summary>The libc memory calls (mmap(2), munmap(2), madvise(2), mprotect(2), mincore(2)). All set errno, read back
/// with <see cref="Marshal.GetLastPInvokeError"/>.</summary>
internal static partial class LibC
{
    public const int PROT_NONE = 0x0;
    public const int PROT_READ = 0x1;
    public const int PROT_WRITE = 0x2;
    public const int PROT_EXEC = 0x4;
    public const int MAP_SHARED = 0x01;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public static readonly nint MAP_FAILED = -1;

    /// <summary>madvise(2): the range's contents may be dropped; a private anonymous page reads as zeros afterwards.</summary>
    public const int MADV_DONTNEED = 4;

    /// <summary>madvise(2): the range may be merged with identical pages by KSM (Documentation/admin-guide/mm/ksm.rst).</summary>
    public const int MADV_MERGEABLE = 12;

    /// <summary>madvise(2): undoes MADV_MERGEABLE, unmerging whatever KSM merged in the range.</summary>
    public const int MADV_UNMERGEABLE = 13;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint address, nuint length);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint address, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    public static partial int Mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "mincore", SetLastError = true)]
    public static unsafe partial int Mincore(nint address, nuint length, byte* vector);

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrError(int errno);

    public static string ErrorText(int errno) =>
        Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";
}
