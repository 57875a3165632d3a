using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Security;

/// <summary>Turns the spec's <c>linux.seccomp</c> (config-linux.md, "Seccomp") into a libseccomp filter and loads it
/// into the calling thread.</summary>
/// <remarks>
/// Order in the runtime's container init (seccomp(2): without no_new_privs, installing a filter needs CAP_SYS_ADMIN):
/// <list type="number">
/// <item>mounts, pivot_root, hostname, rlimits, <see cref="Capabilities.ApplyBounding"/>;</item>
/// <item>if <c>process.noNewPrivileges</c> is false: <see cref="Load"/> now, while the runtime still holds
/// CAP_SYS_ADMIN (the filter must allow what follows: setgroups, setresgid, setresuid, capset, prctl, execve — Docker's
/// profile does);</item>
/// <item>PR_SET_KEEPCAPS, switch to the container's user, <see cref="Capabilities.Apply"/>;</item>
/// <item>if <c>process.noNewPrivileges</c> is true: PR_SET_NO_NEW_PRIVS, then <see cref="Load"/> as the last call
/// before execve(2), so that the fewest system calls run under the filter.</item>
/// </list>
/// Filters are per thread and inherited across fork and execve; no TSYNC unless the spec asks for it. Rules naming a
/// system call libseccomp does not know on this machine are skipped (profiles are written for many kernels), as runc
/// and crun do.
/// </remarks>
public static class SeccompFilter
{
    /// <summary>EPERM, the errno of SCMP_ACT_ERRNO/SCMP_ACT_TRACE without <c>errnoRet</c> (runc's and crun's default).</summary>
    public const uint DefaultErrno = 1;

    /// <summary>Builds and loads the filter into the calling thread. libseccomp's own no_new_privs is turned off: the
    /// runtime decides that from <c>process.noNewPrivileges</c> (see the remarks for the order).</summary>
    public static void Load(SpecSeccomp seccomp)
    {
        using var context = Build(seccomp);
        try
        {
            context.Load();
        }
        catch (HostCallException e)
        {
            throw new ContainerSecurityException(
                $"cannot load the seccomp filter ({e.Message}): without no_new_privs loading needs CAP_SYS_ADMIN; load it before dropping capabilities or set process.noNewPrivileges", e);
        }
    }

    /// <summary>The filter as the BPF program the kernel runs, with the seccomp(2) flags to install it with: for a
    /// process that installs it by a raw seccomp(2) SECCOMP_SET_MODE_FILTER because it may not call libseccomp — the
    /// clone3 child that starts an exec'd process (<see cref="CloneExecRequest.SeccompProgram"/>).</summary>
    public static (byte[] Program, uint Flags) Export(SpecSeccomp seccomp)
    {
        using var context = Build(seccomp);
        uint flags = 0;
        foreach (string flag in seccomp.Flags ?? [])
        {
            // linux/seccomp.h: SECCOMP_FILTER_FLAG_TSYNC 1, _LOG 2, _SPEC_ALLOW 4 (Build refused any other name).
            flags |= flag switch
            {
                "SECCOMP_FILTER_FLAG_TSYNC" => 1u,
                "SECCOMP_FILTER_FLAG_LOG" => 2u,
                _ => 4u,
            };
        }
        try
        {
            return (context.ExportBpf(), flags);
        }
        catch (HostCallException e)
        {
            throw new ContainerSecurityException($"cannot export the seccomp filter as BPF: {e.Message}", e);
        }
    }

    /// <summary>The libseccomp filter for <paramref name="seccomp"/>, not loaded (the caller disposes it).</summary>
    public static SeccompContext Build(SpecSeccomp seccomp)
    {
        uint defaultAction = Action(seccomp.DefaultAction, seccomp.DefaultErrnoRet);
        var context = new SeccompContext(defaultAction);
        try
        {
            context.SetAttribute(SeccompAttribute.NoNewPrivileges, 0);
            foreach (string flag in seccomp.Flags ?? [])
            {
                switch (flag)
                {
                    case "SECCOMP_FILTER_FLAG_TSYNC": context.SetAttribute(SeccompAttribute.ThreadSynchronize, 1); break;
                    case "SECCOMP_FILTER_FLAG_LOG": context.SetAttribute(SeccompAttribute.Log, 1); break;
                    case "SECCOMP_FILTER_FLAG_SPEC_ALLOW": context.SetAttribute(SeccompAttribute.SpeculativeStoreBypass, 1); break;
                    default: throw new ContainerSecurityException($"seccomp flag '{flag}' is not supported: use SECCOMP_FILTER_FLAG_TSYNC, _LOG or _SPEC_ALLOW");
                }
            }
            foreach (string architecture in seccomp.Architectures ?? [])
            {
                uint? token = SeccompContext.ResolveArchitecture(ArchitectureName(architecture));
                if (token is { } value)
                {
                    context.AddArchitecture(value);
                }
            }
            foreach (var syscall in seccomp.Syscalls ?? [])
            {
                uint action = Action(syscall.Action, syscall.ErrnoRet);
                if (action == defaultAction)
                {
                    continue; // libseccomp refuses a rule that repeats the default action, and it changes nothing
                }
                var arguments = (syscall.Args ?? []).Select(Argument).ToArray();
                bool distinctIndices = arguments.Select(a => a.Index).Distinct().Count() == arguments.Length;
                foreach (string name in syscall.Names)
                {
                    if (SeccompContext.ResolveSyscall(name) is not { } number)
                    {
                        continue;
                    }
                    try
                    {
                        if (distinctIndices)
                        {
                            context.AddRule(action, number, arguments);
                        }
                        else
                        {
                            // Several conditions on one argument: one rule each (they match as OR), as runc does.
                            foreach (var argument in arguments)
                            {
                                context.AddRule(action, number, [argument]);
                            }
                        }
                    }
                    catch (HostCallException e)
                    {
                        throw new ContainerSecurityException($"seccomp rule for '{name}' ({syscall.Action}) is invalid: {e.Message}", e);
                    }
                }
            }
            return context;
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>The libseccomp action of a spec action name; <paramref name="errnoRet"/> is the errno of ERRNO and the
    /// message of TRACE.</summary>
    public static uint Action(string name, uint? errnoRet) => name switch
    {
        "SCMP_ACT_ALLOW" => SeccompAction.Allow,
        "SCMP_ACT_ERRNO" => SeccompAction.Errno(errnoRet ?? DefaultErrno),
        "SCMP_ACT_KILL" or "SCMP_ACT_KILL_THREAD" => SeccompAction.KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction.KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction.Trap,
        "SCMP_ACT_LOG" => SeccompAction.Log,
        "SCMP_ACT_TRACE" => SeccompAction.Trace(errnoRet ?? DefaultErrno),
        "SCMP_ACT_NOTIFY" => throw new ContainerSecurityException("seccomp action SCMP_ACT_NOTIFY needs a listener socket (linux.seccomp.listenerPath), which Nestor does not support; use SCMP_ACT_ERRNO or SCMP_ACT_LOG"),
        _ => throw new ContainerSecurityException($"unknown seccomp action '{name}': use SCMP_ACT_ALLOW, _ERRNO, _KILL, _KILL_PROCESS, _TRAP, _LOG or _TRACE"),
    };

    private static SeccompArgument Argument(SpecSyscallArg argument)
    {
        var comparison = argument.Op switch
        {
            "SCMP_CMP_NE" => SeccompComparison.NotEqual,
            "SCMP_CMP_LT" => SeccompComparison.LessThan,
            "SCMP_CMP_LE" => SeccompComparison.LessOrEqual,
            "SCMP_CMP_EQ" => SeccompComparison.Equal,
            "SCMP_CMP_GE" => SeccompComparison.GreaterOrEqual,
            "SCMP_CMP_GT" => SeccompComparison.GreaterThan,
            "SCMP_CMP_MASKED_EQ" => SeccompComparison.MaskedEqual,
            _ => throw new ContainerSecurityException($"unknown seccomp comparison '{argument.Op}': use SCMP_CMP_EQ, _NE, _LT, _LE, _GE, _GT or _MASKED_EQ"),
        };
        if (argument.Index > 5)
        {
            throw new ContainerSecurityException($"seccomp argument index {argument.Index} is out of range: system calls have arguments 0 to 5");
        }
        return new SeccompArgument(argument.Index, comparison, argument.Value, argument.ValueTwo ?? 0);
    }

    // The spec writes SCMP_ARCH_X86_64; libseccomp's resolver takes "x86_64".
    private static string ArchitectureName(string specName) =>
        (specName.StartsWith("SCMP_ARCH_", StringComparison.Ordinal) ? specName["SCMP_ARCH_".Length..] : specName).ToLowerInvariant();
}
