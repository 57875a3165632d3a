using System.Runtime.InteropServices;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Security;

/// <summary>Nestor's default seccomp profile: it refuses (EPERM) what Docker's default profile refuses, as Docker
/// documents it ("Seccomp security profiles for Docker", "Significant syscalls blocked by the default profile"),
/// including the capability-conditional rules: a group of system calls is allowed only when the container holds the
/// capability the kernel would check anyway.</summary>
/// <remarks>
/// Shape: default action SCMP_ACT_ERRNO (EPERM), so a system call libseccomp does not know — newer than this machine's
/// libseccomp — is refused, as with Docker's allow list. The allow list is every system call libseccomp knows on the
/// profile's architectures minus the refused ones below, so the profile follows the installed kernel headers rather
/// than a list typed into the code. Decisions where Docker's documentation leaves a choice: <c>ptrace</c> is allowed
/// (Docker allows it on kernels from 4.8, where seccomp can no longer be bypassed by it; a container still cannot see
/// the host's processes, and a non-root user cannot trace root's); <c>sethostname</c>/<c>setdomainname</c> are left to
/// the kernel's CAP_SYS_ADMIN check (the UTS namespace is the container's own); <c>clone3</c> fails with ENOSYS
/// without CAP_SYS_ADMIN (its flags are in memory, which seccomp cannot inspect) so that libc falls back to
/// <c>clone</c>, whose namespace flags are checked.
/// </remarks>
public static class SeccompProfiles
{
    /// <summary>The namespace flags of clone(2) that a container without CAP_SYS_ADMIN may not use: CLONE_NEWNS,
    /// CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET.</summary>
    public const ulong CloneNamespaceFlags = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000;

    /// <summary>ENOSYS: what clone3 returns without CAP_SYS_ADMIN.</summary>
    public const uint NoSuchSyscall = 38;

    /// <summary>Refused for every container, whatever its capabilities: the kernel keyring (not namespaced), obsolete
    /// or removed calls, io_uring (Docker refuses it since 25.0: its operations bypass the filter), ustat/sysfs.</summary>
    public static IReadOnlyList<string> AlwaysRefused { get; } =
    [
        "add_key", "keyctl", "request_key", "create_module", "get_kernel_syms", "query_module", "nfsservctl", "uselib",
        "ustat", "sysfs", "_sysctl", "vm86", "vm86old", "io_uring_setup", "io_uring_enter", "io_uring_register",
        "move_pages",
    ];

    /// <summary>System calls allowed only with a capability (Docker's "includes: caps" rules).</summary>
    public static IReadOnlyDictionary<string, IReadOnlyList<string>> AllowedWithCapability { get; } =
        new Dictionary<string, IReadOnlyList<string>>(StringComparer.Ordinal)
        {
            ["CAP_SYS_ADMIN"] =
            [
                "bpf", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie", "mount",
                "mount_setattr", "move_mount", "name_to_handle_at", "open_tree", "perf_event_open", "quotactl",
                "quotactl_fd", "setns", "swapon", "swapoff", "umount", "umount2", "unshare",
            ],
            ["CAP_SYS_BOOT"] = ["reboot", "kexec_load", "kexec_file_load"],
            ["CAP_SYS_CHROOT"] = ["chroot"],
            ["CAP_SYS_MODULE"] = ["init_module", "finit_module", "delete_module"],
            ["CAP_SYS_PACCT"] = ["acct"],
            ["CAP_SYS_PTRACE"] = ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "userfaultfd"],
            ["CAP_SYS_RAWIO"] = ["iopl", "ioperm"],
            // clock_adjtime stays allowed: glibc's adjtimex(3) uses it, and the kernel checks CAP_SYS_TIME for any change.
            ["CAP_SYS_TIME"] = ["settimeofday", "stime", "clock_settime", "clock_settime64"],
            ["CAP_SYS_TTY_CONFIG"] = ["vhangup"],
            ["CAP_SYS_NICE"] = ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
            ["CAP_SYSLOG"] = ["syslog"],
            ["CAP_BPF"] = ["bpf"],
            ["CAP_PERFMON"] = ["perf_event_open"],
        };

    // personality(2) values Docker allows: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26, and the query.
    private static readonly ulong[] s_personalities = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

    // Checked by the profile's own rules (arguments, errno), so not in the plain allow list.
    private static readonly string[] s_specialCases = ["clone", "clone3", "personality"];

    /// <summary>The default profile for a container whose capabilities are <paramref name="capabilities"/> (names as
    /// <see cref="Capabilities"/> writes them; the bounding set is what counts).</summary>
    public static SpecSeccomp Default(IEnumerable<string> capabilities)
    {
        var held = capabilities.Select(c => Capabilities.Name(Capabilities.Number(c))).ToHashSet(StringComparer.Ordinal);
        var architectures = Architectures();
        var conditional = AllowedWithCapability.Values.SelectMany(v => v).ToHashSet(StringComparer.Ordinal);
        var refused = AlwaysRefused.Concat(conditional).Concat(s_specialCases).ToHashSet(StringComparer.Ordinal);
        var allowed = KnownSyscalls(architectures).Where(name => !refused.Contains(name)).ToList();
        var granted = AllowedWithCapability.Where(group => held.Contains(group.Key)).SelectMany(group => group.Value)
            .Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
        allowed.AddRange(granted.Where(name => !allowed.Contains(name)));
        allowed.Sort(StringComparer.Ordinal);

        var syscalls = new List<SpecSyscall> { new() { Names = allowed, Action = "SCMP_ACT_ALLOW" } };
        foreach (ulong persona in s_personalities)
        {
            syscalls.Add(new SpecSyscall
            {
                Names = ["personality"],
                Action = "SCMP_ACT_ALLOW",
                Args = [new SpecSyscallArg { Index = 0, Value = persona, Op = "SCMP_CMP_EQ" }],
            });
        }
        if (held.Contains("CAP_SYS_ADMIN"))
        {
            syscalls.Add(new SpecSyscall { Names = ["clone", "clone3"], Action = "SCMP_ACT_ALLOW" });
        }
        else
        {
            syscalls.Add(new SpecSyscall
            {
                Names = ["clone"],
                Action = "SCMP_ACT_ALLOW",
                Args = [new SpecSyscallArg { Index = 0, Value = CloneNamespaceFlags, ValueTwo = 0, Op = "SCMP_CMP_MASKED_EQ" }],
            });
            syscalls.Add(new SpecSyscall { Names = ["clone3"], Action = "SCMP_ACT_ERRNO", ErrnoRet = NoSuchSyscall });
        }
        return new SpecSeccomp
        {
            DefaultAction = "SCMP_ACT_ERRNO",
            DefaultErrnoRet = SeccompFilter.DefaultErrno,
            Architectures = [.. architectures],
            Syscalls = syscalls,
        };
    }

    /// <summary>The architectures a filter on this machine covers: the native one and the ones its processes can also
    /// use (x86_64 runs x86 and x32 code; aarch64 runs arm).</summary>
    public static IReadOnlyList<string> Architectures() => RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.X64 => ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        Architecture.Arm64 => ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => [],
    };

    // Every name libseccomp resolves on the profile's architectures (numbers 0-1023: Linux's tables stay below that;
    // x32 shares x86_64's names, with the x32 bit set in the number).
    private static IEnumerable<string> KnownSyscalls(IReadOnlyList<string> architectures)
    {
        var tokens = new List<uint?> { null };
        foreach (string architecture in architectures.Where(a => a != "SCMP_ARCH_X32"))
        {
            tokens.Add(SeccompContext.ResolveArchitecture(architecture["SCMP_ARCH_".Length..].ToLowerInvariant()));
        }
        var names = new SortedSet<string>(StringComparer.Ordinal);
        foreach (uint? token in tokens.Distinct())
        {
            for (int number = 0; number < 1024; number++)
            {
                if (SeccompContext.SyscallName(number, token) is { } name && !name.StartsWith("UNKNOWN", StringComparison.Ordinal))
                {
                    names.Add(name);
                }
            }
        }
        return names;
    }
}
