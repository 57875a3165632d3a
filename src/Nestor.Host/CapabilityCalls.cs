using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>A thread's three 64-bit capability sets as capget(2) returns them; bit N is capability N
/// (capabilities(7)).</summary>
public readonly record struct CapabilitySets(ulong Effective, ulong Permitted, ulong Inheritable);

/// <summary>The capability and prctl(2) calls of the calling thread. Capabilities are per thread (capabilities(7):
/// "Thread capability sets"), so every call here affects only the thread that makes it.</summary>
public static class CapabilityCalls
{
    /// <summary>capget(2) of the calling thread.</summary>
    public static unsafe CapabilitySets Get()
    {
        var header = new SecurityLibC.CapabilityHeader { Version = SecurityLibC.LINUX_CAPABILITY_VERSION_3, Pid = 0 };
        var data = stackalloc SecurityLibC.CapabilityData[2];
        if (SecurityLibC.CapGet(&header, data) != 0)
        {
            throw HostCallException.LastError("capget");
        }
        return new CapabilitySets(
            data[0].Effective | ((ulong)data[1].Effective << 32),
            data[0].Permitted | ((ulong)data[1].Permitted << 32),
            data[0].Inheritable | ((ulong)data[1].Inheritable << 32));
    }

    /// <summary>capset(2) of the calling thread. The kernel refuses (EPERM) a permitted set that is not a subset of the
    /// current one and an inheritable set outside the bounding set.</summary>
    public static unsafe void Set(CapabilitySets sets)
    {
        var header = new SecurityLibC.CapabilityHeader { Version = SecurityLibC.LINUX_CAPABILITY_VERSION_3, Pid = 0 };
        var data = stackalloc SecurityLibC.CapabilityData[2];
        data[0] = new SecurityLibC.CapabilityData { Effective = (uint)sets.Effective, Permitted = (uint)sets.Permitted, Inheritable = (uint)sets.Inheritable };
        data[1] = new SecurityLibC.CapabilityData { Effective = (uint)(sets.Effective >> 32), Permitted = (uint)(sets.Permitted >> 32), Inheritable = (uint)(sets.Inheritable >> 32) };
        if (SecurityLibC.CapSet(&header, data) != 0)
        {
            throw HostCallException.LastError("capset");
        }
    }

    /// <summary>Whether capability <paramref name="capability"/> is in the calling thread's bounding set
    /// (PR_CAPBSET_READ); false also for numbers the kernel does not know.</summary>
    public static bool IsInBoundingSet(int capability) =>
        SecurityLibC.Prctl(SecurityLibC.PR_CAPBSET_READ, (nuint)capability, 0, 0, 0) == 1;

    /// <summary>Removes a capability from the calling thread's bounding set (PR_CAPBSET_DROP; needs CAP_SETPCAP).</summary>
    public static void DropFromBoundingSet(int capability)
    {
        if (SecurityLibC.Prctl(SecurityLibC.PR_CAPBSET_DROP, (nuint)capability, 0, 0, 0) != 0)
        {
            throw HostCallException.LastError($"prctl(PR_CAPBSET_DROP, {capability})");
        }
    }

    /// <summary>Raises a capability in the ambient set (PR_CAP_AMBIENT_RAISE; it must be permitted and inheritable).</summary>
    public static void RaiseAmbient(int capability)
    {
        if (SecurityLibC.Prctl(SecurityLibC.PR_CAP_AMBIENT, SecurityLibC.PR_CAP_AMBIENT_RAISE, (nuint)capability, 0, 0) != 0)
        {
            throw HostCallException.LastError($"prctl(PR_CAP_AMBIENT_RAISE, {capability})");
        }
    }

    /// <summary>Empties the ambient set (PR_CAP_AMBIENT_CLEAR_ALL).</summary>
    public static void ClearAmbient()
    {
        if (SecurityLibC.Prctl(SecurityLibC.PR_CAP_AMBIENT, SecurityLibC.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
        {
            throw HostCallException.LastError("prctl(PR_CAP_AMBIENT_CLEAR_ALL)");
        }
    }

    /// <summary>Whether a capability is in the ambient set (PR_CAP_AMBIENT_IS_SET).</summary>
    public static bool IsAmbient(int capability) =>
        SecurityLibC.Prctl(SecurityLibC.PR_CAP_AMBIENT, SecurityLibC.PR_CAP_AMBIENT_IS_SET, (nuint)capability, 0, 0) == 1;

    /// <summary>PR_SET_KEEPCAPS: keep the permitted set across a setuid(2) from uid 0 to a non-zero uid (the runtime sets
    /// it before switching to the container's user, then applies the container's sets).</summary>
    public static void SetKeepCapabilities(bool keep)
    {
        if (SecurityLibC.Prctl(SecurityLibC.PR_SET_KEEPCAPS, keep ? 1u : 0u, 0, 0, 0) != 0)
        {
            throw HostCallException.LastError("prctl(PR_SET_KEEPCAPS)");
        }
    }

    /// <summary>PR_SET_NO_NEW_PRIVS: execve(2) no longer grants privileges (set-user-ID bits, file capabilities);
    /// irreversible, inherited by children.</summary>
    public static void SetNoNewPrivileges()
    {
        if (SecurityLibC.Prctl(SecurityLibC.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        {
            throw HostCallException.LastError("prctl(PR_SET_NO_NEW_PRIVS)");
        }
    }

    /// <summary>PR_GET_NO_NEW_PRIVS of the calling thread.</summary>
    public static bool GetNoNewPrivileges() =>
        SecurityLibC.Prctl(SecurityLibC.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;

    /// <summary>PR_GET_SECCOMP: 0 none, 2 filter mode (a thread in strict mode 1 is killed by this call).</summary>
    public static int GetSeccompMode() => SecurityLibC.Prctl(SecurityLibC.PR_GET_SECCOMP, 0, 0, 0, 0);

    /// <summary>The highest capability number the running kernel knows (/proc/sys/kernel/cap_last_cap).</summary>
    public static int LastCapability() =>
        int.Parse(File.ReadAllText("/proc/sys/kernel/cap_last_cap").Trim(), System.Globalization.CultureInfo.InvariantCulture);
}
