using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Runtime;

/// <summary>The runtime-spec's lifecycle of a container (runtime.md, "State").</summary>
public enum ContainerStatus
{
    Creating,
    Created,
    Running,
    Stopped,
}

/// <summary>Where the container's first process gets its standard streams: file descriptors the caller owns (pipes of
/// the monitor, a log file, /dev/null), passed through as runc's "pass-through" mode does; or, with
/// <see cref="ConsoleSocket"/>, a pseudo-terminal whose master the runtime sends over that Unix socket (SCM_RIGHTS),
/// as runc's and crun's <c>--console-socket</c>.</summary>
public sealed record RuntimeIo(int Stdin = 0, int Stdout = 1, int Stderr = 2, string? ConsoleSocket = null);

/// <summary>An OCI runtime: Nestor's own (<c>NestorRuntime</c>) or an installed one driven through its command line
/// (crun, runc). The operations are the runtime-spec's (runtime.md, "Operations"); every failure is a
/// <see cref="ContainerRuntimeException"/> saying what happened.</summary>
public interface IContainerRuntime
{
    /// <summary><c>nestor</c>, <c>crun</c> or <c>runc</c>.</summary>
    string Name { get; }

    /// <summary>Creates the container from the bundle (its config.json): namespaces, root file system, cgroup; the
    /// user's process is not started (status <see cref="ContainerStatus.Created"/>).</summary>
    void Create(string id, string bundle, RuntimeIo io, string? pidFile = null);

    /// <summary>Runs the user-specified program of a created container.</summary>
    void Start(string id);

    SpecState State(string id);

    /// <summary>Runs another process in a running container's namespaces, cgroup and security settings (runc's
    /// <c>exec</c>; not in the runtime-spec): <paramref name="process"/>'s args, env, cwd, user, capabilities.</summary>
    IRuntimeProcess Exec(string id, SpecProcess process, RuntimeIo io);

    /// <summary>Sends a signal (number, e.g. 15) to the container's first process.</summary>
    void Kill(string id, int signal, bool all = false);

    /// <summary>Deletes a stopped container (with <paramref name="force"/>, kills it first); its cgroup and state go.</summary>
    void Delete(string id, bool force = false);

    /// <summary>The ids this runtime knows.</summary>
    IReadOnlyList<string> List();
}

/// <summary>A process the runtime started for the caller (an <c>exec</c>), to wait for.</summary>
public interface IRuntimeProcess : IDisposable
{
    /// <summary>Host pid of the process the caller waits for.</summary>
    int Pid { get; }

    /// <summary>Waits for the process; returns its exit status as a shell reports it (128 + signal when killed).</summary>
    int WaitForExit();
}

public sealed class ContainerRuntimeException(string message, Exception? inner = null) : Exception(message, inner);
