using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.External;

namespace Nestor.Containers.Engine;

/// <summary>The OCI runtimes a container can use (<c>--runtime</c>): Nestor's own, through <c>nestor oci</c> (runc's
/// command line), or an installed crun or runc. Each keeps its state under the engine's state root.</summary>
/// <param name="paths">The engine's directories.</param>
/// <param name="nestorCommand">How to run <c>nestor</c> (its executable, plus the assembly under <c>dotnet</c>).</param>
/// <param name="defaultRuntime">The runtime used when none is asked for.</param>
public sealed class ContainerRuntimes(ContainerPaths paths, IReadOnlyList<string> nestorCommand, string defaultRuntime = "nestor")
{
    public static readonly IReadOnlyList<string> Names = ["nestor", "crun", "runc"];

    /// <summary>The runtime a container gets when <c>--runtime</c> is not given.</summary>
    public string Default { get; } = defaultRuntime;

    public IContainerRuntime Create(string name) => name switch
    {
        "nestor" => new ExternalRuntime("nestor", nestorCommand[0], [.. nestorCommand.Skip(1), "oci"], paths.RuntimeRoot("nestor"), writesLog: false),
        "crun" => new ExternalRuntime("crun", "crun", [], paths.RuntimeRoot("crun")),
        "runc" => new ExternalRuntime("runc", "runc", [], paths.RuntimeRoot("runc")),
        _ => throw new ContainerEngineException($"unknown runtime '{name}': choose {string.Join(", ", Names)}"),
    };
}
