using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Runtime;

/// <summary>The calls into the security part (control groups, capabilities, rlimits, seccomp) at the points of the
/// runtime-spec's lifecycle where the runtime makes them. The security helper's ControlGroup, Capabilities,
/// ResourceLimits and SeccompFilter are wired in here when their branch is merged; until then this applies nothing,
/// which the runtime's tests account for (they check namespaces and mounts, not limits).</summary>
internal interface IContainerSecurity
{
    /// <summary>Creates the container's cgroup (linux.cgroupsPath, linux.resources); returns a handle or null.</summary>
    object? CreateControlGroup(string id, SpecLinux? linux);

    void AddToControlGroup(object? controlGroup, int pid);

    void DeleteControlGroup(string id, string? cgroupsPath);

    /// <summary>In the init, on the thread that executes the user's program, before its uid changes.</summary>
    void ApplyBeforeIdentity(SpecProcess process);

    /// <summary>In the init, after setresuid: capabilities, then (after no_new_privs) the seccomp filter.</summary>
    void ApplyCapabilities(SpecProcess process);

    void LoadSeccomp(SpecSeccomp? seccomp);
}

/// <summary>Until the security part lands: no cgroup, no capability or rlimit change, no filter.</summary>
internal sealed class NoContainerSecurity : IContainerSecurity
{
    public object? CreateControlGroup(string id, SpecLinux? linux) => null;

    public void AddToControlGroup(object? controlGroup, int pid)
    {
    }

    public void DeleteControlGroup(string id, string? cgroupsPath)
    {
    }

    public void ApplyBeforeIdentity(SpecProcess process)
    {
    }

    public void ApplyCapabilities(SpecProcess process)
    {
    }

    public void LoadSeccomp(SpecSeccomp? seccomp)
    {
    }
}
