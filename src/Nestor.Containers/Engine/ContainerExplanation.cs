using System.Globalization;
using System.Text;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary><c>container inspect --explain</c>: what makes a running container, read from the kernel rather than from
/// the engine's own record — the container counterpart of <c>nestor run --stats</c>: its namespaces (inode numbers of
/// /proc/PID/ns/* against the host's, /proc/1/ns/*, and the caller's), control groups with limits and usage,
/// capabilities (CapEff, CapBnd of /proc/PID/status decoded by capabilities(7)'s numbers), seccomp mode and filters,
/// its mounts (/proc/PID/mountinfo) and the overlay layers of its root.</summary>
public static class ContainerExplanation
{
    private static readonly string[] NamespaceNames = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

    /// <summary>The explanation as text.</summary>
    public static string Explain(ContainerEngine engine, ContainerRecord record)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"Container {record.Name} ({record.Id[..12]}), {record.State.Status}, image {record.Image}, runtime {record.HostConfig.Runtime}\n");
        if (!record.State.Running)
        {
            text.Append("  not running: namespaces, control groups, capabilities and mounts exist only while it runs\n");
            Layers(text, record);
            return text.ToString();
        }
        int pid = record.State.Pid;
        text.Append(CultureInfo.InvariantCulture, $"  first process: host pid {pid}, monitor pid {record.State.MonitorPid}\n\n");

        text.Append(CultureInfo.InvariantCulture, $"Namespaces (inode of /proc/{pid}/ns/NAME; host = /proc/1/ns, caller = /proc/self/ns):\n");
        text.Append("  namespace  container     host          caller        \n");
        foreach (string name in NamespaceNames)
        {
            ulong? container = NamespaceInode(pid.ToString(CultureInfo.InvariantCulture), name);
            ulong? host = NamespaceInode("1", name);
            ulong? caller = NamespaceInode("self", name);
            string verdict = container is null ? "unreadable" : container == host ? "shared with the host" : "own (isolated)";
            text.Append(CultureInfo.InvariantCulture, $"  {name,-9}  {Show(container),-12}  {Show(host),-12}  {Show(caller),-12}  {verdict}\n");
        }

        text.Append(CultureInfo.InvariantCulture, $"\nControl groups (/proc/{pid}/cgroup):\n");
        foreach (var (controller, files) in new (string, string[])[]
        {
            ("memory", ["memory.limit_in_bytes", "memory.usage_in_bytes", "memory.max_usage_in_bytes"]),
            ("cpu", ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares"]),
            ("cpuacct", ["cpuacct.usage"]),
            ("pids", ["pids.max", "pids.current"]),
            ("", ["memory.max", "memory.current", "cpu.max", "pids.max", "pids.current"]),
        })
        {
            if (ContainerUsage.ControlGroupDirectory(pid, controller) is not { } directory || !Directory.Exists(directory))
            {
                continue;
            }
            var values = files.Where(file => File.Exists(Path.Combine(directory, file)))
                .Select(file => $"{file}={ReadTrimmed(Path.Combine(directory, file))}").ToList();
            if (values.Count > 0)
            {
                text.Append(CultureInfo.InvariantCulture, $"  {(controller.Length == 0 ? "unified" : controller),-8} {directory}\n           {string.Join("  ", values)}\n");
            }
        }

        var status = ReadStatus(pid);
        text.Append(CultureInfo.InvariantCulture, $"\nCapabilities (/proc/{pid}/status):\n");
        foreach (string field in new[] { "CapEff", "CapPrm", "CapBnd" })
        {
            if (status.TryGetValue(field, out string? mask))
            {
                var names = DecodeCapabilities(ulong.Parse(mask, NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                text.Append(CultureInfo.InvariantCulture, $"  {field} {mask} ({names.Count}): {string.Join(' ', names)}\n");
            }
        }
        status.TryGetValue("NoNewPrivs", out string? noNewPrivileges);
        text.Append(CultureInfo.InvariantCulture, $"  NoNewPrivs {noNewPrivileges ?? "?"}\n");

        status.TryGetValue("Seccomp", out string? seccomp);
        status.TryGetValue("Seccomp_filters", out string? filters);
        string mode = seccomp switch { "0" => "disabled", "1" => "strict", "2" => "filter", _ => "unknown" };
        int rules = SeccompRules(engine, record);
        text.Append(CultureInfo.InvariantCulture, $"\nSeccomp: mode {seccomp ?? "?"} ({mode}), {filters ?? "?"} filter program(s) attached; the bundle's profile has {rules} syscall rule(s)\n");

        text.Append(CultureInfo.InvariantCulture, $"\nMounts (/proc/{pid}/mountinfo: mount point, type, source, options):\n");
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/mountinfo"))
            {
                string[] halves = line.Split(" - ", 2);
                string[] left = halves[0].Split(' ');
                string[] right = halves.Length > 1 ? halves[1].Split(' ') : [];
                if (left.Length > 5 && right.Length > 1)
                {
                    text.Append(CultureInfo.InvariantCulture, $"  {MountInfo.Unescape(left[4]),-28} {right[0],-8} {right[1],-10} {left[5]}\n");
                }
            }
        }
        catch (IOException)
        {
            text.Append("  unreadable\n");
        }
        text.Append('\n');
        Layers(text, record);
        return text.ToString();
    }

    private static void Layers(StringBuilder text, ContainerRecord record)
    {
        var root = record.RootFileSystem;
        text.Append("Root file system (overlay; the container writes to upper, reads through to the lower layers, top first):\n");
        text.Append(CultureInfo.InvariantCulture, $"  merged  {root.MergedDirectory}\n  upper   {root.UpperDirectory}\n  work    {root.WorkDirectory}\n");
        for (int i = root.LowerDirectories.Count - 1; i >= 0; i--)
        {
            string diffId = i < root.LowerDiffIds.Count ? root.LowerDiffIds[i] : "?";
            text.Append(CultureInfo.InvariantCulture, $"  lower {i}  {root.LowerDirectories[i]}  diff id {diffId}\n");
        }
    }

    /// <summary>The inode number of /proc/PROCESS/ns/NAME (the namespace's identity, namespaces(7)).</summary>
    public static ulong? NamespaceInode(string process, string name)
    {
        try
        {
            string? target = new FileInfo($"/proc/{process}/ns/{name}").LinkTarget;
            if (target is null)
            {
                return null;
            }
            int open = target.IndexOf('[');
            return ulong.Parse(target[(open + 1)..^1], CultureInfo.InvariantCulture);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }

    private static string Show(ulong? inode) => inode?.ToString(CultureInfo.InvariantCulture) ?? "-";

    /// <summary>The capability names of a mask, by capabilities(7)'s numbering.</summary>
    public static List<string> DecodeCapabilities(ulong mask)
    {
        var names = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            if ((mask & (1UL << bit)) != 0)
            {
                names.Add(bit < Capabilities.All.Count ? Capabilities.All[bit] : $"CAP_{bit}");
            }
        }
        return names;
    }

    private static Dictionary<string, string> ReadStatus(int pid)
    {
        var fields = new Dictionary<string, string>();
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
            {
                int colon = line.IndexOf(':');
                if (colon > 0)
                {
                    fields[line[..colon]] = line[(colon + 1)..].Trim();
                }
            }
        }
        catch (IOException)
        {
        }
        return fields;
    }

    private static int SeccompRules(ContainerEngine engine, ContainerRecord record)
    {
        try
        {
            var spec = RuntimeSpec.Load(Path.Combine(engine.Paths.Bundle(record.Id), "config.json"));
            return spec.Linux?.Seccomp?.Syscalls?.Sum(rule => rule.Names.Count) ?? 0;
        }
        catch (Exception exception) when (exception is IOException or System.Text.Json.JsonException)
        {
            return 0;
        }
    }

    private static string ReadTrimmed(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim().ReplaceLineEndings(" ");
        }
        catch (IOException)
        {
            return "?";
        }
    }
}
