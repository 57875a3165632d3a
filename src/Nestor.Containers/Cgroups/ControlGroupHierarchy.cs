using Nestor.Host;

namespace Nestor.Containers.Cgroups;

/// <summary>cgroup v1 (one hierarchy per controller, or a few co-mounted) or v2 (one unified hierarchy).</summary>
public enum ControlGroupVersion
{
    V1,
    V2,
}

/// <summary>Where this machine's control-group hierarchies are mounted, from /proc/self/mountinfo (proc(5)): the v1
/// controllers by name and the v2 unified hierarchy. A hybrid host (v1 controllers and an empty cgroup2, as systemd's
/// "hybrid" mode) counts as v1, since limits can only be set where the controllers are.</summary>
public sealed class ControlGroupHierarchy
{
    /// <summary>The v1 controllers Nestor manages (cgroups(7), "Cgroups version 1 controllers").</summary>
    public static IReadOnlyList<string> V1Controllers { get; } = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"];

    public ControlGroupHierarchy(IReadOnlyDictionary<string, string> v1Mounts, string? unifiedMount)
    {
        V1Mounts = v1Mounts;
        UnifiedMount = unifiedMount;
    }

    /// <summary>Mount point of each v1 controller (co-mounted controllers share one).</summary>
    public IReadOnlyDictionary<string, string> V1Mounts { get; }

    /// <summary>Mount point of the cgroup2 file system, if any.</summary>
    public string? UnifiedMount { get; }

    public ControlGroupVersion Version => V1Mounts.Count > 0 ? ControlGroupVersion.V1 : ControlGroupVersion.V2;

    /// <summary>The running system's hierarchies.</summary>
    public static ControlGroupHierarchy Detect() => Parse(File.ReadAllText("/proc/self/mountinfo"));

    /// <summary>Parses mountinfo text: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS".</summary>
    public static ControlGroupHierarchy Parse(string mountinfo)
    {
        var v1 = new Dictionary<string, string>(StringComparer.Ordinal);
        string? unified = null;
        foreach (string line in mountinfo.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] fields = line.Split(' ');
            int separator = Array.IndexOf(fields, "-");
            if (separator < 5 || separator + 3 > fields.Length)
            {
                continue;
            }
            string mountPoint = MountInfo.Unescape(fields[4]);
            string type = fields[separator + 1];
            if (type == "cgroup2")
            {
                unified ??= mountPoint;
            }
            else if (type == "cgroup")
            {
                foreach (string option in fields[separator + 3].Split(','))
                {
                    if (V1Controllers.Contains(option))
                    {
                        v1.TryAdd(option, mountPoint);
                    }
                }
            }
        }
        return new ControlGroupHierarchy(v1, unified);
    }
}
