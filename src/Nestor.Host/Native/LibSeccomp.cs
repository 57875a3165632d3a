using System.Runtime.InteropServices;

namespace Nestor.Host.Native;

/// <summary>libseccomp's C API (seccomp_init(3), seccomp_rule_add(3), seccomp_arch_add(3), seccomp_load(3),
/// seccomp_attr_set(3), seccomp_export_bpf(3), seccomp_syscall_resolve_name(3)). Functions return 0 or a negative errno; libseccomp does not
/// set errno.</summary>
internal static partial class LibSeccomp
{
    private const string Library = "libseccomp.so.2";

    /// <summary>struct scmp_arg_cmp: which argument, the comparison, and its one or two operands.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ArgumentComparison
    {
        public uint Argument;
        public int Operator;
        public ulong DatumA;
        public ulong DatumB;
    }

    /// <summary>__NR_SCMP_ERROR: the name is not a system call libseccomp knows.</summary>
    public const int SyscallUnknown = -1;

    [LibraryImport(Library, EntryPoint = "seccomp_init")]
    public static partial nint Init(uint defaultAction);

    [LibraryImport(Library, EntryPoint = "seccomp_release")]
    public static partial void Release(nint context);

    [LibraryImport(Library, EntryPoint = "seccomp_load")]
    public static partial int Load(nint context);

    [LibraryImport(Library, EntryPoint = "seccomp_attr_set")]
    public static partial int AttributeSet(nint context, int attribute, uint value);

    [LibraryImport(Library, EntryPoint = "seccomp_arch_add")]
    public static partial int ArchitectureAdd(nint context, uint architectureToken);

    [LibraryImport(Library, EntryPoint = "seccomp_arch_resolve_name", StringMarshalling = StringMarshalling.Utf8)]
    public static partial uint ArchitectureResolveName(string name);

    [LibraryImport(Library, EntryPoint = "seccomp_arch_native")]
    public static partial uint ArchitectureNative();

    [LibraryImport(Library, EntryPoint = "seccomp_syscall_resolve_name", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int SyscallResolveName(string name);

    [LibraryImport(Library, EntryPoint = "seccomp_syscall_resolve_num_arch")]
    public static partial nint SyscallResolveNumberArchitecture(uint architectureToken, int number);

    [LibraryImport(Library, EntryPoint = "seccomp_rule_add_array")]
    public static unsafe partial int RuleAddArray(nint context, uint action, int syscall, uint argumentCount, ArgumentComparison* arguments);

    [LibraryImport(Library, EntryPoint = "seccomp_export_bpf")]
    public static partial int ExportBpf(nint context, int fd);

    [LibraryImport("libc", EntryPoint = "free")]
    public static partial void Free(nint pointer);
}
