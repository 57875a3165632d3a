namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>One Dockerfile instruction. Every instruction keeps where it is, its original text (the logical line
/// after continuations are joined, and its heredoc bodies) and its flags as written. Fields hold the text as
/// written until <see cref="Expand"/> substitutes build variables in the instructions the Dockerfile reference says
/// are expanded (ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER VOLUME WORKDIR, and ARG defaults); RUN, CMD,
/// ENTRYPOINT, SHELL and HEALTHCHECK are left to the command's shell.</summary>
/// <param name="Location">The file and line of the instruction's first physical line.</param>
/// <param name="OriginalText">The logical line as written (continuations joined), heredoc bodies following.</param>
public abstract record Instruction(SourceLocation Location, string OriginalText)
{
    /// <summary>The instruction's keyword in upper case (<c>RUN</c>, <c>COPY</c>).</summary>
    public abstract string Keyword { get; }

    /// <summary>The <c>--name=value</c> flags as written, in order (the typed properties read them).</summary>
    public IReadOnlyList<InstructionFlag> Flags { get; init; } = [];

    /// <summary>The escape character of the file it came from (canonical text quotes with it).</summary>
    public char EscapeCharacter { get; init; } = '\\';

    /// <summary>True once <see cref="Expand"/> has substituted variables: fields then hold literal values, and the
    /// canonical text quotes them so that it reads back as the same values.</summary>
    public bool IsExpanded { get; init; }

    /// <summary>The instruction with build variables substituted where the reference says this instruction
    /// expands them (the same instruction, marked expanded, for those that do not).
    /// Throws <see cref="DockerfileException"/> at the instruction's line for a malformed substitution or a
    /// <c>${VAR:?message}</c> whose variable is unset.</summary>
    public Instruction Expand(ShellWordExpansion expansion)
    {
        try
        {
            return ExpandCore(expansion);
        }
        catch (FormatException e)
        {
            throw new DockerfileException(Location, $"{Keyword}: {e.Message}",
                "check the ${...} substitutions on this line (and pass the variable with --build-arg if it is unset)", e);
        }
    }

    /// <summary>The expansion itself (the default marks the instruction expanded and changes nothing).</summary>
    protected virtual Instruction ExpandCore(ShellWordExpansion expansion) => this with { IsExpanded = true };

    /// <summary>The instruction as one canonical Dockerfile line (keyword upper case, flags in their written
    /// order, single spaces, exec forms as compact JSON), heredoc bodies on the following lines. For an expanded
    /// instruction this is the text BuildKit-style caches key on.</summary>
    public abstract string ToCanonicalText();

    /// <summary>The value of the last flag named <paramref name="name"/>, or null.</summary>
    protected string? Flag(string name) => Flags.LastOrDefault(f => f.Name == name)?.Value;

    /// <summary>The values of every flag named <paramref name="name"/>.</summary>
    protected IReadOnlyList<string> FlagValues(string name) =>
        [.. Flags.Where(f => f.Name == name).Select(f => f.Value ?? "")];

    /// <summary>A field in canonical form: as written before expansion, quoted after.</summary>
    protected string Word(string value) => IsExpanded ? CanonicalText.Quote(value, EscapeCharacter) : value;

    /// <summary>The keyword and the flags, each followed by a space.</summary>
    protected string Head()
    {
        var text = new System.Text.StringBuilder(Keyword).Append(' ');
        foreach (var flag in Flags)
        {
            text.Append("--").Append(flag.Name);
            if (flag.Value is not null)
            {
                text.Append('=').Append(Word(flag.Value));
            }
            text.Append(' ');
        }
        return text.ToString();
    }
}

/// <summary>A <c>--name=value</c> (or bare <c>--name</c>) flag on an instruction.</summary>
/// <param name="Name">The flag's name without the dashes, lower-case.</param>
/// <param name="Value">Its value as written, or null for a bare flag.</param>
public sealed record InstructionFlag(string Name, string? Value);

/// <summary>A name and a value (ENV, LABEL).</summary>
public sealed record NameValuePair(string Name, string Value);

/// <summary>A command in shell form (one string the stage's SHELL runs) or exec form (a JSON array run as is).</summary>
/// <param name="IsExecForm">True for the JSON array form.</param>
/// <param name="ShellText">The shell-form command (empty for exec form).</param>
/// <param name="ExecArguments">The exec-form arguments (empty for shell form).</param>
public sealed record CommandLine(bool IsExecForm, string ShellText, IReadOnlyList<string> ExecArguments)
{
    /// <summary>A shell-form command.</summary>
    public static CommandLine Shell(string text) => new(false, text, []);

    /// <summary>An exec-form command.</summary>
    public static CommandLine Exec(IReadOnlyList<string> arguments) => new(true, "", arguments);

    /// <summary>The argument vector to run: exec form as is; shell form appended to <paramref name="shell"/>
    /// (the stage's SHELL, <c>["/bin/sh", "-c"]</c> by default).</summary>
    public IReadOnlyList<string> ToArguments(IReadOnlyList<string> shell) =>
        IsExecForm ? ExecArguments : [.. shell, ShellText];

    /// <summary>The command as it appears after the keyword: JSON for exec form, the text for shell form.</summary>
    public string ToCanonicalText() => IsExecForm ? CanonicalText.JsonArray(ExecArguments) : ShellText;
}

/// <summary>A here-document (<c>&lt;&lt;EOF</c> ... <c>EOF</c>) attached to a RUN or COPY/ADD.</summary>
/// <param name="Name">The delimiter word without quotes (for COPY, the name of the file it makes).</param>
/// <param name="Content">The body, every line ending in a newline, leading tabs already removed for
/// <c>&lt;&lt;-</c>.</param>
/// <param name="Expand">False when the delimiter was quoted (<c>&lt;&lt;"EOF"</c>): the body is not expanded.</param>
/// <param name="StripLeadingTabs">True for <c>&lt;&lt;-</c>.</param>
/// <param name="FileDescriptor">The file descriptor written before <c>&lt;&lt;</c> (<c>3&lt;&lt;EOF</c>), or null
/// (standard input).</param>
public sealed record Heredoc(string Name, string Content, bool Expand, bool StripLeadingTabs, int? FileDescriptor)
{
    /// <summary>The operator as written: <c>&lt;&lt;</c> or <c>&lt;&lt;-</c> with the delimiter, quoted if it was.</summary>
    public string Operator =>
        (FileDescriptor?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "")
        + (StripLeadingTabs ? "<<-" : "<<") + (Expand ? Name : "\"" + Name + "\"");
}

/// <summary><c>FROM [--platform=P] image [AS name]</c>: starts a stage.</summary>
public sealed record FromInstruction(SourceLocation Location, string OriginalText, string BaseImage, string? StageName)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "FROM";

    /// <summary>The <c>--platform</c> flag's value, or null.</summary>
    public string? Platform => Flag("platform");

    /// <summary>True when the base is the empty image <c>scratch</c> (compare after expansion).</summary>
    public bool IsScratch => string.Equals(BaseImage, "scratch", StringComparison.OrdinalIgnoreCase);

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) => this with
    {
        BaseImage = expansion.ProcessWord(BaseImage),
        Flags = ExpandFlags(Flags, expansion),
        IsExpanded = true,
    };

    /// <inheritdoc/>
    public override string ToCanonicalText() =>
        Head() + Word(BaseImage) + (StageName is null ? "" : " AS " + StageName);

    internal static IReadOnlyList<InstructionFlag> ExpandFlags(IReadOnlyList<InstructionFlag> flags,
        ShellWordExpansion expansion) =>
        [.. flags.Select(f => f.Value is null ? f : f with { Value = expansion.ProcessWord(f.Value) })];
}

/// <summary><c>RUN [--mount=...] [--network=...] [--security=...] command</c>, shell or exec form, with any
/// heredocs.</summary>
/// <param name="Command">The command.</param>
/// <param name="Heredocs">Heredocs on the line, in order (their bodies follow the line).</param>
public sealed record RunInstruction(SourceLocation Location, string OriginalText, CommandLine Command,
    IReadOnlyList<Heredoc> Heredocs) : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "RUN";

    /// <summary>The <c>--mount</c> flags' values as written (Nestor's builder may refuse them).</summary>
    public IReadOnlyList<string> Mounts => FlagValues("mount");

    /// <summary>The <c>--network</c> flag (<c>default</c>, <c>none</c>, <c>host</c>), or null.</summary>
    public string? Network => Flag("network");

    /// <summary>The <c>--security</c> flag (<c>sandbox</c>, <c>insecure</c>), or null.</summary>
    public string? Security => Flag("security");

    /// <summary>True when the whole command is one heredoc (<c>RUN &lt;&lt;EOF</c>): its body is the script the
    /// shell runs (BuildKit runs it as a file when it starts with <c>#!</c>).</summary>
    public bool IsHeredocScript => !Command.IsExecForm && Heredocs.Count == 1
        && DockerfileParser.HeredocWordPattern().IsMatch(Command.ShellText.Trim());

    /// <summary>The shell-form command with its heredoc bodies after it, as one script for <c>sh -c</c> (the shell
    /// then feeds each body to its operator). For <see cref="IsHeredocScript"/> the builder may instead run the
    /// body itself.</summary>
    public string ShellTextWithHeredocs => Command.ShellText + CanonicalText.Bodies(Heredocs)
        + (Heredocs.Count > 0 ? "\n" : "");

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Command.ToCanonicalText() + CanonicalText.Bodies(Heredocs);
}

/// <summary>COPY or ADD: <c>[--from=] [--chown=] [--chmod=] [--link] src... dest</c> (ADD also takes
/// <c>--checksum</c>, <c>--keep-git-dir</c>). Heredoc sources are in <see cref="Heredocs"/>, not in
/// <see cref="Sources"/>.</summary>
/// <param name="IsAdd">True for ADD.</param>
/// <param name="Sources">The source paths (context paths, globs, or for ADD URLs) as written.</param>
/// <param name="Destination">The destination path as written.</param>
/// <param name="Heredocs">Heredoc sources (each makes a file with that content), in order.</param>
/// <param name="IsJsonForm">True when the arguments were a JSON array (<c>COPY ["a b", "/d/"]</c>).</param>
public sealed record CopyInstruction(SourceLocation Location, string OriginalText, bool IsAdd,
    IReadOnlyList<string> Sources, string Destination, IReadOnlyList<Heredoc> Heredocs, bool IsJsonForm)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => IsAdd ? "ADD" : "COPY";

    /// <summary>The <c>--from</c> flag: a stage name, stage index or image reference; null for the context.</summary>
    public string? From => Flag("from");

    /// <summary>The <c>--chown</c> flag (<c>user[:group]</c>, names or numbers), or null.</summary>
    public string? Chown => Flag("chown");

    /// <summary>The <c>--chmod</c> flag (octal), or null.</summary>
    public string? Chmod => Flag("chmod");

    /// <summary>True when <c>--link</c> was given (or <c>--link=true</c>).</summary>
    public bool Link => Flags.Any(f => f.Name == "link" && (f.Value is null || f.Value == "true"));

    /// <summary>ADD's <c>--checksum</c> flag, or null.</summary>
    public string? Checksum => Flag("checksum");

    /// <summary>The destination names a directory: it ends in <c>/</c> (the reference's rule; the builder also
    /// treats several sources, or a wildcard, as copying into a directory).</summary>
    public bool DestinationIsDirectory => Destination.EndsWith('/');

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) => this with
    {
        Sources = [.. Sources.Select(expansion.ProcessWord)],
        Destination = expansion.ProcessWord(Destination),
        Heredocs = [.. Heredocs.Select(h => h.Expand ? h with { Content = expansion.ProcessHeredoc(h.Content) } : h)],
        Flags = FromInstruction.ExpandFlags(Flags, expansion),
        IsExpanded = true,
    };

    /// <inheritdoc/>
    public override string ToCanonicalText()
    {
        if (IsJsonForm && !IsExpanded)
        {
            return Head() + CanonicalText.JsonArray([.. Sources, Destination]);
        }
        var words = Heredocs.Select(h => h.Operator).Concat(Sources.Select(Word)).Append(Word(Destination));
        return Head() + string.Join(' ', words) + CanonicalText.Bodies(Heredocs);
    }
}

/// <summary><c>CMD</c>: the default command (exec form) or default arguments to the ENTRYPOINT.</summary>
public sealed record CmdInstruction(SourceLocation Location, string OriginalText, CommandLine Command)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "CMD";

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Command.ToCanonicalText();
}

/// <summary><c>ENTRYPOINT</c>: the program the container runs.</summary>
public sealed record EntrypointInstruction(SourceLocation Location, string OriginalText, CommandLine Command)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "ENTRYPOINT";

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Command.ToCanonicalText();
}

/// <summary><c>ENV name=value ...</c> or the legacy <c>ENV name value</c>. Before expansion names and values are
/// words as written (quotes kept); expansion removes the quotes. Every value is expanded against the environment
/// before this instruction (so <c>ENV a=1 b=$a</c> gives b the earlier a).</summary>
/// <param name="Pairs">The pairs in order.</param>
public sealed record EnvInstruction(SourceLocation Location, string OriginalText, IReadOnlyList<NameValuePair> Pairs)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "ENV";

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) => this with
    {
        Pairs = [.. Pairs.Select(p => new NameValuePair(expansion.ProcessWord(p.Name), expansion.ProcessWord(p.Value)))],
        IsExpanded = true,
    };

    /// <inheritdoc/>
    public override string ToCanonicalText() =>
        Head() + string.Join(' ', Pairs.Select(p => Word(p.Name) + "=" + Word(p.Value)));
}

/// <summary><c>LABEL key=value ...</c>: image metadata. Expanded as ENV is.</summary>
public sealed record LabelInstruction(SourceLocation Location, string OriginalText, IReadOnlyList<NameValuePair> Pairs)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "LABEL";

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) => this with
    {
        Pairs = [.. Pairs.Select(p => new NameValuePair(expansion.ProcessWord(p.Name), expansion.ProcessWord(p.Value)))],
        IsExpanded = true,
    };

    /// <inheritdoc/>
    public override string ToCanonicalText() =>
        Head() + string.Join(' ', Pairs.Select(p => Word(p.Name) + "=" + Word(p.Value)));
}

/// <summary>One name an ARG declares, with its default (null when none: then only <c>--build-arg</c> sets it).</summary>
public sealed record ArgDeclaration(string Name, string? DefaultValue);

/// <summary><c>ARG name[=default] ...</c>: a build variable. Before the first FROM it is global (visible to FROM
/// lines only); inside a stage it is visible from this line to the end of the stage.</summary>
/// <param name="Declarations">The names declared, in order.</param>
public sealed record ArgInstruction(SourceLocation Location, string OriginalText,
    IReadOnlyList<ArgDeclaration> Declarations) : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "ARG";

    /// <summary>The first declared name (an ARG usually declares one).</summary>
    public string Name => Declarations[0].Name;

    /// <summary>The first declaration's default, or null.</summary>
    public string? DefaultValue => Declarations[0].DefaultValue;

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) => this with
    {
        Declarations = [.. Declarations.Select(d =>
            d.DefaultValue is null ? d : d with { DefaultValue = expansion.ProcessWord(d.DefaultValue) })],
        IsExpanded = true,
    };

    /// <inheritdoc/>
    public override string ToCanonicalText() =>
        Head() + string.Join(' ', Declarations.Select(d => d.DefaultValue is null ? d.Name : d.Name + "=" + Word(d.DefaultValue)));
}

/// <summary><c>WORKDIR path</c>: the working directory of later instructions and the container (relative paths
/// are relative to the previous WORKDIR).</summary>
public sealed record WorkdirInstruction(SourceLocation Location, string OriginalText, string Path)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "WORKDIR";

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) =>
        this with { Path = expansion.ProcessWord(Path), IsExpanded = true };

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Word(Path);
}

/// <summary><c>USER user[:group]</c> (names or numeric ids).</summary>
public sealed record UserInstruction(SourceLocation Location, string OriginalText, string User)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "USER";

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) =>
        this with { User = expansion.ProcessWord(User), IsExpanded = true };

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Word(User);
}

/// <summary><c>EXPOSE port[/protocol] ...</c>. <see cref="Ports"/> are the words as written; after expansion
/// <see cref="ParsePorts"/> validates them.</summary>
public sealed record ExposeInstruction(SourceLocation Location, string OriginalText, IReadOnlyList<string> Ports)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "EXPOSE";

    /// <summary>The ports as OCI <c>ExposedPorts</c> keys want them (<c>80/tcp</c>; a range gives one per port).
    /// Throws <see cref="DockerfileException"/> for a port that is not 1-65535 or a protocol other than tcp, udp,
    /// sctp. Call it on the expanded instruction.</summary>
    public IReadOnlyList<ExposedPort> ParsePorts() => ExposedPort.ParseAll(Ports, Location);

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) =>
        this with { Ports = [.. Ports.SelectMany(expansion.ProcessWords)], IsExpanded = true };

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + string.Join(' ', Ports.Select(Word));
}

/// <summary>One exposed port and protocol.</summary>
/// <param name="Port">1-65535.</param>
/// <param name="Protocol"><c>tcp</c>, <c>udp</c> or <c>sctp</c> (lower case).</param>
public readonly record struct ExposedPort(int Port, string Protocol)
{
    /// <summary><c>80/tcp</c>: the key of the OCI config's ExposedPorts.</summary>
    public override string ToString() => $"{Port}/{Protocol}";

    internal static IReadOnlyList<ExposedPort> ParseAll(IEnumerable<string> words, SourceLocation location)
    {
        var ports = new List<ExposedPort>();
        foreach (string word in words)
        {
            ports.AddRange(Parse(word, location));
        }
        return ports;
    }

    private static IEnumerable<ExposedPort> Parse(string word, SourceLocation location)
    {
        string advice = "write EXPOSE PORT[/PROTOCOL] or FIRST-LAST[/PROTOCOL], e.g. EXPOSE 80/tcp 53/udp";
        string portText = word;
        string protocol = "tcp";
        int slash = word.IndexOf('/');
        if (slash >= 0)
        {
            portText = word[..slash];
            protocol = word[(slash + 1)..].ToLowerInvariant();
            if (protocol is not ("tcp" or "udp" or "sctp"))
            {
                throw new DockerfileException(location,
                    $"EXPOSE {word}: protocol '{word[(slash + 1)..]}' is not tcp, udp or sctp", advice);
            }
        }
        int dash = portText.IndexOf('-');
        int first = ParsePort(dash >= 0 ? portText[..dash] : portText, word, location, advice);
        int last = dash >= 0 ? ParsePort(portText[(dash + 1)..], word, location, advice) : first;
        if (last < first)
        {
            throw new DockerfileException(location, $"EXPOSE {word}: the range ends before it starts", advice);
        }
        for (int port = first; port <= last; port++)
        {
            yield return new ExposedPort(port, protocol);
        }
    }

    private static int ParsePort(string text, string word, SourceLocation location, string advice)
    {
        if (!int.TryParse(text, System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
        {
            throw new DockerfileException(location, $"EXPOSE {word}: '{text}' is not a port number 1-65535", advice);
        }
        return port;
    }
}

/// <summary><c>VOLUME ["/a", "/b"]</c> or <c>VOLUME /a /b</c>: mount points the image declares.</summary>
/// <param name="Paths">The paths as written.</param>
/// <param name="IsJsonForm">True for the JSON array form.</param>
public sealed record VolumeInstruction(SourceLocation Location, string OriginalText, IReadOnlyList<string> Paths,
    bool IsJsonForm) : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "VOLUME";

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) => this with
    {
        Paths = IsJsonForm ? [.. Paths.Select(expansion.ProcessWord)] : [.. Paths.SelectMany(expansion.ProcessWords)],
        IsExpanded = true,
    };

    /// <inheritdoc/>
    public override string ToCanonicalText() =>
        Head() + (IsJsonForm && !IsExpanded ? CanonicalText.JsonArray(Paths) : string.Join(' ', Paths.Select(Word)));
}

/// <summary><c>SHELL ["executable", "parameters"]</c>: the shell later shell-form commands run in (JSON only).</summary>
public sealed record ShellInstruction(SourceLocation Location, string OriginalText, IReadOnlyList<string> Shell)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "SHELL";

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + CanonicalText.JsonArray(Shell);
}

/// <summary><c>STOPSIGNAL signal</c> (a name such as <c>SIGTERM</c> or a number).</summary>
public sealed record StopSignalInstruction(SourceLocation Location, string OriginalText, string Signal)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "STOPSIGNAL";

    /// <inheritdoc/>
    protected override Instruction ExpandCore(ShellWordExpansion expansion) =>
        this with { Signal = expansion.ProcessWord(Signal), IsExpanded = true };

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Word(Signal);
}

/// <summary><c>HEALTHCHECK NONE</c> (disable the base image's check) or <c>HEALTHCHECK [options] CMD command</c>.
/// Durations are null when not given (the runtime's defaults then apply: 30 s interval, 30 s timeout, 0 s start
/// period, 5 s start interval, 3 retries).</summary>
/// <param name="Command">The check's command, or null for NONE.</param>
public sealed record HealthcheckInstruction(SourceLocation Location, string OriginalText, CommandLine? Command)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "HEALTHCHECK";

    /// <summary>True for <c>HEALTHCHECK NONE</c>.</summary>
    public bool IsNone => Command is null;

    /// <summary><c>--interval</c>, or null.</summary>
    public TimeSpan? Interval { get; init; }

    /// <summary><c>--timeout</c>, or null.</summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary><c>--start-period</c>, or null.</summary>
    public TimeSpan? StartPeriod { get; init; }

    /// <summary><c>--start-interval</c>, or null.</summary>
    public TimeSpan? StartInterval { get; init; }

    /// <summary><c>--retries</c>, or null.</summary>
    public int? Retries { get; init; }

    /// <summary>The image config's <c>Healthcheck.Test</c>: <c>["NONE"]</c>, <c>["CMD", args...]</c> for exec form,
    /// <c>["CMD-SHELL", command]</c> for shell form.</summary>
    public IReadOnlyList<string> Test => Command is null ? ["NONE"]
        : Command.IsExecForm ? ["CMD", .. Command.ExecArguments] : ["CMD-SHELL", Command.ShellText];

    /// <inheritdoc/>
    public override string ToCanonicalText() =>
        Command is null ? Head() + "NONE" : Head() + "CMD " + Command.ToCanonicalText();
}

/// <summary><c>ONBUILD instruction</c>: a trigger stored in the image and run by builds that use it as a base.</summary>
/// <param name="Trigger">The parsed trigger (never ONBUILD, FROM or MAINTAINER).</param>
public sealed record OnbuildInstruction(SourceLocation Location, string OriginalText, Instruction Trigger)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "ONBUILD";

    /// <summary>The trigger's text as the image config's <c>OnBuild</c> list stores it.</summary>
    public string TriggerText => Trigger.ToCanonicalText();

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Trigger.ToCanonicalText();
}

/// <summary><c>MAINTAINER name</c> (deprecated; sets the image's author).</summary>
public sealed record MaintainerInstruction(SourceLocation Location, string OriginalText, string Name)
    : Instruction(Location, OriginalText)
{
    /// <inheritdoc/>
    public override string Keyword => "MAINTAINER";

    /// <inheritdoc/>
    public override string ToCanonicalText() => Head() + Name;
}
