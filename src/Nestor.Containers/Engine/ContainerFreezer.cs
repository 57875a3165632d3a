using Nestor.Containers.Cgroups;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Engine;

/// <summary><c>container pause | unpause</c> through the cgroup freezer (cgroups(7); v1 freezer.state, v2
/// cgroup.freeze): every process of the container's control group stops where it is, without being signalled, and
/// goes on when thawed — Docker's pause. The kernel's freezer is the truth: a running container whose group is frozen
/// is <c>paused</c> (Docker's <c>State.Status</c>, with <c>State.Running</c> and <c>State.Paused</c> both true), so the
/// state survives the monitor and needs no record of its own.</summary>
public static class ContainerFreezer
{
    /// <summary>The container's control group (linux.cgroupsPath of its bundle), whatever runtime runs it; null when
    /// it has none (rootless without cgroup delegation) or it is gone.</summary>
    public static ControlGroup? ControlGroupOf(ContainerPaths paths, ContainerRecord record)
    {
        ArgumentNullException.ThrowIfNull(paths);
        ArgumentNullException.ThrowIfNull(record);
        string config = Path.Combine(paths.Bundle(record.Id), "config.json");
        string? cgroupsPath;
        try
        {
            cgroupsPath = RuntimeSpec.Load(config).Linux?.CgroupsPath;
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or System.Text.Json.JsonException)
        {
            return null;
        }
        if (cgroupsPath is null)
        {
            return null;
        }
        try
        {
            return ControlGroup.Open(cgroupsPath);
        }
        catch (ControlGroupException)
        {
            return null;
        }
    }

    /// <summary>Marks a running container whose control group is frozen as paused (in the returned object only).</summary>
    public static ContainerRecord WithPauseState(ContainerPaths paths, ContainerRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (record.State.Running && ControlGroupOf(paths, record) is { } group && IsFrozen(group))
        {
            record.State.Paused = true;
            record.State.Status = ContainerState.Paused;
        }
        return record;
    }

    /// <summary>Freezes a running container, as <c>docker pause</c>; Docker's messages when it is not running or is
    /// paused already.</summary>
    public static void Pause(ContainerPaths paths, ContainerRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (!record.State.Running)
        {
            throw new ContainerEngineException($"Container {record.Id} is not running");
        }
        if (record.State.Paused)
        {
            throw new ContainerEngineException($"Container {record.Id} is already paused");
        }
        Freezable(paths, record, "pause").Freeze();
    }

    /// <summary>Thaws a paused container, as <c>docker unpause</c>.</summary>
    public static void Unpause(ContainerPaths paths, ContainerRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (!record.State.Paused)
        {
            throw new ContainerEngineException($"Container {record.Id} is not paused");
        }
        Freezable(paths, record, "unpause").Thaw();
    }

    /// <summary>After a container was sent its stop signal or SIGKILL: a paused one is thawed, so that the signal is
    /// delivered (a v1-frozen task does not even die of SIGKILL until thawed). Docker unpauses in the same case.</summary>
    public static void ThawToDeliver(ContainerPaths paths, ContainerRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (record.State.Paused && ControlGroupOf(paths, record) is { } group)
        {
            try
            {
                group.Thaw();
            }
            catch (ControlGroupException)
            {
                // It ended and its group went with it.
            }
        }
    }

    /// <summary>Freezes a running, unpaused container until disposed (<c>commit</c>'s default <c>--pause</c>: its files
    /// do not change while they are copied); nothing for one that is stopped, paused already or cannot be frozen.</summary>
    public static IDisposable PausedWhile(ContainerPaths paths, ContainerRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (!record.State.Running || record.State.Paused || ControlGroupOf(paths, record) is not { } group || !HasFreezer(group))
        {
            return new Thawing(null);
        }
        group.Freeze();
        return new Thawing(group);
    }

    private static ControlGroup Freezable(ContainerPaths paths, ContainerRecord record, string verb)
    {
        if (ControlGroupOf(paths, record) is not { } group || !HasFreezer(group))
        {
            throw new ContainerEngineException(
                $"cannot {verb} container {record.Name}: it has no control group with a freezer (a rootless container without cgroup delegation). " +
                "Run it as root, or on a cgroup v2 host inside a delegated cgroup (systemd-run --user --scope -p Delegate=yes …)");
        }
        return group;
    }

    private static bool HasFreezer(ControlGroup group) =>
        group.Version == ControlGroupVersion.V2 || group.Directories.ContainsKey("freezer");

    private static bool IsFrozen(ControlGroup group)
    {
        try
        {
            return HasFreezer(group) && group.IsFrozen;
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or ControlGroupException)
        {
            return false;
        }
    }

    private sealed class Thawing(ControlGroup? group) : IDisposable
    {
        public void Dispose() => group?.Thaw();
    }
}
