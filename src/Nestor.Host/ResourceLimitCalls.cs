using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>A soft (current) and hard (maximum) resource limit; <see cref="Infinity"/> is RLIM_INFINITY.</summary>
public readonly record struct ResourceLimitValue(ulong Soft, ulong Hard)
{
    public const ulong Infinity = ulong.MaxValue;
}

/// <summary>getrlimit/setrlimit of any process through prlimit(2).</summary>
public static class ResourceLimitCalls
{
    /// <summary>Reads resource <paramref name="resource"/> (RLIMIT_* number) of <paramref name="pid"/> (0: this process).</summary>
    public static unsafe ResourceLimitValue Get(int resource, int pid = 0)
    {
        SecurityLibC.ResourceLimit old;
        if (SecurityLibC.Prlimit(pid, resource, null, &old) != 0)
        {
            throw HostCallException.LastError($"prlimit(pid {pid}, resource {resource})");
        }
        return new ResourceLimitValue(old.Current, old.Maximum);
    }

    /// <summary>Sets a limit; raising the hard limit needs CAP_SYS_RESOURCE (EPERM otherwise), a soft limit above the
    /// hard one is EINVAL (getrlimit(2)).</summary>
    public static unsafe void Set(int resource, ResourceLimitValue value, int pid = 0)
    {
        var limit = new SecurityLibC.ResourceLimit { Current = value.Soft, Maximum = value.Hard };
        if (SecurityLibC.Prlimit(pid, resource, &limit, null) != 0)
        {
            throw HostCallException.LastError($"prlimit(pid {pid}, resource {resource}, {value.Soft}:{value.Hard})");
        }
    }
}
