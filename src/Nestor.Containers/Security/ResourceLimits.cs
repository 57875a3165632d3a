using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Security;

/// <summary>The spec's <c>process.rlimits</c> (config.md, "POSIX process"): RLIMIT_* names to setrlimit(2) numbers and
/// their application with prlimit(2).</summary>
public static class ResourceLimits
{
    // getrlimit(2), include/uapi/asm-generic/resource.h: index = resource number.
    private static readonly string[] s_names =
    [
        "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
        "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
    ];

    /// <summary>Every resource name the specification allows.</summary>
    public static IReadOnlyList<string> Names => s_names;

    /// <summary>The resource number of an RLIMIT_ name (Docker's short form <c>nofile</c> is accepted too).</summary>
    public static int Number(string name)
    {
        string upper = name.Trim().ToUpperInvariant();
        if (!upper.StartsWith("RLIMIT_", StringComparison.Ordinal))
        {
            upper = "RLIMIT_" + upper;
        }
        int number = Array.IndexOf(s_names, upper);
        return number >= 0 ? number
            : throw new ContainerSecurityException($"unknown resource limit '{name}': use one of {string.Join(", ", s_names)}");
    }

    /// <summary>Applies every limit to the calling process (<paramref name="pid"/> 0) or to another process. A hard
    /// limit above the current one needs CAP_SYS_RESOURCE; without it the error says so and which value would work
    /// (on some hosts even root lacks it).</summary>
    public static void Apply(IReadOnlyList<SpecRlimit> limits, int pid = 0)
    {
        foreach (var limit in limits)
        {
            int resource = Number(limit.Type);
            if (limit.Soft > limit.Hard)
            {
                throw new ContainerSecurityException($"{limit.Type}: soft limit {limit.Soft} is above hard limit {limit.Hard}; the soft limit must not exceed the hard one");
            }
            try
            {
                ResourceLimitCalls.Set(resource, new ResourceLimitValue(limit.Soft, limit.Hard), pid);
            }
            catch (HostCallException e) when (e.ErrorNumber == 1)
            {
                var current = ResourceLimitCalls.Get(resource, pid);
                if (limit.Hard > current.Hard)
                {
                    throw new ContainerSecurityException(
                        $"{limit.Type}: raising the hard limit from {Show(current.Hard)} to {Show(limit.Hard)} needs CAP_SYS_RESOURCE, which this process does not have; " +
                        $"ask for a hard limit of at most {Show(current.Hard)} (e.g. --ulimit {s_names[resource][7..].ToLowerInvariant()}={Show(Math.Min(limit.Soft, current.Hard))}:{Show(current.Hard)})", e);
                }
                throw new ContainerSecurityException($"{limit.Type}: {e.Message}", e);
            }
            catch (HostCallException e)
            {
                throw new ContainerSecurityException($"{limit.Type} {limit.Soft}:{limit.Hard}: {e.Message}", e);
            }
        }
    }

    /// <summary>The limits of a process as the spec writes them (all resources).</summary>
    public static IReadOnlyList<SpecRlimit> Read(int pid = 0) =>
        s_names.Select((name, number) =>
        {
            var value = ResourceLimitCalls.Get(number, pid);
            return new SpecRlimit { Type = name, Soft = value.Soft, Hard = value.Hard };
        }).ToList();

    private static string Show(ulong value) => value == ResourceLimitValue.Infinity ? "unlimited" : value.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
