using System.Runtime.InteropServices;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Tests.Security;

/// <summary>Filters loaded into a thread of their own (seccomp filters are per thread without TSYNC), then real
/// system calls made on that thread.</summary>
public partial class SeccompFilterTests
{
    // x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
    private const long SysGetppid = 110, SysPersonality = 135, SysMount = 165, SysUnshare = 272, SysClone3 = 435, SysInitModule = 175;
    private const long CloneNewUser = 0x10000000;

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, long a0, long a1, long a2, long a3, long a4);

    private static int Errno(long number, long a0 = 0, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0) =>
        Syscall(number, a0, a1, a2, a3, a4) == -1 ? Marshal.GetLastPInvokeError() : 0;

    /// <summary>Runs <paramref name="body"/> on a new thread after loading <paramref name="profile"/> there.</summary>
    private static T OnFilteredThread<T>(SpecSeccomp profile, Func<T> body)
    {
        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                SeccompFilter.Load(profile);
                result = body();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        return failure is null ? result : throw new InvalidOperationException("on the filtered thread", failure);
    }

    private static bool X64 => RuntimeInformation.ProcessArchitecture == Architecture.X64;

    [Fact]
    public void RulesWithErrnoAndArgumentComparisonsAreEnforced()
    {
        Assert.True(X64, "the system call numbers here are x86-64's");
        var profile = new SpecSeccomp
        {
            DefaultAction = "SCMP_ACT_ALLOW",
            Architectures = ["SCMP_ARCH_X86_64"],
            Syscalls =
            [
                new SpecSyscall { Names = ["getppid"], Action = "SCMP_ACT_ERRNO", ErrnoRet = 18 },
                new SpecSyscall { Names = ["personality"], Action = "SCMP_ACT_ERRNO", ErrnoRet = 25, Args = [new SpecSyscallArg { Index = 0, Value = 0xdead, Op = "SCMP_CMP_EQ" }] },
                new SpecSyscall { Names = ["no_such_syscall_anywhere"], Action = "SCMP_ACT_KILL" },
            ],
        };
        var (getppid, personalityQuery, personalityDead, status) = OnFilteredThread(profile, () =>
            (Errno(SysGetppid), Errno(SysPersonality, 0xffffffff), Errno(SysPersonality, 0xdead), File.ReadAllText("/proc/thread-self/status")));
        Assert.Equal(18, getppid);              // EXDEV, the rule's errnoRet
        Assert.Equal(0, personalityQuery);      // other argument values pass
        Assert.Equal(25, personalityDead);      // ENOTTY for the matching value
        Assert.Contains("Seccomp:\t2", status);
        Assert.Contains("NoNewPrivs:\t0", status); // libseccomp's own no_new_privs is off: the spec decides
        Assert.Equal(0, Errno(SysGetppid));      // the test's own thread is unfiltered
    }

    [Fact]
    public void DefaultProfileRefusesWhatDockersRefusesAndAllowsTheRest()
    {
        Assert.True(X64, "the system call numbers here are x86-64's");
        var profile = SeccompProfiles.Default(Capabilities.DockerDefault);
        var errors = OnFilteredThread(profile, () => new Dictionary<string, int>
        {
            // Without the filter: EINVAL (a multithreaded process cannot unshare a user namespace), ENOENT, EINVAL…
            ["unshare(CLONE_NEWUSER)"] = Errno(SysUnshare, CloneNewUser),
            ["mount"] = Errno(SysMount, 0, Marshal.StringToHGlobalAnsi("/nonexistent-nestor"), Marshal.StringToHGlobalAnsi("tmpfs")),
            ["init_module"] = Errno(SysInitModule),
            ["clone3"] = Errno(SysClone3),
            ["personality(0xdead)"] = Errno(SysPersonality, 0xdead),
            ["personality(query)"] = Errno(SysPersonality, 0xffffffff),
            ["getppid"] = Errno(SysGetppid),
        });
        Assert.Equal(1, errors["unshare(CLONE_NEWUSER)"]);
        Assert.Equal(1, errors["mount"]);
        Assert.Equal(1, errors["init_module"]);
        Assert.Equal((int)SeccompProfiles.NoSuchSyscall, errors["clone3"]);
        Assert.Equal(1, errors["personality(0xdead)"]);
        Assert.Equal(0, errors["personality(query)"]);
        Assert.Equal(0, errors["getppid"]);
    }

    [Fact]
    public void CapabilityConditionalGroupsFollowTheContainersCapabilities()
    {
        static HashSet<string> Allowed(SpecSeccomp p) =>
            p.Syscalls!.Where(s => s.Action == "SCMP_ACT_ALLOW" && s.Args is null).SelectMany(s => s.Names).ToHashSet();
        var plain = Allowed(SeccompProfiles.Default(Capabilities.DockerDefault));
        var admin = Allowed(SeccompProfiles.Default([.. Capabilities.DockerDefault, "CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_TIME"]));
        foreach (string name in new[] { "mount", "umount2", "unshare", "setns", "init_module", "finit_module", "delete_module", "clock_settime", "settimeofday", "kexec_load", "reboot", "add_key", "keyctl" })
        {
            Assert.DoesNotContain(name, plain);
        }
        foreach (string name in new[] { "mount", "umount2", "unshare", "setns", "init_module", "finit_module", "clock_settime", "clone", "clone3" })
        {
            Assert.Contains(name, admin);
        }
        Assert.DoesNotContain("kexec_load", admin);   // that needs CAP_SYS_BOOT
        Assert.DoesNotContain("keyctl", admin);       // never
        Assert.Contains("read", plain);
        Assert.Contains("ptrace", plain);             // Docker allows it on kernels from 4.8
        Assert.Equal("SCMP_ACT_ERRNO", SeccompProfiles.Default([]).DefaultAction);
        // and it survives config.json
        var spec = DefaultSpec.Create("rootfs", ["true"]);
        Assert.Equal(spec.Linux!.Seccomp!.Syscalls!.Count, RuntimeSpec.Parse(spec.ToJson()).Linux!.Seccomp!.Syscalls!.Count);
    }

    [Fact]
    public void UnsupportedActionsAndOperatorsAreClearErrors()
    {
        Assert.Contains("SCMP_ACT_NOTIFY", Assert.Throws<ContainerSecurityException>(() => SeccompFilter.Action("SCMP_ACT_NOTIFY", null)).Message);
        Assert.Throws<ContainerSecurityException>(() => SeccompFilter.Action("SCMP_ACT_MAYBE", null));
        var badOperator = new SpecSeccomp { Syscalls = [new SpecSyscall { Names = ["read"], Action = "SCMP_ACT_ERRNO", Args = [new SpecSyscallArg { Op = "SCMP_CMP_SIMILAR" }] }] };
        Assert.Throws<ContainerSecurityException>(() => SeccompFilter.Build(badOperator).Dispose());
        Assert.Equal(SeccompAction.Errno(1), SeccompFilter.Action("SCMP_ACT_ERRNO", null));
    }
}
