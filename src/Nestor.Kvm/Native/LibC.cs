using System.Runtime.InteropServices;

namespace Nestor.Kvm.Native;

/// <summary>The few libc entry points the KVM API needs (memory mappings are Nestor.Host's <c>MemoryCalls</c>). All
/// calls set errno, read back with <see cref="Marshal.GetLastPInvokeError"/>.</summary>
internal static partial class LibC
{
    public const int O_RDWR = 0x2;
    public const int O_CLOEXEC = 0x80000;

    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int ENOENT = 2;
    public const int EACCES = 13;
    public const int EPERM = 1;
    public const int ENXIO = 6;
    public const int ENODEV = 19;
    public const int EINVAL = 22;
    public const int ENOMEM = 12;
    public const int EFAULT = 14;
    public const int EEXIST = 17;
    public const int ENOTTY = 25;
    public const int E2BIG = 7;

    public const int SIG_BLOCK = 0;
    public const int SIG_UNBLOCK = 1;

    /// <summary>SIGUSR2: the signal that kicks a vCPU thread out of KVM_RUN (see <see cref="KvmVcpu.Kick"/>).
    /// The .NET runtime does not use it.</summary>
    public const int SIGUSR2 = 12;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, nint argument);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static unsafe partial int Ioctl(int fd, nuint request, void* argument);

    [LibraryImport("libc", EntryPoint = "pread", SetLastError = true)]
    public static unsafe partial nint Pread(int fd, void* buffer, nuint count, nint offset);

    [LibraryImport("libc", EntryPoint = "pthread_self")]
    public static partial nuint PthreadSelf();

    [LibraryImport("libc", EntryPoint = "pthread_kill")]
    public static partial int PthreadKill(nuint thread, int signal);

    [LibraryImport("libc", EntryPoint = "pthread_sigmask")]
    public static unsafe partial int PthreadSigmask(int how, ulong* set, ulong* oldSet);

    [LibraryImport("libc", EntryPoint = "sigtimedwait", SetLastError = true)]
    public static unsafe partial int Sigtimedwait(ulong* set, void* info, Timespec* timeout);

    [LibraryImport("libc", EntryPoint = "strerror")]
    private static partial nint StrError(int errno);

    public static string ErrorText(int errno) =>
        Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";

    [StructLayout(LayoutKind.Sequential)]
    public struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }
}
