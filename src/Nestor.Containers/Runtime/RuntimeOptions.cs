using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>Where <see cref="NestorRuntime"/> keeps its state and which program it executes as a container's init.</summary>
public sealed class RuntimeOptions
{
    /// <summary>The state directory (runc's <c>--root</c>); null: <see cref="DefaultStateRoot"/>.</summary>
    public string? StateRoot { get; init; }

    /// <summary>The command that runs Nestor itself (the apphost or NativeAOT binary, or <c>dotnet nestor.dll</c>);
    /// the runtime appends <c>__container-init …</c>. Null: <see cref="DefaultInitExecutable"/>.</summary>
    public IReadOnlyList<string>? InitExecutable { get; init; }

    /// <summary>How long create may take from the clone to the container being created (hooks included).</summary>
    public TimeSpan CreateTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary><c>/run/nestor/runtime</c> for root; <c>$XDG_RUNTIME_DIR/nestor/runtime</c> else, or
    /// <c>/tmp/nestor-runtime-UID</c> without XDG_RUNTIME_DIR.</summary>
    public static string DefaultStateRoot()
    {
        uint uid = IdentityCalls.EffectiveUserId();
        if (uid == 0)
        {
            return "/run/nestor/runtime";
        }
        string? runtimeDirectory = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        return string.IsNullOrEmpty(runtimeDirectory)
            ? $"/tmp/nestor-runtime-{uid}"
            : Path.Combine(runtimeDirectory, "nestor", "runtime");
    }

    /// <summary>This process when it is the nestor executable (apphost or NativeAOT); under <c>dotnet nestor.dll</c>,
    /// dotnet with the entry assembly's path.</summary>
    public static IReadOnlyList<string> DefaultInitExecutable()
    {
        string process = Environment.ProcessPath ?? throw new ContainerRuntimeException("the path of this process is unknown: set RuntimeOptions.InitExecutable");
        if (Path.GetFileNameWithoutExtension(process) == "dotnet")
        {
            // argv[0] of a managed program started by dotnet is its .dll.
            string? entry = Environment.GetCommandLineArgs().FirstOrDefault();
            return string.IsNullOrEmpty(entry)
                ? throw new ContainerRuntimeException("running under dotnet without an entry assembly: set RuntimeOptions.InitExecutable")
                : [process, entry];
        }
        return [process];
    }
}
