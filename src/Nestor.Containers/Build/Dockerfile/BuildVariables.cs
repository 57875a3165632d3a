namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>The build's variables: the <c>--build-arg</c> values, the global ARGs (before the first FROM) and
/// the predefined ARGs. It expands each stage's FROM line against the global ARGs and hands out a
/// <see cref="StageScope"/> per stage for its instructions.</summary>
public sealed class BuildVariables
{
    /// <summary>The proxy ARGs every build may set with <c>--build-arg</c> without declaring them (the
    /// reference's "predefined ARGs"; they are left out of the image's history).</summary>
    public static readonly IReadOnlyList<string> PredefinedArgs =
    [
        "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
        "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
    ];

    private readonly Dockerfile dockerfile;
    private readonly IReadOnlyDictionary<string, string> buildArgs;

    /// <summary>Variables for building <paramref name="dockerfile"/> with <paramref name="buildArgs"/>
    /// (<c>--build-arg NAME=VALUE</c>).</summary>
    public BuildVariables(Dockerfile dockerfile, IReadOnlyDictionary<string, string> buildArgs)
    {
        this.dockerfile = dockerfile;
        this.buildArgs = buildArgs;
    }

    /// <summary>The stage's FROM with its base image and <c>--platform</c> expanded against the global ARGs.</summary>
    public FromInstruction ExpandFrom(BuildStage stage) => throw new NotImplementedException(stage.DisplayName + dockerfile + buildArgs);

    /// <summary>A scope for walking <paramref name="stage"/>'s instructions in order, starting from the base
    /// image's environment (<c>NAME=VALUE</c> strings from its config's Env).</summary>
    public StageScope BeginStage(BuildStage stage, IEnumerable<string> baseImageEnvironment) =>
        throw new NotImplementedException(stage.DisplayName + baseImageEnvironment);

    /// <summary>The <c>--build-arg</c> names no ARG in <paramref name="builtStages"/> (nor the global ARGs)
    /// declares and that are not predefined: Docker warns that they were not consumed.</summary>
    public IReadOnlyList<string> UnusedBuildArgs(IEnumerable<BuildStage> builtStages) =>
        throw new NotImplementedException(builtStages.ToString());
}

/// <summary>The variables of one stage as its instructions run: ARGs declared so far (with the build-arg or
/// default value), ENV set so far (ENV beats an ARG of the same name). Call <see cref="Apply"/> on each
/// instruction in order.</summary>
public sealed class StageScope
{
    /// <summary>Expands <paramref name="instruction"/> with the variables in scope before it and then records
    /// what it declares (ARG names, ENV values). Returns the expanded instruction.</summary>
    public Instruction Apply(Instruction instruction) => throw new NotImplementedException(instruction.Keyword);

    /// <summary>The environment the image config gets: the base image's Env and every ENV so far, in order,
    /// as <c>NAME=VALUE</c>.</summary>
    public IReadOnlyList<string> Environment => throw new NotImplementedException();

    /// <summary>The environment a RUN gets: <see cref="Environment"/> plus the ARGs in scope that ENV does not
    /// override (BuildKit passes ARG values to RUN as environment variables; they are not stored in the image).
    /// Their values belong in RUN's cache key.</summary>
    public IReadOnlyList<string> RunEnvironment => throw new NotImplementedException();
}
