using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Security;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>The calls into the security part (control groups, capabilities, rlimits, seccomp) at the points of the
/// runtime-spec's lifecycle where the runtime makes them: a seam, so that the runtime's order of steps reads in one
/// place and the control groups are wired in when that part lands.</summary>
internal interface IContainerSecurity
{
    /// <summary>Creates the container's cgroup (linux.cgroupsPath, linux.resources); returns a handle or null.</summary>
    object? CreateControlGroup(string id, SpecLinux? linux);

    void AddToControlGroup(object? controlGroup, int pid);

    void DeleteControlGroup(string id, string? cgroupsPath);

    /// <summary>In the init, on the thread that executes the user's program, before its uid changes.</summary>
    void ApplyBeforeIdentity(SpecProcess process);

    /// <summary>In the init, after setresuid: the capability sets.</summary>
    void ApplyCapabilities(SpecProcess process);

    /// <summary>prctl(PR_SET_NO_NEW_PRIVS).</summary>
    void SetNoNewPrivileges();

    void LoadSeccomp(SpecSeccomp? seccomp);
}

/// <summary>The security part's ControlGroup, Capabilities, ResourceLimits and SeccompFilter.</summary>
internal sealed class ContainerSecurity : IContainerSecurity
{
    /// <summary>linux.cgroupsPath when the spec has none: /nestor/ID in every hierarchy.</summary>
    public static string DefaultCgroupsPath(string id) => "/nestor/" + id;

    /// <summary>The container's cgroup with its limits. Where none can be made (rootless without delegation) a
    /// container without limits runs without one; with limits it is an error that says what to do.</summary>
    public object? CreateControlGroup(string id, SpecLinux? linux)
    {
        try
        {
            return Cgroups.ControlGroup.Create(linux?.CgroupsPath ?? DefaultCgroupsPath(id), linux?.Resources);
        }
        catch (Cgroups.ControlGroupUnavailableException) when (!HasLimits(linux?.Resources))
        {
            return null;
        }
        catch (Cgroups.ControlGroupException exception)
        {
            throw new ContainerRuntimeException(exception.Message, exception);
        }
    }

    public void AddToControlGroup(object? controlGroup, int pid) => (controlGroup as Cgroups.ControlGroup)?.AddProcess(pid);

    public void DeleteControlGroup(string id, string? cgroupsPath)
    {
        try
        {
            Cgroups.ControlGroup.Open(cgroupsPath ?? DefaultCgroupsPath(id)).Delete();
        }
        catch (Cgroups.ControlGroupException)
        {
            // none was made (rootless) or it is gone already
        }
    }

    private static bool HasLimits(SpecResources? resources) =>
        resources is not null && (resources.Memory is not null || resources.Cpu is not null || resources.Pids is not null ||
            resources.BlockIO is not null || resources.Unified is { Count: > 0 });

    /// <summary>rlimits (process-wide, prlimit), the bounding set (needs CAP_SETPCAP, so before the capabilities
    /// change) and PR_SET_KEEPCAPS so that the permitted set survives setresuid to a non-root user
    /// (capabilities(7), "Effect of user ID changes on capabilities"). No process.capabilities means none, as runc
    /// and crun do.</summary>
    public void ApplyBeforeIdentity(SpecProcess process)
    {
        if (process.Rlimits is { Count: > 0 } limits)
        {
            ResourceLimits.Apply(limits);
        }
        Capabilities.ApplyBounding(process.Capabilities ?? new SpecCapabilities());
        CapabilityCalls.SetKeepCapabilities(true);
    }

    public void ApplyCapabilities(SpecProcess process)
    {
        CapabilityCalls.SetKeepCapabilities(false);
        Capabilities.Apply(process.Capabilities ?? new SpecCapabilities());
    }

    public void SetNoNewPrivileges() => CapabilityCalls.SetNoNewPrivileges();

    public void LoadSeccomp(SpecSeccomp? seccomp)
    {
        if (seccomp is not null)
        {
            SeccompFilter.Load(seccomp);
        }
    }
}
