using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Security;

/// <summary>Linux capabilities by name and number (capabilities(7); include/uapi/linux/capability.h), Docker's rules
/// for choosing a container's set, and applying a <see cref="SpecCapabilities"/> to the calling thread.</summary>
public static class Capabilities
{
    // Index = capability number (capabilities(7)), up to CAP_CHECKPOINT_RESTORE (40, Linux 5.9).
    private static readonly string[] s_names =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ];

    private static readonly Dictionary<string, int> s_numbers =
        s_names.Select((name, number) => (name, number)).ToDictionary(p => p.name, p => p.number, StringComparer.Ordinal);

    /// <summary>The highest capability number Nestor knows (CAP_CHECKPOINT_RESTORE).</summary>
    public static int Last => s_names.Length - 1;

    /// <summary>Every capability name, in number order.</summary>
    public static IReadOnlyList<string> All => s_names;

    /// <summary>Docker's default set (moby oci/caps/defaults.go's list, as documented in "docker run" reference,
    /// "Runtime privilege and Linux capabilities"): the 14 a container gets without --cap-add/--cap-drop.</summary>
    public static IReadOnlyList<string> DockerDefault { get; } =
    [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];

    /// <summary>The number of a capability; the name may be written with or without <c>CAP_</c>, in any case.</summary>
    public static int Number(string name) =>
        TryNumber(name, out int number) ? number
            : throw new ContainerSecurityException($"unknown capability '{name}': use a name from capabilities(7), e.g. NET_ADMIN or CAP_NET_ADMIN");

    public static bool TryNumber(string name, out int number) => s_numbers.TryGetValue(Canonical(name), out number);

    /// <summary>The name (<c>CAP_…</c>) of capability <paramref name="number"/>.</summary>
    public static string Name(int number) =>
        number >= 0 && number < s_names.Length ? s_names[number] : $"CAP_{number}";

    /// <summary>A bit mask of the named capabilities (bit N = capability N).</summary>
    public static ulong Mask(IEnumerable<string>? names)
    {
        ulong mask = 0;
        foreach (string name in names ?? [])
        {
            mask |= 1UL << Number(name);
        }
        return mask;
    }

    /// <summary>The names in a bit mask, in number order.</summary>
    public static IReadOnlyList<string> Names(ulong mask) =>
        Enumerable.Range(0, 64).Where(n => (mask & (1UL << n)) != 0).Select(Name).ToList();

    /// <summary>Docker's rules for a container's set (moby's TweakCapabilities): <c>ALL</c> in <paramref name="capAdd"/>
    /// gives every capability except the ones <paramref name="capDrop"/> names; otherwise <c>ALL</c> in
    /// <paramref name="capDrop"/> leaves only <paramref name="capAdd"/>; otherwise <paramref name="defaults"/> minus the
    /// drops plus the additions (an addition wins over a drop of the same name). A name may carry <c>CAP_</c> or not,
    /// in any case; an unknown name is an error. The result is in number order, as CAP_ names.</summary>
    public static IReadOnlyList<string> Resolve(IEnumerable<string> defaults, IEnumerable<string>? capAdd, IEnumerable<string>? capDrop)
    {
        const string all = "CAP_ALL";
        var add = (capAdd ?? []).Select(Canonical).ToList();
        var drop = (capDrop ?? []).Select(Canonical).ToList();
        var addNumbers = add.Where(n => n != all).Select(Number).ToHashSet();
        var dropNumbers = drop.Where(n => n != all).Select(Number).ToHashSet();
        var set = new SortedSet<int>();
        if (add.Contains(all))
        {
            set.UnionWith(Enumerable.Range(0, s_names.Length).Where(n => !dropNumbers.Contains(n)));
        }
        else if (drop.Contains(all))
        {
            set.UnionWith(addNumbers);
        }
        else
        {
            set.UnionWith(defaults.Select(Number).Where(n => !dropNumbers.Contains(n)));
            set.UnionWith(addNumbers);
        }
        return set.Select(n => s_names[n]).ToList();
    }

    /// <summary>The spec's sets for a container whose capabilities are <paramref name="names"/>: runc's and Docker's
    /// shape, bounding = effective = permitted = the set; inheritable and ambient empty (so a non-root user's process
    /// has no capabilities after execve, as with Docker).</summary>
    public static SpecCapabilities ToSpec(IEnumerable<string> names)
    {
        var list = names.Select(Canonical).ToList();
        return new SpecCapabilities
        {
            Bounding = [.. list],
            Effective = [.. list],
            Permitted = [.. list],
        };
    }

    /// <summary>Removes from the calling thread's bounding set every capability not in
    /// <paramref name="capabilities"/>'s bounding list (PR_CAPBSET_DROP), including numbers above
    /// <see cref="Last"/> that a newer kernel knows. Needs CAP_SETPCAP, so it runs before <see cref="Apply"/>.</summary>
    public static void ApplyBounding(SpecCapabilities capabilities)
    {
        ulong keep = Mask(capabilities.Bounding);
        int last = CapabilityCalls.LastCapability();
        for (int number = 0; number <= last; number++)
        {
            if ((keep & (1UL << number)) == 0 && CapabilityCalls.IsInBoundingSet(number))
            {
                try
                {
                    CapabilityCalls.DropFromBoundingSet(number);
                }
                catch (HostCallException e)
                {
                    throw new ContainerSecurityException(
                        $"cannot drop {Name(number)} from the bounding set ({e.Message}): the runtime needs CAP_SETPCAP at this point; drop the bounding set before dropping CAP_SETPCAP", e);
                }
            }
        }
    }

    /// <summary>Sets the calling thread's effective, permitted and inheritable sets (capset(2), version 3) and raises
    /// the ambient ones (PR_CAP_AMBIENT_RAISE). Runs after the switch to the container's user (with
    /// PR_SET_KEEPCAPS set before it so the permitted set survives setuid(2)); capabilities not in the current
    /// permitted set cannot be gained and are an error.</summary>
    public static void Apply(SpecCapabilities capabilities)
    {
        var sets = new CapabilitySets(Mask(capabilities.Effective), Mask(capabilities.Permitted), Mask(capabilities.Inheritable));
        ulong ambient = Mask(capabilities.Ambient);
        try
        {
            CapabilityCalls.Set(sets);
        }
        catch (HostCallException e)
        {
            var held = CapabilityCalls.Get();
            var missing = Names(sets.Permitted & ~held.Permitted);
            throw new ContainerSecurityException(
                $"cannot set the container's capabilities ({e.Message})" +
                (missing.Count > 0 ? $": the runtime does not hold {string.Join(", ", missing)}; run with fewer --cap-add or as a user that has them" : ""), e);
        }
        CapabilityCalls.ClearAmbient();
        for (int number = 0; number < 64; number++)
        {
            if ((ambient & (1UL << number)) != 0)
            {
                try
                {
                    CapabilityCalls.RaiseAmbient(number);
                }
                catch (HostCallException e)
                {
                    throw new ContainerSecurityException(
                        $"cannot raise ambient {Name(number)} ({e.Message}): an ambient capability must also be permitted and inheritable", e);
                }
            }
        }
    }

    /// <summary>The calling thread's capabilities: its three sets from capget(2), the bounding set (PR_CAPBSET_READ) and
    /// the ambient set, as the spec's names.</summary>
    public static SpecCapabilities ReadCurrent()
    {
        var sets = CapabilityCalls.Get();
        int last = Math.Min(CapabilityCalls.LastCapability(), 63);
        ulong bounding = 0, ambient = 0;
        for (int number = 0; number <= last; number++)
        {
            if (CapabilityCalls.IsInBoundingSet(number))
            {
                bounding |= 1UL << number;
            }
            if (CapabilityCalls.IsAmbient(number))
            {
                ambient |= 1UL << number;
            }
        }
        return new SpecCapabilities
        {
            Bounding = [.. Names(bounding)],
            Effective = [.. Names(sets.Effective)],
            Permitted = [.. Names(sets.Permitted)],
            Inheritable = [.. Names(sets.Inheritable)],
            Ambient = [.. Names(ambient)],
        };
    }

    private static string Canonical(string name)
    {
        string upper = name.Trim().ToUpperInvariant();
        return upper.StartsWith("CAP_", StringComparison.Ordinal) ? upper : "CAP_" + upper;
    }
}
