using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>Builds the container's root in the init's mount namespace (config.md "Root", "Mounts"; config-linux.md
/// "Default Devices", "Default Filesystems", "maskedPaths", "readonlyPaths", "rootfsPropagation"): propagation,
/// the root bound onto itself, the spec's mounts, devices and /dev symlinks, then pivot_root and the masks.</summary>
internal sealed class RootFileSystem(string rootfs, bool inUserNamespace, RootFileSystem.ControlGroupView? controlGroups = null)
{
    /// <summary>config-linux.md "Default Devices": path, major, minor (all character devices, mode 0666).</summary>
    private static readonly (string Name, int Major, int Minor)[] DefaultDevices =
    [
        ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
    ];

    public string Rootfs { get; } = rootfs;

    /// <summary>Makes every mount a slave (or what rootfsPropagation says) so nothing done here reaches the host, and
    /// binds the root onto itself: pivot_root(2) needs the new root to be a mount point. With
    /// <paramref name="overlayOptions"/> (<see cref="RuntimeAnnotations.RootOverlay"/>) the root is first an overlay
    /// mounted here, in the container's namespaces, so that it never appears on the host.</summary>
    public void PrepareRoot(string? rootfsPropagation, string? overlayOptions = null)
    {
        MountFlags propagation = rootfsPropagation is null ? MountFlags.Slave | MountFlags.Recursive : PropagationFlag(rootfsPropagation)
            ?? throw new ContainerRuntimeException($"unknown rootfsPropagation '{rootfsPropagation}' (private, rprivate, slave, rslave, shared, rshared, unbindable, runbindable)");
        Step("making / " + (rootfsPropagation ?? "rslave"), () => MountCalls.Mount(null, "/", null, propagation | MountFlags.Recursive));
        if (overlayOptions is not null)
        {
            Step($"mounting the overlay root on {Rootfs} ({RuntimeAnnotations.RootOverlay})", () => MountCalls.Mount("overlay", Rootfs, "overlay", MountFlags.None, overlayOptions));
        }
        Step($"binding the root {Rootfs} onto itself", () => MountCalls.Mount(Rootfs, Rootfs, null, MountFlags.Bind | MountFlags.Recursive));
    }

    /// <summary>The spec's mounts in order.</summary>
    public void MountAll(IReadOnlyList<SpecMount>? mounts)
    {
        foreach (var mount in mounts ?? [])
        {
            MountOne(mount);
        }
    }

    private void MountOne(SpecMount mount)
    {
        if (!mount.Destination.StartsWith('/'))
        {
            throw new ContainerRuntimeException($"mount destination '{mount.Destination}' is not absolute (config.md: destination must be an absolute path)");
        }
        var (flags, propagation, data) = ParseOptions(mount.Options);
        bool bind = flags.HasFlag(MountFlags.Bind) || mount.Type == "bind";
        string target = PathJoin.InRoot(Rootfs, mount.Destination);
        string what = $"mounting {mount.Source ?? mount.Type} on {mount.Destination}";
        if (mount.Type == "cgroup" || mount.Type == "cgroup2")
        {
            MountControlGroups(target, flags);
            return;
        }
        if (bind)
        {
            string source = mount.Source ?? throw new ContainerRuntimeException($"bind mount on {mount.Destination} has no source");
            if (!Path.Exists(source))
            {
                throw new ContainerRuntimeException($"{what}: the source {source} does not exist");
            }
            CreateMountPoint(target, isFile: File.Exists(source) && !Directory.Exists(source));
            Step(what, () => MountCalls.Mount(source, target, null, MountFlags.Bind | (flags & MountFlags.Recursive)));
            var extra = flags & ~(MountFlags.Bind | MountFlags.Recursive);
            if (extra != MountFlags.None)
            {
                Step(what + " (remount with its options)", () =>
                    MountCalls.Mount(null, target, null, MountFlags.Remount | MountFlags.Bind | extra | LockedFlags(target)));
            }
        }
        else
        {
            CreateMountPoint(target, isFile: false);
            try
            {
                MountCalls.Mount(mount.Source ?? mount.Type, target, mount.Type, flags, data);
            }
            catch (HostCallException exception) when (mount.Type == "sysfs" && inUserNamespace && exception.ErrorNumber == 1)
            {
                // sysfs belongs to the network namespace's owner: in a user namespace without its own network
                // namespace the kernel refuses it (EPERM); the host's /sys bound read-only shows the same tree.
                Step(what + " (bind of the host's /sys)", () => MountCalls.Mount("/sys", target, null, MountFlags.Bind | MountFlags.Recursive));
                Step(what + " (read-only)", () => MountCalls.Mount(null, target, null, MountFlags.Remount | MountFlags.Bind | MountFlags.ReadOnly | LockedFlags(target)));
            }
            catch (HostCallException exception)
            {
                throw new ContainerRuntimeException($"{what}: {exception.Message}", exception);
            }
        }
        if (propagation is { } change)
        {
            Step(what + " (propagation)", () => MountCalls.Mount(null, target, null, change));
        }
    }

    /// <summary>This process's cgroup in each hierarchy (/proc/self/cgroup) and the host's cgroup mounts under
    /// /sys/fs/cgroup with their roots (/proc/self/mountinfo).</summary>
    internal sealed record ControlGroupView(Dictionary<string, string> Membership,
        List<(string MountPoint, string Root, string Controllers)> Hierarchies);

    /// <summary>Reads <see cref="ControlGroupView"/>. It must be read before the init unshares its cgroup namespace:
    /// inside it both files are relative to the namespace's root (/proc/self/cgroup says "/" and mountinfo's root of
    /// the host's hierarchies becomes "/.."), so the container's own directory in each hierarchy could no longer be
    /// found and the bind would show the host's root cgroup instead (cgroup_namespaces(7)).</summary>
    internal static ControlGroupView CaptureControlGroups()
    {
        var membership = new Dictionary<string, string>();
        foreach (string line in File.ReadLines("/proc/self/cgroup"))
        {
            string[] fields = line.Split(':', 3);
            if (fields.Length == 3)
            {
                membership[fields[1]] = fields[2];
            }
        }
        var hierarchies = new List<(string MountPoint, string Root, string Controllers)>();
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] halves = line.Split(" - ", 2);
            string[] before = halves[0].Split(' ');
            string[] after = halves.Length > 1 ? halves[1].Split(' ') : [];
            if (after.Length < 3 || before.Length < 5 || !before[4].StartsWith("/sys/fs/cgroup", StringComparison.Ordinal))
            {
                continue;
            }
            if (after[0] == "cgroup2")
            {
                hierarchies.Add((before[4], before[3], ""));
            }
            else if (after[0] == "cgroup")
            {
                string controllers = string.Join(',', after[2].Split(',').Where(o => o is not ("rw" or "ro" or "nosuid" or "nodev" or "noexec" or "relatime" or "noatime")));
                hierarchies.Add((before[4], before[3], controllers));
            }
        }
        return new ControlGroupView(membership, hierarchies);
    }

    /// <summary>A cgroup mount shows the container's own cgroups (its cgroup namespace's root): each hierarchy the
    /// host has mounted under /sys/fs/cgroup is bound at the same place under the destination, from the directory
    /// of this process's cgroup in it; on cgroup v1 the destination is a tmpfs holding one directory per hierarchy.
    /// Binding (not mounting cgroup anew) also works in a user namespace, where cgroup v1 cannot be mounted.</summary>
    private void MountControlGroups(string target, MountFlags flags)
    {
        CreateMountPoint(target, isFile: false);
        var (membership, hierarchies) = controlGroups ?? CaptureControlGroups();
        // Hybrid hosts (v1 controllers plus an empty cgroup2 at /sys/fs/cgroup/unified): runc and crun show only the
        // v1 hierarchies, so does Nestor.
        if (hierarchies.Any(h => h.Controllers.Length > 0))
        {
            hierarchies.RemoveAll(h => h.Controllers.Length == 0);
        }
        bool unifiedOnly = hierarchies.Count == 1 && hierarchies[0].MountPoint == "/sys/fs/cgroup";
        if (!unifiedOnly)
        {
            Step($"mounting tmpfs on {target} for the cgroup hierarchies", () =>
                MountCalls.Mount("tmpfs", target, "tmpfs", MountFlags.NoSuid | MountFlags.NoDev | MountFlags.NoExec, "mode=755"));
        }
        foreach (var (mountPoint, root, controllers) in hierarchies)
        {
            string key = controllers;
            if (!membership.TryGetValue(key, out string? path))
            {
                if (!membership.TryGetValue(controllers.Replace("name=", "", StringComparison.Ordinal), out path))
                {
                    path = root;
                }
            }
            // The container's directory relative to the mount's root: "/nestor/ID" under a root of "/" is itself;
            // under a mount of a subtree ("/a") only a path inside it ("/a/…") has a place there.
            string relative = root == "/" ? (path == "/" ? "" : path)
                : path == root ? ""
                : path.StartsWith(root + "/", StringComparison.Ordinal) ? path[root.Length..] : "";
            string source = mountPoint + relative;
            string destination = Path.Combine(target, mountPoint["/sys/fs/cgroup".Length..].TrimStart('/'));
            if (!Directory.Exists(source))
            {
                continue;
            }
            CreateMountPoint(destination, isFile: false);
            Step($"binding cgroup hierarchy {source} on {destination}", () => MountCalls.Mount(source, destination, null, MountFlags.Bind | MountFlags.Recursive));
            if (flags.HasFlag(MountFlags.ReadOnly))
            {
                Step($"making {destination} read-only", () => MountCalls.Mount(null, destination, null, MountFlags.Remount | MountFlags.Bind | MountFlags.ReadOnly | LockedFlags(destination)));
            }
        }
        if (!unifiedOnly && flags.HasFlag(MountFlags.ReadOnly))
        {
            Step($"making {target} read-only", () => MountCalls.Mount(null, target, null, MountFlags.Remount | MountFlags.ReadOnly | MountFlags.NoSuid | MountFlags.NoDev | MountFlags.NoExec, "mode=755"));
        }
    }

    /// <summary>The default devices and the spec's: mknod as real root; in a user namespace (where mknod of a device is
    /// refused) an empty file with the host's device bound onto it, as runc does.</summary>
    public void CreateDevices(IReadOnlyList<SpecDevice>? devices)
    {
        string dev = PathJoin.InRoot(Rootfs, "/dev");
        if (!Directory.Exists(dev))
        {
            Directory.CreateDirectory(dev);
        }
        var all = DefaultDevices.Select(d => new SpecDevice { Type = "c", Path = "/dev/" + d.Name, Major = d.Major, Minor = d.Minor, FileMode = Convert.ToUInt32("666", 8), Uid = 0, Gid = 0 }).ToList();
        foreach (var device in devices ?? [])
        {
            all.RemoveAll(d => d.Path == device.Path);
            all.Add(device);
        }
        uint previous = MountCalls.SetUmask(0);
        try
        {
            foreach (var device in all)
            {
                CreateDevice(device);
            }
        }
        finally
        {
            MountCalls.SetUmask(previous);
        }
    }

    private void CreateDevice(SpecDevice device)
    {
        string target = PathJoin.InRoot(Rootfs, device.Path);
        if (Path.Exists(target) && new FileInfo(target).LinkTarget is null)
        {
            File.Delete(target);
        }
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        if (!inUserNamespace)
        {
            try
            {
                MountCalls.MakeNode(target, device.Type[0], device.FileMode ?? Convert.ToUInt32("666", 8), device.Major ?? 0, device.Minor ?? 0);
                return;
            }
            catch (HostCallException exception) when (exception.ErrorNumber == 1)
            {
                // EPERM: no CAP_MKNOD (e.g. a restricted host); bind instead.
            }
        }
        if (!Path.Exists(device.Path))
        {
            throw new ContainerRuntimeException($"device {device.Path} cannot be made in a user namespace and the host has none to bind");
        }
        File.WriteAllBytes(target, []);
        Step($"binding the host's {device.Path}", () => MountCalls.Mount(device.Path, target, null, MountFlags.Bind));
    }

    /// <summary>config-linux.md "Default Devices" symlinks: /dev/fd, stdin, stdout, stderr, ptmx (to pts/ptmx) and
    /// core (to /proc/kcore where the host has it).</summary>
    public void CreateDeviceLinks()
    {
        string dev = PathJoin.InRoot(Rootfs, "/dev");
        var links = new List<(string Link, string Target)>
        {
            ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
        };
        if (Directory.Exists(Path.Combine(dev, "pts")) && !Path.Exists(Path.Combine(dev, "ptmx")))
        {
            links.Add(("ptmx", "pts/ptmx"));
        }
        if (File.Exists("/proc/kcore"))
        {
            links.Add(("core", "/proc/kcore"));
        }
        foreach (var (link, target) in links)
        {
            MountCalls.SymbolicLink(target, Path.Combine(dev, link));
        }
    }

    /// <summary>pivot_root(".", ".") in the new root, then the old root (stacked on it) made a slave and detached
    /// (pivot_root(2), "NOTES": no directory for the old root needed, nothing of the host stays reachable).</summary>
    public void PivotRoot()
    {
        Step($"chdir into {Rootfs}", () => MountCalls.ChangeDirectory(Rootfs));
        Step($"pivot_root into {Rootfs}", () => MountCalls.PivotRoot(".", "."));
        Step("making the old root a slave", () => MountCalls.Mount(null, ".", null, MountFlags.Slave | MountFlags.Recursive));
        Step("detaching the old root", () => MountCalls.Unmount(".", MountCalls.DetachFlag));
        Step("chdir to /", () => MountCalls.ChangeDirectory("/"));
    }

    /// <summary>maskedPaths (after pivot_root): /dev/null bound over files, a read-only tmpfs over directories.</summary>
    public static void MaskPaths(IReadOnlyList<string>? paths)
    {
        foreach (string path in paths ?? [])
        {
            if (Directory.Exists(path))
            {
                Step($"masking {path}", () => MountCalls.Mount("tmpfs", path, "tmpfs", MountFlags.ReadOnly));
            }
            else if (File.Exists(path))
            {
                Step($"masking {path}", () => MountCalls.Mount("/dev/null", path, null, MountFlags.Bind));
            }
        }
    }

    /// <summary>readonlyPaths (after pivot_root): each bound onto itself and remounted read-only.</summary>
    public static void MakeReadOnly(IReadOnlyList<string>? paths)
    {
        foreach (string path in paths ?? [])
        {
            if (!Path.Exists(path))
            {
                continue;
            }
            Step($"making {path} read-only", () =>
            {
                MountCalls.Mount(path, path, null, MountFlags.Bind | MountFlags.Recursive);
                MountCalls.Mount(null, path, null, MountFlags.Remount | MountFlags.Bind | MountFlags.ReadOnly | MountFlags.Recursive | LockedFlags(path));
            });
        }
    }

    /// <summary>root.readonly: the root bind mount remounted read-only.</summary>
    public static void MakeRootReadOnly() =>
        Step("remounting / read-only", () => MountCalls.Mount(null, "/", null, MountFlags.Remount | MountFlags.Bind | MountFlags.ReadOnly | LockedFlags("/")));

    /// <summary>linux.sysctl, written under /proc/sys of the container's namespaces.</summary>
    public static void WriteSysctls(IReadOnlyDictionary<string, string>? sysctls)
    {
        foreach (var (key, value) in sysctls ?? new Dictionary<string, string>())
        {
            string path = "/proc/sys/" + key.Replace('.', '/');
            try
            {
                File.WriteAllText(path, value);
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException)
            {
                throw new ContainerRuntimeException($"writing sysctl {key}={value}: {exception.Message}", exception);
            }
        }
    }

    /// <summary>The flags a bind remount must keep (nosuid, nodev, noexec, atime): in a user namespace the kernel
    /// refuses a remount that would clear flags locked by the mount's owner (mount(2), EPERM).</summary>
    private static MountFlags LockedFlags(string path)
    {
        string full = Path.GetFullPath(path).TrimEnd('/');
        if (full.Length == 0)
        {
            full = "/";
        }
        MountFlags found = MountFlags.None;
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] fields = line.Split(' ');
            if (fields.Length > 5 && fields[4] == full)
            {
                found = MountFlags.None;
                foreach (string option in fields[5].Split(','))
                {
                    found |= option switch
                    {
                        "nosuid" => MountFlags.NoSuid,
                        "nodev" => MountFlags.NoDev,
                        "noexec" => MountFlags.NoExec,
                        "noatime" => MountFlags.NoAccessTime,
                        "nodiratime" => MountFlags.NoDirectoryAccessTime,
                        "relatime" => MountFlags.RelativeAccessTime,
                        _ => MountFlags.None,
                    };
                }
            }
        }
        return found;
    }

    private static void CreateMountPoint(string target, bool isFile)
    {
        if (isFile)
        {
            if (!Path.Exists(target))
            {
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.WriteAllBytes(target, []);
            }
        }
        else if (!Directory.Exists(target))
        {
            Directory.CreateDirectory(target);
        }
    }

    /// <summary>mount(8)'s option words to flags, propagation and file-system data (config.md "Mounts": options).</summary>
    internal static (MountFlags Flags, MountFlags? Propagation, string? Data) ParseOptions(IReadOnlyList<string>? options)
    {
        MountFlags flags = MountFlags.None;
        MountFlags? propagation = null;
        var data = new List<string>();
        foreach (string option in options ?? [])
        {
            if (PropagationFlag(option) is { } change)
            {
                propagation = change;
                continue;
            }
            switch (option)
            {
                case "ro": flags |= MountFlags.ReadOnly; break;
                case "rw": flags &= ~MountFlags.ReadOnly; break;
                case "nosuid": flags |= MountFlags.NoSuid; break;
                case "suid": flags &= ~MountFlags.NoSuid; break;
                case "nodev": flags |= MountFlags.NoDev; break;
                case "dev": flags &= ~MountFlags.NoDev; break;
                case "noexec": flags |= MountFlags.NoExec; break;
                case "exec": flags &= ~MountFlags.NoExec; break;
                case "sync": flags |= MountFlags.Synchronous; break;
                case "async": flags &= ~MountFlags.Synchronous; break;
                case "dirsync": flags |= MountFlags.DirSync; break;
                case "mand": flags |= MountFlags.Mandatory; break;
                case "noatime": flags |= MountFlags.NoAccessTime; break;
                case "nodiratime": flags |= MountFlags.NoDirectoryAccessTime; break;
                case "relatime": flags |= MountFlags.RelativeAccessTime; break;
                case "strictatime": flags |= MountFlags.StrictAccessTime; break;
                case "bind": flags |= MountFlags.Bind; break;
                case "rbind": flags |= MountFlags.Bind | MountFlags.Recursive; break;
                case "defaults" or "tmpcopyup" or "idmap" or "ridmap": break;
                default: data.Add(option); break;
            }
        }
        return (flags, propagation, data.Count == 0 ? null : string.Join(',', data));
    }

    private static MountFlags? PropagationFlag(string option) => option switch
    {
        "private" => MountFlags.Private,
        "rprivate" => MountFlags.Private | MountFlags.Recursive,
        "shared" => MountFlags.Shared,
        "rshared" => MountFlags.Shared | MountFlags.Recursive,
        "slave" => MountFlags.Slave,
        "rslave" => MountFlags.Slave | MountFlags.Recursive,
        "unbindable" => MountFlags.Unbindable,
        "runbindable" => MountFlags.Unbindable | MountFlags.Recursive,
        _ => null,
    };

    /// <summary>Runs one step; a failing system call becomes an error naming the step ("pivot_root into /x: …").</summary>
    internal static void Step(string what, Action action)
    {
        try
        {
            action();
        }
        catch (HostCallException exception)
        {
            throw new ContainerRuntimeException($"{what}: {LibCText(exception)}", exception);
        }
    }

    private static string LibCText(HostCallException exception)
    {
        string message = exception.Message;
        int failed = message.IndexOf(" failed: ", StringComparison.Ordinal);
        return failed >= 0 ? message[(failed + " failed: ".Length)..] : message;
    }
}
