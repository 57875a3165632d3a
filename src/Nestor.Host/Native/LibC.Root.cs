using System.Runtime.InteropServices;

namespace Nestor.Host.Native;

/// <summary>The libc calls that change a process's root and program: chroot(2), chdir(2), execve(2), geteuid(2).
/// A class of its own rather than more of <see cref="LibC"/>, so that other parts adding process calls to LibC cannot
/// collide with these names.</summary>
internal static partial class LibCRoot
{
    [LibraryImport("libc", EntryPoint = "chroot", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Chroot(string path);

    [LibraryImport("libc", EntryPoint = "chdir", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Chdir(string path);

    [LibraryImport("libc", EntryPoint = "execve", SetLastError = true)]
    public static unsafe partial int Execve(byte* path, nint* arguments, nint* environment);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    public static partial uint Geteuid();
}
