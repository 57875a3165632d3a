using System.Runtime.InteropServices;
using System.Text;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>The eight Linux namespaces (namespaces(7)) by their clone flags.</summary>
[Flags]
public enum NamespaceKinds : ulong
{
    None = 0,
    Time = 0x00000080,
    Mount = 0x00020000,
    Cgroup = 0x02000000,
    Uts = 0x04000000,
    Ipc = 0x08000000,
    User = 0x10000000,
    Pid = 0x20000000,
    Network = 0x40000000,
}

/// <summary>Namespace calls: unshare(2), setns(2), sethostname(2), setdomainname(2), and the names /proc/PID/ns uses.</summary>
public static unsafe class NamespaceCalls
{
    /// <summary>The runtime-spec's namespace type (config-linux.md "Namespaces") to its kind; null if unknown.</summary>
    public static NamespaceKinds? FromSpecType(string type) => type switch
    {
        "pid" => NamespaceKinds.Pid,
        "network" => NamespaceKinds.Network,
        "mount" => NamespaceKinds.Mount,
        "ipc" => NamespaceKinds.Ipc,
        "uts" => NamespaceKinds.Uts,
        "user" => NamespaceKinds.User,
        "cgroup" => NamespaceKinds.Cgroup,
        "time" => NamespaceKinds.Time,
        _ => null,
    };

    /// <summary>The entry under /proc/PID/ns for a kind (<c>net</c>, <c>mnt</c>, <c>pid</c> …).</summary>
    public static string ProcName(NamespaceKinds kind) => kind switch
    {
        NamespaceKinds.Pid => "pid",
        NamespaceKinds.Network => "net",
        NamespaceKinds.Mount => "mnt",
        NamespaceKinds.Ipc => "ipc",
        NamespaceKinds.Uts => "uts",
        NamespaceKinds.User => "user",
        NamespaceKinds.Cgroup => "cgroup",
        NamespaceKinds.Time => "time",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "one namespace kind"),
    };

    /// <summary>unshare(2). Only kinds that do not imply CLONE_FS or CLONE_THREAD work in a multithreaded process such
    /// as a .NET one (cgroup, time, uts, ipc, network); mount and user namespaces fail with EINVAL there and are
    /// created at clone3(2) instead.</summary>
    public static void Unshare(NamespaceKinds kinds)
    {
        if (LibC.Unshare((int)kinds) != 0)
        {
            throw HostCallException.LastError($"unshare({kinds})");
        }
    }

    /// <summary>Opens a namespace file (/proc/PID/ns/KIND or a bind mount of one) for setns(2), close-on-exec.</summary>
    public static int Open(string path)
    {
        int fd = LibC.Open(path, LibC.O_RDONLY | LibC.O_CLOEXEC, 0);
        return fd >= 0 ? fd : throw HostCallException.LastError($"opening namespace {path}");
    }

    /// <summary>setns(2) of the calling thread (a process for the kinds that allow it in a multithreaded process).</summary>
    public static void Join(int fd, NamespaceKinds kind)
    {
        if (LibC.Setns(fd, (int)kind) != 0)
        {
            throw HostCallException.LastError($"setns into the {ProcName(kind)} namespace");
        }
    }

    /// <summary>sethostname(2) in the caller's UTS namespace.</summary>
    public static void SetHostname(string name)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(name);
        fixed (byte* pointer = bytes)
        {
            if (LibC.SetHostname(pointer, (nuint)bytes.Length) != 0)
            {
                throw HostCallException.LastError($"sethostname to {name}");
            }
        }
    }

    /// <summary>setdomainname(2) in the caller's UTS namespace.</summary>
    public static void SetDomainname(string name)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(name);
        fixed (byte* pointer = bytes)
        {
            if (LibC.SetDomainname(pointer, (nuint)bytes.Length) != 0)
            {
                throw HostCallException.LastError($"setdomainname to {name}");
            }
        }
    }

    /// <summary>The namespace's identity, the inode number of /proc/PID/ns/KIND (readlink shows <c>kind:[inode]</c>).</summary>
    public static ulong Inode(string pid, NamespaceKinds kind)
    {
        string target = File.ResolveLinkTarget($"/proc/{pid}/ns/{ProcName(kind)}", false)?.ToString() ?? "";
        int open = target.IndexOf('['), close = target.IndexOf(']');
        return open >= 0 && close > open && ulong.TryParse(target.AsSpan(open + 1, close - open - 1), out ulong inode)
            ? inode
            : throw new HostCallException($"reading /proc/{pid}/ns/{ProcName(kind)}", Marshal.GetLastPInvokeError());
    }
}
