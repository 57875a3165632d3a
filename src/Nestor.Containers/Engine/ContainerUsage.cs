using System.Globalization;

namespace Nestor.Containers.Engine;

/// <summary>A running container's resource usage, read from its control groups (cgroups(7)): cgroup v1's
/// memory.usage_in_bytes / memory.limit_in_bytes, cpuacct.usage and pids.current, or v2's memory.current / memory.max,
/// cpu.stat's usage_usec and pids.current; the CPU share is the usage's growth over a sampling interval.</summary>
public sealed record ContainerUsage(double CpuPercent, long MemoryBytes, long? MemoryLimitBytes, long Pids)
{
    /// <summary>Samples the containers' CPU time twice, <paramref name="interval"/> apart.</summary>
    public static List<ContainerUsage> Sample(IReadOnlyList<ContainerRecord> records, TimeSpan interval)
    {
        var first = records.Select(record => CpuNanoseconds(record.State.Pid)).ToList();
        var started = DateTime.UtcNow;
        if (records.Count > 0)
        {
            Thread.Sleep(interval);
        }
        double elapsed = (DateTime.UtcNow - started).TotalMilliseconds * 1e6;
        var usages = new List<ContainerUsage>();
        for (int i = 0; i < records.Count; i++)
        {
            int pid = records[i].State.Pid;
            long cpu = CpuNanoseconds(pid) - first[i];
            long? limit = ReadNumber(pid, "memory", "memory.limit_in_bytes") ?? ReadNumber(pid, "", "memory.max");
            if (limit is >= long.MaxValue / 2)
            {
                limit = null; // v1's "no limit" is a huge page-rounded number
            }
            usages.Add(new ContainerUsage(elapsed > 0 ? 100.0 * cpu / elapsed : 0,
                ReadNumber(pid, "memory", "memory.usage_in_bytes") ?? ReadNumber(pid, "", "memory.current") ?? 0,
                limit,
                ReadNumber(pid, "pids", "pids.current") ?? ReadNumber(pid, "", "pids.current") ?? 0));
        }
        return usages;
    }

    /// <summary>The directory of <paramref name="pid"/>'s cgroup for <paramref name="controller"/> ("" for v2's unified
    /// hierarchy), from /proc/PID/cgroup.</summary>
    public static string? ControlGroupDirectory(int pid, string controller)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/cgroup"))
            {
                string[] fields = line.Split(':', 3);
                if (fields.Length == 3 && (controller.Length == 0 ? fields[0] == "0" : fields[1].Split(',').Contains(controller)))
                {
                    string mount = controller.Length == 0
                        ? (Directory.Exists("/sys/fs/cgroup/unified") ? "/sys/fs/cgroup/unified" : "/sys/fs/cgroup")
                        : Path.Combine("/sys/fs/cgroup", controller == "cpuacct" && !Directory.Exists("/sys/fs/cgroup/cpuacct") ? "cpu,cpuacct" : controller);
                    return mount + fields[2];
                }
            }
        }
        catch (IOException)
        {
        }
        return null;
    }

    private static long? ReadNumber(int pid, string controller, string file)
    {
        if (ControlGroupDirectory(pid, controller) is not { } directory)
        {
            return null;
        }
        try
        {
            string text = File.ReadAllText(Path.Combine(directory, file)).Trim();
            return text == "max" ? long.MaxValue : long.Parse(text, CultureInfo.InvariantCulture);
        }
        catch (Exception exception) when (exception is IOException or FormatException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static long CpuNanoseconds(int pid)
    {
        if (ReadNumber(pid, "cpuacct", "cpuacct.usage") is { } v1)
        {
            return v1;
        }
        if (ControlGroupDirectory(pid, "") is { } directory && File.Exists(Path.Combine(directory, "cpu.stat")))
        {
            foreach (string line in File.ReadLines(Path.Combine(directory, "cpu.stat")))
            {
                if (line.StartsWith("usage_usec ", StringComparison.Ordinal))
                {
                    return long.Parse(line[11..], CultureInfo.InvariantCulture) * 1000;
                }
            }
        }
        return 0;
    }

    /// <summary>Docker's sizes: 1.5MiB, 64MiB, 2GiB.</summary>
    public static string Bytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.##}GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.##}MiB",
        >= 1L << 10 => $"{bytes / 1024.0:0.##}KiB",
        _ => $"{bytes}B",
    };
}
