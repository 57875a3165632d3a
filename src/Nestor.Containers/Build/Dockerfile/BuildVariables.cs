namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>The build's variables: the <c>--build-arg</c> values, the global ARGs (before the first FROM), the
/// predefined proxy ARGs and the automatic platform ARGs. It expands each stage's FROM line against the global
/// scope and hands out a <see cref="StageScope"/> per stage for its instructions. The rules are the Dockerfile
/// reference's (ARG, "Scope", "Using ARG variables", "Predefined ARGs", "Automatic platform ARGs").</summary>
public sealed class BuildVariables
{
    /// <summary>The proxy ARGs every build may set with <c>--build-arg</c> without declaring them (they reach RUN's
    /// environment and are left out of the image's history).</summary>
    public static readonly IReadOnlyList<string> PredefinedArgs =
    [
        "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
        "FTP_PROXY", "ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
    ];

    private readonly Dictionary<string, string?> globals = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> platformArgs = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> buildArgs;

    /// <summary>Variables for building <paramref name="dockerfile"/> with <paramref name="buildArgs"/>
    /// (<c>--build-arg NAME=VALUE</c>) for <paramref name="targetPlatform"/> on <paramref name="buildPlatform"/>
    /// (<c>os/arch[/variant]</c>; both <c>linux/amd64</c> unless given).</summary>
    public BuildVariables(Dockerfile dockerfile, IReadOnlyDictionary<string, string> buildArgs,
        string targetPlatform = "linux/amd64", string? buildPlatform = null)
    {
        Dockerfile = dockerfile;
        this.buildArgs = new Dictionary<string, string>(buildArgs, StringComparer.Ordinal);
        AddPlatform("TARGET", targetPlatform);
        AddPlatform("BUILD", buildPlatform ?? targetPlatform);
        // Global ARGs are evaluated in order; a default may use the ARGs above it.
        var expansion = new ShellWordExpansion(GlobalLookup, dockerfile.EscapeCharacter);
        foreach (var arg in dockerfile.GlobalArgs)
        {
            var expanded = (ArgInstruction)arg.Expand(expansion);
            foreach (var declaration in expanded.Declarations)
            {
                globals[declaration.Name] = this.buildArgs.TryGetValue(declaration.Name, out string? given)
                    ? given : declaration.DefaultValue;
            }
        }
    }

    /// <summary>The Dockerfile these variables are for.</summary>
    public Dockerfile Dockerfile { get; }

    private void AddPlatform(string prefix, string platform)
    {
        string[] parts = platform.Split('/');
        platformArgs[prefix + "PLATFORM"] = platform;
        platformArgs[prefix + "OS"] = parts[0];
        platformArgs[prefix + "ARCH"] = parts.Length > 1 ? parts[1] : "";
        platformArgs[prefix + "VARIANT"] = parts.Length > 2 ? parts[2] : "";
    }

    /// <summary>A variable in the global scope (what FROM lines see): a global ARG's value, else an automatic
    /// platform ARG, else unset.</summary>
    public string? GlobalLookup(string name) =>
        globals.TryGetValue(name, out string? value) ? value
        : platformArgs.TryGetValue(name, out string? platform) ? platform : null;

    /// <summary>The stage's FROM with its base image and <c>--platform</c> expanded against the global scope.</summary>
    public FromInstruction ExpandFrom(BuildStage stage) =>
        (FromInstruction)stage.From.Expand(new ShellWordExpansion(GlobalLookup, Dockerfile.EscapeCharacter));

    /// <summary>A scope for walking <paramref name="stage"/>'s instructions in order, starting from the base
    /// image's environment (<c>NAME=VALUE</c> strings from its config's Env; for <c>FROM stage</c>, that stage's
    /// final <see cref="StageScope.Environment"/>).</summary>
    public StageScope BeginStage(BuildStage stage, IEnumerable<string> baseImageEnvironment) =>
        new(this, stage, baseImageEnvironment);

    /// <summary>The value an in-stage <c>ARG NAME[=default]</c> takes: the build-arg, else the default, else the
    /// global ARG of that name (a stage re-declares a global ARG to see it), else an automatic platform ARG, else
    /// unset.</summary>
    internal string? ArgValue(string name, string? defaultValue)
    {
        if (buildArgs.TryGetValue(name, out string? given))
        {
            return given;
        }
        if (defaultValue is not null)
        {
            return defaultValue;
        }
        if (globals.TryGetValue(name, out string? global))
        {
            return global;
        }
        return platformArgs.GetValueOrDefault(name);
    }

    /// <summary>A predefined proxy ARG's value when it was given with <c>--build-arg</c>.</summary>
    internal string? PredefinedValue(string name) =>
        PredefinedArgs.Contains(name) && buildArgs.TryGetValue(name, out string? value) ? value : null;

    /// <summary>The <c>--build-arg</c> names no ARG in <paramref name="builtStages"/> nor the global ARGs declares
    /// and that are not predefined: Docker warns that they were not consumed. Sorted.</summary>
    public IReadOnlyList<string> UnusedBuildArgs(IEnumerable<BuildStage> builtStages)
    {
        var declared = new HashSet<string>(PredefinedArgs, StringComparer.Ordinal);
        foreach (var arg in Dockerfile.GlobalArgs)
        {
            declared.UnionWith(arg.Declarations.Select(d => d.Name));
        }
        foreach (var stage in builtStages)
        {
            foreach (var arg in stage.Instructions.OfType<ArgInstruction>())
            {
                declared.UnionWith(arg.Declarations.Select(d => d.Name));
            }
        }
        return [.. buildArgs.Keys.Where(k => !declared.Contains(k)).Order(StringComparer.Ordinal)];
    }
}

/// <summary>The variables of one stage as its instructions run: ARGs declared so far (with the build-arg or
/// default value), ENV set so far, and the base image's environment. A variable's value is its ENV value if any
/// (ENV beats an ARG of the same name), else its ARG value, else a predefined proxy ARG given as a build-arg.
/// Call <see cref="Apply"/> on each instruction in order.</summary>
public sealed class StageScope
{
    private readonly BuildVariables build;
    private readonly List<KeyValuePair<string, string>> environment = [];
    private readonly Dictionary<string, string?> args = new(StringComparer.Ordinal);
    private readonly ShellWordExpansion expansion;

    internal StageScope(BuildVariables build, BuildStage stage, IEnumerable<string> baseImageEnvironment)
    {
        this.build = build;
        Stage = stage;
        foreach (string entry in baseImageEnvironment)
        {
            int equals = entry.IndexOf('=');
            SetEnvironment(equals < 0 ? entry : entry[..equals], equals < 0 ? "" : entry[(equals + 1)..]);
        }
        expansion = new ShellWordExpansion(Lookup, build.Dockerfile.EscapeCharacter);
    }

    /// <summary>The stage this scope walks.</summary>
    public BuildStage Stage { get; }

    /// <summary>The value of <paramref name="name"/> at this point of the stage, or null when unset.</summary>
    public string? Lookup(string name)
    {
        foreach (var pair in environment)
        {
            if (pair.Key == name)
            {
                return pair.Value;
            }
        }
        if (args.TryGetValue(name, out string? value))
        {
            return value;
        }
        return build.PredefinedValue(name);
    }

    /// <summary>Expands one word with the variables in scope (for text outside the instructions' fields, such as
    /// a RUN mount's <c>from=</c>).</summary>
    public string ExpandWord(string word) => expansion.ProcessWord(word);

    /// <summary>Expands <paramref name="instruction"/> with the variables in scope before it and then records
    /// what it declares (ARG names, ENV values). Returns the expanded instruction.</summary>
    public Instruction Apply(Instruction instruction)
    {
        var expanded = instruction.Expand(expansion);
        switch (expanded)
        {
            case ArgInstruction arg:
                foreach (var declaration in arg.Declarations)
                {
                    args[declaration.Name] = build.ArgValue(declaration.Name, declaration.DefaultValue);
                }
                break;
            case EnvInstruction env:
                foreach (var pair in env.Pairs)
                {
                    SetEnvironment(pair.Name, pair.Value);
                }
                break;
        }
        return expanded;
    }

    private void SetEnvironment(string name, string value)
    {
        for (int i = 0; i < environment.Count; i++)
        {
            if (environment[i].Key == name)
            {
                environment[i] = new(name, value);
                return;
            }
        }
        environment.Add(new(name, value));
    }

    /// <summary>The environment the image config gets: the base image's Env and every ENV so far, first
    /// definition's position kept, as <c>NAME=VALUE</c>.</summary>
    public IReadOnlyList<string> Environment => [.. environment.Select(p => p.Key + "=" + p.Value)];

    /// <summary>The ARGs declared so far that have a value, in declaration order, as <c>NAME=VALUE</c>.</summary>
    public IReadOnlyList<string> Arguments => [.. args.Where(a => a.Value is not null).Select(a => a.Key + "=" + a.Value)];

    /// <summary>The environment a RUN gets: <see cref="Environment"/>, then the ARGs in scope and the predefined
    /// proxy ARGs given as build-args that ENV does not override (BuildKit passes them to RUN as environment
    /// variables; they are not stored in the image). Their values belong in RUN's cache key.</summary>
    public IReadOnlyList<string> RunEnvironment
    {
        get
        {
            var names = new HashSet<string>(environment.Select(p => p.Key), StringComparer.Ordinal);
            var result = new List<string>(Environment);
            foreach (var arg in args)
            {
                if (arg.Value is not null && names.Add(arg.Key))
                {
                    result.Add(arg.Key + "=" + arg.Value);
                }
            }
            foreach (string name in BuildVariables.PredefinedArgs)
            {
                if (build.PredefinedValue(name) is { } value && names.Add(name))
                {
                    result.Add(name + "=" + value);
                }
            }
            return result;
        }
    }
}
