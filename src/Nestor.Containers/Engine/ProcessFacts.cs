using System.Globalization;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>Facts about processes and mounts read from procfs (proc(5)).</summary>
public static class ProcessFacts
{
    /// <summary>The process's start time in clock ticks after boot (/proc/PID/stat field 22); 0 if it is gone. The
    /// command name (field 2) may hold spaces and parentheses, so the fields are counted after its last ')'.</summary>
    public static ulong StartTime(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return ulong.Parse(fields[19], CultureInfo.InvariantCulture);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return 0;
        }
    }

    /// <summary>True when <paramref name="pid"/> is alive and is the process that started at <paramref name="startTime"/>.</summary>
    public static bool IsAlive(int pid, ulong startTime) =>
        pid > 0 && StartTime(pid) is var now && now != 0 && (startTime == 0 || now == startTime) && !IsZombie(pid);

    private static bool IsZombie(int pid)
    {
        try
        {
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z');
        }
        catch (IOException)
        {
            return true;
        }
    }

    /// <summary>This boot's random id (/proc/sys/kernel/random/boot_id).</summary>
    public static string BootId()
    {
        try
        {
            return File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>True when <paramref name="path"/> is a mount point in this process's mount namespace
    /// (/proc/self/mountinfo's fifth field, with the kernel's octal escapes for space, tab, newline and backslash).</summary>
    public static bool IsMountPoint(string path)
    {
        string full = Path.GetFullPath(path).TrimEnd('/');
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] fields = line.Split(' ');
            if (fields.Length > 4 && MountInfo.Unescape(fields[4]) == full)
            {
                return true;
            }
        }
        return false;
    }
}
