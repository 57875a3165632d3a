using System.Runtime.InteropServices;

namespace Nestor.Host.Native;

/// <summary>The libc calls behind capabilities, prctl, resource limits and signals (capget(2), capset(2), prctl(2),
/// prlimit(2), kill(2)). A separate class from <see cref="LibC"/> so that the memory calls and these stay in their own
/// files. All set errno, read back with <see cref="Marshal.GetLastPInvokeError"/>.</summary>
internal static partial class SecurityLibC
{
    /// <summary>capget(2)/capset(2): _LINUX_CAPABILITY_VERSION_3, two 32-bit words per set (capabilities 0-63).</summary>
    public const uint LINUX_CAPABILITY_VERSION_3 = 0x20080522;

    public const int PR_SET_KEEPCAPS = 8;
    public const int PR_GET_KEEPCAPS = 7;
    public const int PR_GET_SECCOMP = 21;
    public const int PR_CAPBSET_READ = 23;
    public const int PR_CAPBSET_DROP = 24;
    public const int PR_SET_NO_NEW_PRIVS = 38;
    public const int PR_GET_NO_NEW_PRIVS = 39;
    public const int PR_CAP_AMBIENT = 47;
    public const int PR_CAP_AMBIENT_IS_SET = 1;
    public const int PR_CAP_AMBIENT_RAISE = 2;
    public const int PR_CAP_AMBIENT_LOWER = 3;
    public const int PR_CAP_AMBIENT_CLEAR_ALL = 4;

    [StructLayout(LayoutKind.Sequential)]
    public struct CapabilityHeader
    {
        public uint Version;
        public int Pid;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct CapabilityData
    {
        public uint Effective;
        public uint Permitted;
        public uint Inheritable;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct ResourceLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "capget", SetLastError = true)]
    public static unsafe partial int CapGet(CapabilityHeader* header, CapabilityData* data);

    [LibraryImport("libc", EntryPoint = "capset", SetLastError = true)]
    public static unsafe partial int CapSet(CapabilityHeader* header, CapabilityData* data);

    [LibraryImport("libc", EntryPoint = "prctl", SetLastError = true)]
    public static partial int Prctl(int option, nuint argument2, nuint argument3, nuint argument4, nuint argument5);

    [LibraryImport("libc", EntryPoint = "prlimit", SetLastError = true)]
    public static unsafe partial int Prlimit(int pid, int resource, ResourceLimit* newLimit, ResourceLimit* oldLimit);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);
}
