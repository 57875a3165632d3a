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

/// <summary>The security part's Capabilities, ResourceLimits and SeccompFilter; control groups not yet (that part has
/// not landed: no cgroup is made).</summary>
internal sealed class ContainerSecurity : IContainerSecurity
{
    public object? CreateControlGroup(string id, SpecLinux? linux) => null;

    public void AddToControlGroup(object? controlGroup, int pid)
    {
    }

    public void DeleteControlGroup(string id, string? cgroupsPath)
    {
    }

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
