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

    /// <summary><c>--secret id=ID,src=FILE</c> (or <c>env=VARIABLE</c>): the files <c>RUN --mount=type=secret,id=ID</c>
    /// mounts, by id. Read only while the step runs; never in a layer, the history or a cache key.</summary>
    public IReadOnlyDictionary<string, BuildSecret> Secrets { get; init; } = new Dictionary<string, BuildSecret>();

    /// <summary><c>--ssh ID=SOCKET</c> (<c>--ssh default</c>: <c>$SSH_AUTH_SOCK</c>): the agent sockets
    /// <c>RUN --mount=type=ssh,id=ID</c> mounts, by id.</summary>
    public IReadOnlyDictionary<string, string> SshAgents { get; init; } = new Dictionary<string, string>();

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

/// <summary>One <c>--secret</c>: its content comes from a file (<c>src=</c>) or an environment variable of the
/// build's caller (<c>env=</c>), read when a step mounts it.</summary>
/// <param name="Id">What <c>RUN --mount=type=secret,id=</c> names.</param>
/// <param name="File">The file, or null.</param>
/// <param name="Variable">The environment variable, or null.</param>
public sealed record BuildSecret(string Id, string? File, string? Variable)
{
    /// <summary>Parses docker's <c>id=ID[,type=file|env][,src=PATH|env=VAR]</c> (also <c>source=</c>); without
    /// src or env, docker's rule: the id is a variable if one is set, else a file of that name.</summary>
    public static BuildSecret Parse(string text)
    {
        string? id = null, source = null, variable = null, type = null;
        foreach (string field in text.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int equals = field.IndexOf('=');
            string key = equals < 0 ? field : field[..equals];
            string value = equals < 0 ? "" : field[(equals + 1)..];
            switch (key.ToLowerInvariant())
            {
                case "id": id = value; break;
                case "src" or "source": source = value; break;
                case "env": variable = value; break;
                case "type" when value is "file" or "env": type = value; break;
                default:
                    throw new BuildException($"--secret {text}: '{field}' is not understood", "give --secret id=NAME,src=FILE or --secret id=NAME,env=VARIABLE");
            }
        }
        if (id is not { Length: > 0 })
        {
            throw new BuildException($"--secret {text}: no id", "give --secret id=NAME,src=FILE (the id is what RUN --mount=type=secret,id=NAME names)");
        }
        if (type == "env" && source is not null)
        {
            (variable, source) = (source, null);
        }
        if (source is null && variable is null)
        {
            if (Environment.GetEnvironmentVariable(id) is not null && type != "file")
            {
                variable = id;
            }
            else
            {
                source = id;
            }
        }
        if (source is not null)
        {
            source = Path.GetFullPath(source);
            if (!System.IO.File.Exists(source))
            {
                throw new BuildException($"--secret {text}: no file {source}", "give the path of an existing file with src=");
            }
        }
        else if (Environment.GetEnvironmentVariable(variable!) is null)
        {
            throw new BuildException($"--secret {text}: the environment variable {variable} is not set", "export it, or give a file with src=");
        }
        return new BuildSecret(id, source, source is null ? variable : null);
    }

    /// <summary>The secret's bytes, read now (a file read after the build started sees its current content).</summary>
    public byte[] Read() => File is { } path ? System.IO.File.ReadAllBytes(path)
        : System.Text.Encoding.UTF8.GetBytes(Environment.GetEnvironmentVariable(Variable!) ?? "");
}
