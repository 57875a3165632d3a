namespace Nestor.Containers.Build;

/// <summary>What <c>nestor build</c> is asked for: the context directory, the Dockerfile, names for the result,
/// build arguments, the target stage, whether to use the cache, and the network RUN steps get.</summary>
public sealed record BuildOptions
{
    /// <summary>The build context: the directory whose files COPY and ADD read (after .dockerignore).</summary>
    public required string ContextDirectory { get; init; }

    /// <summary><c>-f</c>: the Dockerfile (default <c>CONTEXT/Dockerfile</c>; a relative path is the caller's).</summary>
    public string? DockerfilePath { get; init; }

    /// <summary><c>-t</c>: names for the built image (none: the image stays unnamed, as docker's &lt;none&gt;).</summary>
    public IReadOnlyList<string> Tags { get; init; } = [];

    /// <summary><c>--build-arg NAME=VALUE</c>.</summary>
    public IReadOnlyDictionary<string, string> BuildArgs { get; init; } = new Dictionary<string, string>();

    /// <summary><c>--target</c>: the stage to build (default the last).</summary>
    public string? Target { get; init; }

    /// <summary><c>--no-cache</c>: run every step (the results still go into the cache for later builds).</summary>
    public bool NoCache { get; init; }

    /// <summary><c>--network</c> of RUN steps: <c>bridge</c> (the default for root, as podman's private network with
    /// the host's resolv.conf for DNS), <c>host</c> or <c>none</c>; a RUN's own <c>--network</c> wins.</summary>
    public string? Network { get; init; }
}

/// <summary>What a build made: the image (named by every tag) and how many steps ran and came from the cache.</summary>
public sealed record BuildResult(Images.StoredImage Image, int StepsRun, int StepsCached);
