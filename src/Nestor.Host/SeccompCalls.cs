using System.Runtime.InteropServices;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>libseccomp's action values (seccomp_rule_add(3)): what the kernel does when a rule matches.</summary>
public static class SeccompAction
{
    public const uint KillProcess = 0x80000000;
    public const uint KillThread = 0x00000000;
    public const uint Trap = 0x00030000;
    public const uint Log = 0x7ffc0000;
    public const uint Allow = 0x7fff0000;

    /// <summary>SCMP_ACT_ERRNO: the call fails with <paramref name="errno"/> without running.</summary>
    public static uint Errno(uint errno) => 0x00050000 | (errno & 0xffff);

    /// <summary>SCMP_ACT_TRACE: a ptrace(2) tracer is notified with <paramref name="message"/>.</summary>
    public static uint Trace(uint message) => 0x7ff00000 | (message & 0xffff);
}

/// <summary>libseccomp's argument comparison operators (enum scmp_compare).</summary>
public enum SeccompComparison
{
    NotEqual = 1,
    LessThan = 2,
    LessOrEqual = 3,
    Equal = 4,
    GreaterOrEqual = 5,
    GreaterThan = 6,
    /// <summary>(argument &amp; mask) == value: operand one is the mask, operand two the value.</summary>
    MaskedEqual = 7,
}

/// <summary>Filter attributes (enum scmp_filter_attr) the runtime sets.</summary>
public enum SeccompAttribute
{
    /// <summary>Whether seccomp_load sets no_new_privs first (libseccomp's default: yes).</summary>
    NoNewPrivileges = 3,
    /// <summary>Synchronize the filter to every thread of the process (SECCOMP_FILTER_FLAG_TSYNC).</summary>
    ThreadSynchronize = 4,
    /// <summary>Log every action except ALLOW (SECCOMP_FILTER_FLAG_LOG).</summary>
    Log = 6,
    /// <summary>Disable speculative store bypass mitigation (SECCOMP_FILTER_FLAG_SPEC_ALLOW).</summary>
    SpeculativeStoreBypass = 7,
}

/// <summary>One condition on a system call argument of a rule.</summary>
public readonly record struct SeccompArgument(uint Index, SeccompComparison Comparison, ulong Value, ulong ValueTwo = 0);

/// <summary>A libseccomp filter being built (seccomp_init(3)) and loaded into the calling thread (seccomp_load(3)),
/// released on dispose. Errors are <see cref="HostCallException"/>s with the negative errno libseccomp returned.</summary>
public sealed class SeccompContext : IDisposable
{
    private nint _context;

    public SeccompContext(uint defaultAction)
    {
        _context = LibSeccomp.Init(defaultAction);
        if (_context == 0)
        {
            throw new HostCallException($"seccomp_init(0x{defaultAction:x8})", 22);
        }
    }

    /// <summary>The architecture token of a libseccomp name (<c>x86_64</c>, <c>x86</c>, <c>x32</c>, <c>aarch64</c>…);
    /// null when libseccomp does not know it.</summary>
    public static uint? ResolveArchitecture(string name)
    {
        uint token = LibSeccomp.ArchitectureResolveName(name);
        return token == 0 ? null : token;
    }

    /// <summary>The native architecture's system call number of <paramref name="name"/>, or null when libseccomp does
    /// not know it (or it is a pseudo-syscall with a negative number on this architecture).</summary>
    public static int? ResolveSyscall(string name)
    {
        int number = LibSeccomp.SyscallResolveName(name);
        return number == LibSeccomp.SyscallUnknown ? null : number;
    }

    /// <summary>The name of system call <paramref name="number"/> on <paramref name="architecture"/> (a token from
    /// <see cref="ResolveArchitecture"/>; the native one when null); null if none.</summary>
    public static string? SyscallName(int number, uint? architecture = null)
    {
        nint pointer = LibSeccomp.SyscallResolveNumberArchitecture(architecture ?? LibSeccomp.ArchitectureNative(), number);
        if (pointer == 0)
        {
            return null;
        }
        try
        {
            return Marshal.PtrToStringUTF8(pointer);
        }
        finally
        {
            LibSeccomp.Free(pointer);
        }
    }

    /// <summary>Adds an architecture the filter also matches (the native one is always there).</summary>
    public void AddArchitecture(uint token)
    {
        int result = LibSeccomp.ArchitectureAdd(Handle, token);
        if (result != 0 && result != -17) // -EEXIST: already in the filter
        {
            throw new HostCallException($"seccomp_arch_add(0x{token:x8})", -result);
        }
    }

    public void SetAttribute(SeccompAttribute attribute, uint value)
    {
        int result = LibSeccomp.AttributeSet(Handle, (int)attribute, value);
        if (result != 0)
        {
            throw new HostCallException($"seccomp_attr_set({attribute}, {value})", -result);
        }
    }

    /// <summary>Adds a rule for system call <paramref name="syscall"/>; all <paramref name="arguments"/> must hold.</summary>
    public unsafe void AddRule(uint action, int syscall, ReadOnlySpan<SeccompArgument> arguments)
    {
        var comparisons = stackalloc LibSeccomp.ArgumentComparison[Math.Max(arguments.Length, 1)];
        for (int i = 0; i < arguments.Length; i++)
        {
            comparisons[i] = new LibSeccomp.ArgumentComparison
            {
                Argument = arguments[i].Index,
                Operator = (int)arguments[i].Comparison,
                DatumA = arguments[i].Value,
                DatumB = arguments[i].ValueTwo,
            };
        }
        int result = LibSeccomp.RuleAddArray(Handle, action, syscall, (uint)arguments.Length, comparisons);
        if (result != 0)
        {
            throw new HostCallException($"seccomp_rule_add(syscall {syscall}, action 0x{action:x8})", -result);
        }
    }

    /// <summary>Loads the filter into the kernel for the calling thread (and its future children). Without
    /// no_new_privs this needs CAP_SYS_ADMIN (seccomp(2)).</summary>
    public void Load()
    {
        int result = LibSeccomp.Load(Handle);
        if (result != 0)
        {
            throw new HostCallException("seccomp_load", -result);
        }
    }

    /// <summary>The filter as the classic BPF program the kernel runs (an array of 8-byte <c>struct sock_filter</c>,
    /// seccomp_export_bpf(3)), for a process that installs it itself with seccomp(2) SECCOMP_SET_MODE_FILTER — one
    /// that may not call into libseccomp, such as the clone3 child of <see cref="ProcessCalls.CloneAndExecute"/>.
    /// libseccomp 2.5 exports only to a descriptor, so the program goes through a memfd.</summary>
    public unsafe byte[] ExportBpf()
    {
        long fd;
        fixed (byte* name = "nestor-seccomp\0"u8)
        {
            fd = LibC.Syscall(LibC.SYS_memfd_create, (long)name, LibC.MFD_CLOEXEC, 0, 0, 0, 0);
        }
        if (fd < 0)
        {
            throw HostCallException.LastError("memfd_create for seccomp_export_bpf");
        }
        using var stream = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle((nint)fd, ownsHandle: true), FileAccess.ReadWrite);
        int result = LibSeccomp.ExportBpf(Handle, (int)fd);
        if (result != 0)
        {
            throw new HostCallException("seccomp_export_bpf", -result);
        }
        stream.Seek(0, SeekOrigin.Begin);
        using var program = new MemoryStream();
        stream.CopyTo(program);
        return program.ToArray();
    }

    private nint Handle => _context != 0 ? _context : throw new ObjectDisposedException(nameof(SeccompContext));

    public void Dispose()
    {
        if (_context != 0)
        {
            LibSeccomp.Release(_context);
            _context = 0;
        }
    }
}
