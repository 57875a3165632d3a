using System.Globalization;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Cgroups;

/// <summary>A container's control group (cgroups(7)) over cgroup v1 — one directory per controller — or v2 — one
/// directory in the unified hierarchy —, the same operations on both: limits from the spec's
/// <c>linux.resources</c> (config-linux.md, "Control groups"), membership, freezing, usage, signalling and removal.</summary>
/// <remarks>
/// <c>cgroupsPath</c> as the runtime-spec allows: an absolute path is taken from each hierarchy's root; a relative
/// one from the calling process's own cgroup in that hierarchy (/proc/self/cgroup), so that a runtime in a delegated
/// subtree nests its containers there. On v2 the devices list would need an eBPF program (BPF_CGROUP_DEVICE), which
/// Nestor does not load: there the device nodes the runtime creates are the container's only devices.
/// </remarks>
public sealed class ControlGroup
{
    private const long V1Unlimited = 1L << 62; // v1 reports "no limit" as PAGE_COUNTER_MAX pages in bytes

    private readonly ControlGroupHierarchy _hierarchy;

    // v1: controller → directory; v2: "" → directory.
    private readonly Dictionary<string, string> _directories;

    private ControlGroup(ControlGroupHierarchy hierarchy, string path, Dictionary<string, string> directories)
    {
        _hierarchy = hierarchy;
        Path = path;
        _directories = directories;
    }

    /// <summary>The cgroupsPath it was made from.</summary>
    public string Path { get; }

    public ControlGroupVersion Version => _hierarchy.Version;

    /// <summary>Its directories: by controller on v1, one (key "") on v2.</summary>
    public IReadOnlyDictionary<string, string> Directories => _directories;

    /// <summary>Makes (or reuses) the control group and sets <paramref name="resources"/>' limits on it.</summary>
    public static ControlGroup Create(string cgroupsPath, SpecResources? resources) =>
        Create(ControlGroupHierarchy.Detect(), cgroupsPath, resources);

    /// <summary>As <see cref="Create(string, SpecResources?)"/> on the given hierarchies.</summary>
    public static ControlGroup Create(ControlGroupHierarchy hierarchy, string cgroupsPath, SpecResources? resources)
    {
        var group = new ControlGroup(hierarchy, cgroupsPath, Resolve(hierarchy, cgroupsPath));
        foreach (var (controller, directory) in group._directories)
        {
            try
            {
                Directory.CreateDirectory(directory);
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                throw new ControlGroupUnavailableException(
                    $"cannot create the control group {directory} ({e.Message}): control-group limits are not available to this user here. " +
                    "Run as root, or on a cgroup v2 host run inside a cgroup delegated to you (systemd-run --user --scope -p Delegate=yes …), " +
                    "or leave out --memory, --cpus and --pids-limit", e);
            }
            if (controller == "cpuset")
            {
                InitializeCpuset(directory, hierarchy.V1Mounts["cpuset"]);
            }
        }
        if (hierarchy.Version == ControlGroupVersion.V2 && resources is not null)
        {
            group.EnableV2Controllers(resources);
        }
        if (resources is not null)
        {
            group.Update(resources);
        }
        return group;
    }

    /// <summary>An existing control group; <see cref="ControlGroupException"/> if it is not there.</summary>
    public static ControlGroup Open(string cgroupsPath) => Open(ControlGroupHierarchy.Detect(), cgroupsPath);

    public static ControlGroup Open(ControlGroupHierarchy hierarchy, string cgroupsPath)
    {
        var directories = Resolve(hierarchy, cgroupsPath);
        if (!directories.Values.Any(Directory.Exists))
        {
            throw new ControlGroupException($"control group {cgroupsPath} does not exist (looked for {string.Join(", ", directories.Values.Distinct())})");
        }
        return new ControlGroup(hierarchy, cgroupsPath, directories.Where(d => Directory.Exists(d.Value)).ToDictionary());
    }

    /// <summary>Whether a control group could be created at <paramref name="cgroupsPath"/> by this process; if not,
    /// <paramref name="reason"/> says why and what to do.</summary>
    public static bool IsAvailable(string cgroupsPath, out string reason)
    {
        var hierarchy = ControlGroupHierarchy.Detect();
        if (hierarchy.V1Mounts.Count == 0 && hierarchy.UnifiedMount is null)
        {
            reason = "no cgroup file system is mounted (mount cgroup2 on /sys/fs/cgroup)";
            return false;
        }
        foreach (string directory in Resolve(hierarchy, cgroupsPath).Values)
        {
            string? existing = directory;
            while (existing is not null && !Directory.Exists(existing))
            {
                existing = System.IO.Path.GetDirectoryName(existing);
            }
            if (existing is null || !ControlGroupFiles.IsWritable(existing))
            {
                reason = $"{existing ?? directory} is not writable by this user: control-group limits need root or a delegated cgroup (cgroup v2: systemd-run --user --scope -p Delegate=yes)";
                return false;
            }
        }
        reason = "";
        return true;
    }

    /// <summary>Sets the limits <paramref name="resources"/> names; absent fields are left as they are.</summary>
    public void Update(SpecResources resources)
    {
        if (Version == ControlGroupVersion.V1)
        {
            UpdateV1(resources);
        }
        else
        {
            UpdateV2(resources);
        }
    }

    /// <summary>Moves process <paramref name="pid"/> (and its threads) into the group, in every hierarchy.</summary>
    public void AddProcess(int pid)
    {
        foreach (string directory in _directories.Values.Distinct())
        {
            WriteIn(directory, "cgroup.procs", pid.ToString(CultureInfo.InvariantCulture));
        }
    }

    /// <summary>The processes in the group and its descendants.</summary>
    public IReadOnlyList<int> Processes()
    {
        var pids = new SortedSet<int>();
        foreach (string directory in _directories.Values.Distinct().Where(Directory.Exists))
        {
            foreach (string group in Directory.EnumerateDirectories(directory, "*", SearchOption.AllDirectories).Prepend(directory))
            {
                string file = System.IO.Path.Combine(group, "cgroup.procs");
                if (!File.Exists(file))
                {
                    continue;
                }
                foreach (string line in File.ReadAllLines(file))
                {
                    if (int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                    {
                        pids.Add(pid);
                    }
                }
            }
        }
        return [.. pids];
    }

    /// <summary>The <c>cgroup.procs</c> files a process writes "0" to in order to share process <paramref name="pid"/>'s
    /// control groups: in every mounted hierarchy (each v1 controller or named hierarchy, and v2) the group
    /// /proc/PID/cgroup names, where that is not the calling process's own group already. This is what an exec'd
    /// process joins (runc's exec joins the container's cgroups likewise): taken from the container's init rather
    /// than from cgroupsPath, so that a relative cgroupsPath (resolved against its creator's group) and hierarchies
    /// Nestor sets no limits in (hugetlb, name=systemd, v2 on a hybrid host) also match. The paths in /proc/PID/cgroup
    /// are relative to the reader's cgroup namespace, whose root the host's mounts show.</summary>
    public static IReadOnlyList<string> ProcessListFilesToJoin(int pid)
    {
        var own = ReadMembership("/proc/self/cgroup");
        var mounts = CgroupMounts(File.ReadAllText("/proc/self/mountinfo"));
        var files = new List<string>();
        foreach (var ((id, controllers), path) in ReadMembership($"/proc/{pid}/cgroup"))
        {
            if (own.TryGetValue((id, controllers), out string? mine) && mine == path)
            {
                continue;
            }
            string[] wanted = controllers.Split(',', StringSplitOptions.RemoveEmptyEntries);
            foreach (var (root, mountPoint, version2, options) in mounts)
            {
                bool sameHierarchy = wanted.Length == 0 ? version2 : !version2 && wanted.All(options.Contains);
                if (!sameHierarchy || !(path == root || path.StartsWith(root.TrimEnd('/') + "/", StringComparison.Ordinal)))
                {
                    continue;
                }
                files.Add(System.IO.Path.Combine(mountPoint.TrimEnd('/') + "/" + path[root.TrimEnd('/').Length..].TrimStart('/'), "cgroup.procs"));
                break;
            }
        }
        return files;
    }

    // /proc/PID/cgroup: "ID:CONTROLLERS:PATH" per hierarchy (cgroups(7), "/proc/[pid]/cgroup").
    private static Dictionary<(string Id, string Controllers), string> ReadMembership(string file)
    {
        var membership = new Dictionary<(string, string), string>();
        foreach (string line in File.ReadLines(file))
        {
            string[] fields = line.Split(':', 3);
            if (fields.Length == 3)
            {
                membership[(fields[0], fields[1])] = fields[2];
            }
        }
        return membership;
    }

    // The cgroup file systems in mountinfo: the mount's root within its hierarchy, its mount point, whether it is v2,
    // and its super options (the v1 controllers and name=… among them).
    private static List<(string Root, string MountPoint, bool Version2, HashSet<string> Options)> CgroupMounts(string mountinfo)
    {
        var mounts = new List<(string, string, bool, HashSet<string>)>();
        foreach (string line in mountinfo.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            string[] fields = line.Split(' ');
            int separator = Array.IndexOf(fields, "-");
            if (separator < 5 || separator + 3 > fields.Length || fields[separator + 1] is not ("cgroup" or "cgroup2"))
            {
                continue;
            }
            mounts.Add((MountInfo.Unescape(fields[3]), MountInfo.Unescape(fields[4]), fields[separator + 1] == "cgroup2",
                [.. fields[separator + 3].Split(',')]));
        }
        return mounts;
    }

    /// <summary>Stops every process of the group (v1 freezer.state FROZEN, v2 cgroup.freeze 1) and waits until the
    /// kernel reports the group frozen.</summary>
    public void Freeze() => SetFrozen(true);

    /// <summary>Lets the group's processes run again.</summary>
    public void Thaw() => SetFrozen(false);

    /// <summary>Whether the kernel reports the group frozen.</summary>
    public bool IsFrozen => Version == ControlGroupVersion.V1
        ? ReadOrNull("freezer", "freezer.state") == "FROZEN"
        : ReadKeyed("", "cgroup.events", "frozen") == 1;

    /// <summary>Sends <paramref name="signal"/> to every process of the group. SIGKILL on v2 uses cgroup.kill (no
    /// process can escape by forking); otherwise the group is frozen while it is signalled, where a freezer exists,
    /// for the same reason.</summary>
    public void KillAll(int signal)
    {
        const int sigkill = 9;
        if (Version == ControlGroupVersion.V2 && signal == sigkill && File.Exists(System.IO.Path.Combine(_directories[""], "cgroup.kill")))
        {
            WriteIn(_directories[""], "cgroup.kill", "1");
            return;
        }
        bool freeze = Version == ControlGroupVersion.V2 || _directories.ContainsKey("freezer");
        if (freeze)
        {
            Freeze();
        }
        try
        {
            foreach (int pid in Processes())
            {
                ControlGroupFiles.Signal(pid, signal);
            }
        }
        finally
        {
            if (freeze)
            {
                Thaw();
            }
        }
    }

    /// <summary>Kills what is left in the group (SIGKILL), waits for it to empty, and removes its directories
    /// (descendants first). Gone already is not an error.</summary>
    public void Delete()
    {
        if (!_directories.Values.Any(Directory.Exists))
        {
            return;
        }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (Processes().Count > 0)
        {
            KillAll(9);
            if (DateTime.UtcNow > deadline)
            {
                throw new ControlGroupException($"control group {Path} still has processes {string.Join(", ", Processes())} after SIGKILL; they may be in uninterruptible sleep (D state): try again later");
            }
            Thread.Sleep(10);
        }
        foreach (string directory in _directories.Values.Distinct().Where(Directory.Exists))
        {
            foreach (string child in Directory.EnumerateDirectories(directory, "*", SearchOption.AllDirectories).OrderByDescending(d => d.Length).Append(directory))
            {
                for (int attempt = 0; ; attempt++)
                {
                    try
                    {
                        Directory.Delete(child);
                        break;
                    }
                    catch (DirectoryNotFoundException)
                    {
                        break;
                    }
                    catch (IOException) when (attempt < 100)
                    {
                        Thread.Sleep(10); // EBUSY while the last exited task is being released
                    }
                }
            }
        }
    }

    /// <summary>Reads the group's usage counters and limits.</summary>
    public ControlGroupUsage ReadUsage() => Version == ControlGroupVersion.V1 ? ReadUsageV1() : ReadUsageV2();

    private ControlGroupUsage ReadUsageV1()
    {
        var (read, write) = BlkioBytes();
        return new ControlGroupUsage
        {
            MemoryBytes = ReadLong("memory", "memory.usage_in_bytes") ?? 0,
            MemoryMaxBytes = ReadLong("memory", "memory.max_usage_in_bytes") ?? 0,
            MemoryLimitBytes = ReadLong("memory", "memory.limit_in_bytes") is { } limit && limit < V1Unlimited ? limit : null,
            // With swap accounting the memory-plus-swap counter is the one that may trip first.
            MemoryLimitHits = (ReadLong("memory", "memory.failcnt") ?? 0) + (ReadLong("memory", "memory.memsw.failcnt") ?? 0),
            OomKills = ReadKeyed("memory", "memory.oom_control", "oom_kill") ?? 0,
            CpuNanoseconds = (ulong)(ReadLong("cpuacct", "cpuacct.usage") ?? 0),
            CpuThrottledPeriods = ReadKeyed("cpu", "cpu.stat", "nr_throttled") ?? 0,
            CpuThrottledNanoseconds = (ulong)(ReadKeyed("cpu", "cpu.stat", "throttled_time") ?? 0),
            Pids = ReadLong("pids", "pids.current") ?? 0,
            PidsLimit = ReadLong("pids", "pids.max"),
            IoReadBytes = read,
            IoWriteBytes = write,
        };
    }

    private ControlGroupUsage ReadUsageV2()
    {
        ulong read = 0, write = 0;
        foreach (string line in (ReadOrNull("", "io.stat") ?? "").Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            foreach (string pair in line.Split(' ').Skip(1))
            {
                string[] kv = pair.Split('=');
                if (kv.Length == 2 && ulong.TryParse(kv[1], NumberStyles.None, CultureInfo.InvariantCulture, out ulong value))
                {
                    if (kv[0] == "rbytes") { read += value; }
                    else if (kv[0] == "wbytes") { write += value; }
                }
            }
        }
        return new ControlGroupUsage
        {
            MemoryBytes = ReadLong("", "memory.current") ?? 0,
            MemoryMaxBytes = ReadLong("", "memory.peak") ?? 0,
            MemoryLimitBytes = ReadLong("", "memory.max"),
            MemoryLimitHits = ReadKeyed("", "memory.events", "max") ?? 0,
            OomKills = ReadKeyed("", "memory.events", "oom_kill") ?? 0,
            CpuNanoseconds = (ulong)(ReadKeyed("", "cpu.stat", "usage_usec") ?? 0) * 1000,
            CpuThrottledPeriods = ReadKeyed("", "cpu.stat", "nr_throttled") ?? 0,
            CpuThrottledNanoseconds = (ulong)(ReadKeyed("", "cpu.stat", "throttled_usec") ?? 0) * 1000,
            Pids = ReadLong("", "pids.current") ?? 0,
            PidsLimit = ReadLong("", "pids.max"),
            IoReadBytes = read,
            IoWriteBytes = write,
        };
    }

    private (ulong Read, ulong Write) BlkioBytes()
    {
        ulong read = 0, write = 0;
        foreach (string line in (ReadOrNull("blkio", "blkio.throttle.io_service_bytes_recursive") ?? ReadOrNull("blkio", "blkio.throttle.io_service_bytes") ?? "").Split('\n'))
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 3 && ulong.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out ulong value))
            {
                if (fields[1] == "Read") { read += value; }
                else if (fields[1] == "Write") { write += value; }
            }
        }
        return (read, write);
    }

    private void UpdateV1(SpecResources resources)
    {
        if (resources.Unified is { Count: > 0 })
        {
            throw new ControlGroupException("linux.resources.unified sets cgroup v2 files, but this host's controllers are cgroup v1; use the memory, cpu, pids and blockIO fields instead");
        }
        if (resources.Memory is { } memory)
        {
            if (memory.Limit is { } limit)
            {
                // Both limits: memsw must stay >= the memory limit at every step, so the order depends on direction.
                string memsw = memory.Swap is { } swap ? Number(swap) : "";
                bool swapAccounting = File.Exists(FilePath("memory", "memory.memsw.limit_in_bytes"));
                if (memsw != "" && swapAccounting && (ReadLong("memory", "memory.limit_in_bytes") ?? 0) < limit)
                {
                    Write("memory", "memory.memsw.limit_in_bytes", memsw);
                    Write("memory", "memory.limit_in_bytes", Number(limit));
                }
                else
                {
                    Write("memory", "memory.limit_in_bytes", Number(limit));
                    if (memsw != "" && swapAccounting)
                    {
                        Write("memory", "memory.memsw.limit_in_bytes", memsw);
                    }
                }
            }
            else if (memory.Swap is { } swapOnly)
            {
                Write("memory", "memory.memsw.limit_in_bytes", Number(swapOnly));
            }
            if (memory.Reservation is { } reservation)
            {
                Write("memory", "memory.soft_limit_in_bytes", Number(reservation));
            }
            if (memory.Swappiness is { } swappiness)
            {
                Write("memory", "memory.swappiness", swappiness.ToString(CultureInfo.InvariantCulture));
            }
            if (memory.DisableOOMKiller == true)
            {
                Write("memory", "memory.oom_control", "1");
            }
        }
        if (resources.Cpu is { } cpu)
        {
            if (cpu.Shares is { } shares)
            {
                Write("cpu", "cpu.shares", shares.ToString(CultureInfo.InvariantCulture));
            }
            if (cpu.Period is { } period)
            {
                Write("cpu", "cpu.cfs_period_us", period.ToString(CultureInfo.InvariantCulture));
            }
            if (cpu.Quota is { } quota)
            {
                Write("cpu", "cpu.cfs_quota_us", quota > 0 ? quota.ToString(CultureInfo.InvariantCulture) : "-1");
            }
            if (cpu.Cpus is { Length: > 0 } cpus)
            {
                Write("cpuset", "cpuset.cpus", cpus);
            }
            if (cpu.Mems is { Length: > 0 } mems)
            {
                Write("cpuset", "cpuset.mems", mems);
            }
        }
        if (resources.Pids is { } pids)
        {
            Write("pids", "pids.max", pids.Limit > 0 ? pids.Limit.ToString(CultureInfo.InvariantCulture) : "max");
        }
        if (resources.BlockIO?.Weight is { } weight)
        {
            string file = File.Exists(FilePath("blkio", "blkio.weight")) ? "blkio.weight"
                : File.Exists(FilePath("blkio", "blkio.bfq.weight")) ? "blkio.bfq.weight"
                : throw new ControlGroupUnavailableException("blockIO.weight needs a proportional I/O scheduler (BFQ or CFQ), and this kernel's blkio controller has no weight file; leave out --blkio-weight");
            Write("blkio", file, weight.ToString(CultureInfo.InvariantCulture));
        }
        foreach (var rule in resources.Devices ?? [])
        {
            Write("devices", rule.Allow ? "devices.allow" : "devices.deny", DeviceRule(rule));
        }
    }

    private void UpdateV2(SpecResources resources)
    {
        if (resources.Memory is { } memory)
        {
            if (memory.Limit is { } limit)
            {
                Write("", "memory.max", limit > 0 ? Number(limit) : "max");
                // The spec's swap is memory plus swap (v1's memsw); v2 limits swap alone.
                if (memory.Swap is { } swap)
                {
                    Write("", "memory.swap.max", swap < 0 ? "max" : Math.Max(0, swap - limit).ToString(CultureInfo.InvariantCulture));
                }
            }
            if (memory.Reservation is { } reservation)
            {
                Write("", "memory.low", Number(reservation));
            }
        }
        if (resources.Cpu is { } cpu)
        {
            if (cpu.Shares is { } shares)
            {
                Write("", "cpu.weight", CpuWeight(shares).ToString(CultureInfo.InvariantCulture));
            }
            if (cpu.Quota is not null || cpu.Period is not null)
            {
                string quota = cpu.Quota is { } q && q > 0 ? q.ToString(CultureInfo.InvariantCulture) : "max";
                Write("", "cpu.max", $"{quota} {(cpu.Period ?? 100000).ToString(CultureInfo.InvariantCulture)}");
            }
            if (cpu.Cpus is { Length: > 0 } cpus)
            {
                Write("", "cpuset.cpus", cpus);
            }
            if (cpu.Mems is { Length: > 0 } mems)
            {
                Write("", "cpuset.mems", mems);
            }
        }
        if (resources.Pids is { } pids)
        {
            Write("", "pids.max", pids.Limit > 0 ? pids.Limit.ToString(CultureInfo.InvariantCulture) : "max");
        }
        if (resources.BlockIO?.Weight is { } weight)
        {
            Write("", "io.weight", $"default {IoWeight(weight).ToString(CultureInfo.InvariantCulture)}");
        }
        foreach (var (file, value) in resources.Unified ?? [])
        {
            Write("", file, value);
        }
    }

    /// <summary>The runtime-spec's conversion of cgroup v1 cpu.shares (2–262144) to v2 cpu.weight (1–10000).</summary>
    public static ulong CpuWeight(ulong shares) => shares == 0 ? 100 : 1 + ((Math.Clamp(shares, 2, 262144) - 2) * 9999 / 262142);

    /// <summary>The conversion of blkio.weight (10–1000) to io.weight (1–10000).</summary>
    public static ulong IoWeight(ushort weight) => 1 + ((ulong)(Math.Clamp(weight, (ushort)10, (ushort)1000) - 10) * 9999 / 990);

    /// <summary>A devices-cgroup rule as devices.allow/devices.deny take it: "TYPE MAJOR:MINOR ACCESS" with * for
    /// any (Documentation/admin-guide/cgroup-v1/devices.rst).</summary>
    public static string DeviceRule(SpecDeviceCgroup rule)
    {
        string type = rule.Type ?? "a";
        string major = rule.Major?.ToString(CultureInfo.InvariantCulture) ?? "*";
        string minor = rule.Minor?.ToString(CultureInfo.InvariantCulture) ?? "*";
        return $"{type} {major}:{minor} {rule.Access ?? "rwm"}";
    }

    // v2 "no internal processes" and top-down delegation: each ancestor's cgroup.subtree_control must enable the
    // controllers the limits need (cgroups(7), "Cgroups v2 subtree control").
    private void EnableV2Controllers(SpecResources resources)
    {
        var needed = new List<string>();
        if (resources.Memory is not null) { needed.Add("memory"); }
        if (resources.Cpu is { } cpu)
        {
            if (cpu.Shares is not null || cpu.Quota is not null || cpu.Period is not null) { needed.Add("cpu"); }
            if (cpu.Cpus is not null || cpu.Mems is not null) { needed.Add("cpuset"); }
        }
        if (resources.Pids is not null) { needed.Add("pids"); }
        if (resources.BlockIO?.Weight is not null) { needed.Add("io"); }
        foreach (string key in (resources.Unified ?? []).Keys)
        {
            needed.Add(key.Split('.')[0]);
        }
        needed = needed.Distinct().Where(c => c != "cgroup").ToList();
        if (needed.Count == 0)
        {
            return;
        }
        string root = _hierarchy.UnifiedMount!;
        string target = _directories[""];
        var chain = new List<string>();
        for (string? d = System.IO.Path.GetDirectoryName(target); d is not null && d.Length >= root.Length; d = System.IO.Path.GetDirectoryName(d))
        {
            chain.Insert(0, d);
        }
        foreach (string directory in chain)
        {
            string available = ControlGroupFiles.Read(System.IO.Path.Combine(directory, "cgroup.controllers"));
            var missing = needed.Where(c => !available.Split(' ').Contains(c)).ToList();
            if (missing.Count > 0)
            {
                throw new ControlGroupUnavailableException(
                    $"cgroup v2 controller(s) {string.Join(", ", missing)} are not available in {directory} (cgroup.controllers: '{available}'): " +
                    "the parent has not delegated them; enable them in the parent's cgroup.subtree_control or leave out the limits that need them");
            }
            string enabled = ControlGroupFiles.Read(System.IO.Path.Combine(directory, "cgroup.subtree_control"));
            foreach (string controller in needed.Where(c => !enabled.Split(' ').Contains(c)))
            {
                WriteIn(directory, "cgroup.subtree_control", "+" + controller);
            }
        }
    }

    private void SetFrozen(bool frozen)
    {
        if (Version == ControlGroupVersion.V1)
        {
            if (!_directories.ContainsKey("freezer"))
            {
                throw new ControlGroupUnavailableException("freezing needs the freezer controller, which is not mounted on this host (mount -t cgroup -o freezer freezer /sys/fs/cgroup/freezer)");
            }
            Write("freezer", "freezer.state", frozen ? "FROZEN" : "THAWED");
        }
        else
        {
            Write("", "cgroup.freeze", frozen ? "1" : "0");
        }
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (IsFrozen != frozen)
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new ControlGroupException($"control group {Path} did not become {(frozen ? "frozen" : "thawed")} within 10 s");
            }
            if (frozen && Version == ControlGroupVersion.V1)
            {
                Write("freezer", "freezer.state", "FROZEN"); // v1 may stay FREEZING until asked again
            }
            Thread.Sleep(1);
        }
    }

    private static Dictionary<string, string> Resolve(ControlGroupHierarchy hierarchy, string cgroupsPath)
    {
        var directories = new Dictionary<string, string>(StringComparer.Ordinal);
        if (hierarchy.Version == ControlGroupVersion.V1)
        {
            foreach (var (controller, mount) in hierarchy.V1Mounts)
            {
                directories[controller] = Join(mount, cgroupsPath, OwnGroup(controller));
            }
        }
        else
        {
            if (hierarchy.UnifiedMount is null)
            {
                throw new ControlGroupUnavailableException("no cgroup file system is mounted: mount cgroup2 on /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)");
            }
            directories[""] = Join(hierarchy.UnifiedMount, cgroupsPath, OwnGroup(""));
        }
        return directories;
    }

    private static string Join(string mount, string cgroupsPath, string ownGroup)
    {
        string relative = cgroupsPath.StartsWith('/') ? cgroupsPath : ownGroup.TrimEnd('/') + "/" + cgroupsPath;
        string full = System.IO.Path.GetFullPath(mount.TrimEnd('/') + "/" + relative.TrimStart('/'));
        if (!full.StartsWith(mount.TrimEnd('/') + "/", StringComparison.Ordinal))
        {
            throw new ControlGroupException($"cgroupsPath '{cgroupsPath}' leaves the cgroup hierarchy at {mount}: use a path without '..'");
        }
        return full;
    }

    // This process's cgroup in a hierarchy (/proc/self/cgroup: "ID:CONTROLLERS:PATH"; v2 is "0::PATH").
    private static string OwnGroup(string controller)
    {
        foreach (string line in File.ReadLines("/proc/self/cgroup"))
        {
            string[] fields = line.Split(':', 3);
            if (fields.Length == 3 && (controller == "" ? fields[0] == "0" && fields[1] == "" : fields[1].Split(',').Contains(controller)))
            {
                return fields[2];
            }
        }
        return "/";
    }

    // A new v1 cpuset has no CPUs or memory nodes, and a task cannot join it (ENOSPC) until both are set; take them
    // from the nearest ancestor that has them, for every level that was just created.
    private static void InitializeCpuset(string directory, string mount)
    {
        var chain = new List<string>();
        for (string? d = directory; d is not null && d.Length > mount.TrimEnd('/').Length; d = System.IO.Path.GetDirectoryName(d))
        {
            chain.Insert(0, d);
        }
        foreach (string level in chain)
        {
            string parent = System.IO.Path.GetDirectoryName(level)!;
            foreach (string file in new[] { "cpuset.cpus", "cpuset.mems" })
            {
                string path = System.IO.Path.Combine(level, file);
                if (File.Exists(path) && ControlGroupFiles.Read(path).Trim() == "")
                {
                    ControlGroupFiles.Write(path, ControlGroupFiles.Read(System.IO.Path.Combine(parent, file)).Trim());
                }
            }
        }
    }

    private string FilePath(string controller, string file) =>
        System.IO.Path.Combine(_directories.TryGetValue(controller, out string? d) ? d : "/nonexistent", file);

    private void Write(string controller, string file, string value)
    {
        if (!_directories.TryGetValue(controller, out string? directory))
        {
            throw new ControlGroupUnavailableException($"the {controller} controller is not mounted on this host, so {file} cannot be set; mount it (mount -t cgroup -o {controller} {controller} /sys/fs/cgroup/{controller}) or leave out that limit");
        }
        WriteFile(System.IO.Path.Combine(directory, file), value);
    }

    private static void WriteIn(string directory, string file, string value) => WriteFile(System.IO.Path.Combine(directory, file), value);

    private static void WriteFile(string path, string value)
    {
        try
        {
            ControlGroupFiles.Write(path, value);
        }
        catch (HostCallException e)
        {
            string advice = e.ErrorNumber switch
            {
                1 or 13 => "this user may not write it: run as root or in a delegated cgroup",
                2 => "the kernel has no such file: the controller or feature is missing on this host",
                16 => "the group is busy (e.g. a limit below current use, or v2 processes in an inner node)",
                22 => "the kernel refused the value",
                28 => "no CPUs or memory nodes are set for this cpuset",
                _ => "see cgroups(7)",
            };
            throw new ControlGroupException($"cannot write '{value}' to {path}: {e.Message}; {advice}", e);
        }
    }

    private string? ReadOrNull(string controller, string file)
    {
        string path = FilePath(controller, file);
        try
        {
            return File.Exists(path) ? ControlGroupFiles.Read(path) : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private long? ReadLong(string controller, string file) =>
        ReadOrNull(controller, file) is { } text && long.TryParse(text.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long value) ? value : null;

    // "key value" lines (cpu.stat, memory.events, memory.oom_control, cgroup.events).
    private long? ReadKeyed(string controller, string file, string key)
    {
        foreach (string line in (ReadOrNull(controller, file) ?? "").Split('\n'))
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length == 2 && fields[0] == key && long.TryParse(fields[1], NumberStyles.None, CultureInfo.InvariantCulture, out long value))
            {
                return value;
            }
        }
        return null;
    }

    private static string Number(long value) => value < 0 ? "-1" : value.ToString(CultureInfo.InvariantCulture);
}
