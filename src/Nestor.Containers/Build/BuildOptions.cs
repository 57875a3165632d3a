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

    /// <summary><c>--pull</c>: when FROM (and COPY --from) fetch their image from its registry.</summary>
    public PullPolicy Pull { get; init; } = PullPolicy.Missing;

    /// <summary><c>--tls-verify</c> of those pulls (false: also self-signed HTTPS and plain HTTP; loopback registries
    /// are plain HTTP anyway, as for <c>nestor image pull</c>).</summary>
    public bool TlsVerify { get; init; } = true;
}

/// <summary>When a build pulls the images it starts from, as podman's <c>--pull</c> policies (docker's
/// <c>--pull</c> is <see cref="Always"/>, its default <see cref="Missing"/>).</summary>
public enum PullPolicy
{
    /// <summary>Pull only an image the local store does not have (the default of docker and podman).</summary>
    Missing,

    /// <summary>Pull every time, so that a tag moved in the registry is followed (<c>--pull</c>, <c>--pull=always</c>).</summary>
    Always,

    /// <summary>Never pull: an image missing locally is an error (<c>--pull=never</c>).</summary>
    Never,
}

/// <summary>What a build made: the image (named by every tag) and how many steps ran and came from the cache.</summary>
public sealed record BuildResult(Images.StoredImage Image, int StepsRun, int StepsCached);
