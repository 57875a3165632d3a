using System.Globalization;

namespace Nestor.Hypervisor.Memory;

/// <summary>This process's memory as the host kernel counts it (proc(5), <c>/proc/self/status</c>).</summary>
public static class ProcessMemory
{
    /// <summary>VmRSS: the process's resident set, in bytes.</summary>
    /// <exception cref="InvalidOperationException">The file has no VmRSS line (not Linux's procfs).</exception>
    public static long ResidentSetBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                // "VmRSS:     12345 kB"
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        throw new InvalidOperationException("/proc/self/status has no VmRSS line");
    }
}
