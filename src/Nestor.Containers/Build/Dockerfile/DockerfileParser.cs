using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>Parses Dockerfile text into a <see cref="Dockerfile"/> as the Dockerfile reference describes: parser
/// directives at the top, case-insensitive instructions, line continuations with the escape character (comment
/// and empty lines inside them skipped), exec (JSON) and shell forms, heredocs on RUN, COPY and ADD, and the
/// structural rules (only ARG before the first FROM, unique stage names, <c>--from</c> naming an earlier stage).</summary>
public static partial class DockerfileParser
{
    /// <summary>The instructions the reference defines, lower case.</summary>
    private static readonly string[] Keywords =
    [
        "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck", "label", "maintainer",
        "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
    ];

    /// <summary>The flags each instruction takes; any other <c>--flag</c> is an error (as BuildKit's "unknown flag").</summary>
    private static readonly Dictionary<string, string[]> AllowedFlags = new()
    {
        ["from"] = ["platform"],
        ["run"] = ["mount", "network", "security"],
        ["copy"] = ["from", "chown", "chmod", "link", "parents", "exclude"],
        ["add"] = ["chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"],
        ["healthcheck"] = ["interval", "timeout", "start-period", "start-interval", "retries"],
    };

    /// <summary>Parses <paramref name="text"/>; <paramref name="fileName"/> names the file in errors. Throws
    /// <see cref="DockerfileException"/> with the file and line of the first error.</summary>
    public static Dockerfile Parse(string text, string fileName)
    {
        var lines = text.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n');
        if (lines.Length > 0 && lines[0].StartsWith('\uFEFF'))
        {
            lines[0] = lines[0][1..];
        }
        int index = 0;
        var directives = ReadDirectives(lines, fileName, ref index);
        char escape = '\\';
        foreach (var directive in directives)
        {
            if (directive.Name == "escape")
            {
                escape = directive.Value switch
                {
                    "\\" => '\\',
                    "`" => '`',
                    _ => throw new DockerfileException(directive.Location,
                        $"invalid escape character '{directive.Value}'", "use # escape=\\ or # escape=`"),
                };
            }
        }

        var globalArgs = new List<ArgInstruction>();
        var stages = new List<BuildStage>();
        FromInstruction? from = null;
        var instructions = new List<Instruction>();
        while (NextLogicalLine(lines, ref index, escape, out string line, out int lineNumber, out int column))
        {
            var location = new SourceLocation(fileName, lineNumber, column);
            var instruction = ParseInstruction(line, location, escape, lines, ref index, nested: false);
            if (instruction is FromInstruction next)
            {
                if (from is not null)
                {
                    stages.Add(new BuildStage(stages.Count, from, [.. instructions]));
                }
                from = next;
                instructions.Clear();
            }
            else if (from is null)
            {
                if (instruction is ArgInstruction arg)
                {
                    globalArgs.Add(arg);
                }
                else
                {
                    throw new DockerfileException(location,
                        $"{instruction.Keyword} comes before the first FROM: only ARG may",
                        "start the build stage with FROM IMAGE (or FROM scratch) before this line");
                }
            }
            else
            {
                instructions.Add(instruction);
            }
        }
        if (from is null)
        {
            throw new DockerfileException(new SourceLocation(fileName, Math.Max(1, lines.Length)),
                globalArgs.Count == 0 ? "the file has no instructions" : "the file has no FROM",
                "a Dockerfile starts a build stage with FROM IMAGE (or FROM scratch)");
        }
        stages.Add(new BuildStage(stages.Count, from, [.. instructions]));
        CheckStages(stages);
        return new Dockerfile(fileName, directives, escape, globalArgs, stages);
    }

    /// <summary>Stage names are unique, and <c>COPY --from</c> / <c>RUN --mount=from=</c> name an earlier stage
    /// (a later or the same one would be a cycle). Names with variables are checked when the build resolves them.</summary>
    private static void CheckStages(List<BuildStage> stages)
    {
        var names = new Dictionary<string, BuildStage>(StringComparer.Ordinal);
        foreach (var stage in stages)
        {
            if (stage.Name is not null)
            {
                if (names.TryGetValue(stage.Name, out var earlier))
                {
                    throw new DockerfileException(stage.Location,
                        $"duplicate stage name '{stage.Name}' (stage {earlier.Index} at line {earlier.Location.Line} has it)",
                        "give each stage its own AS name");
                }
                names[stage.Name] = stage;
            }
        }
        foreach (var stage in stages)
        {
            foreach (var instruction in stage.Instructions)
            {
                foreach (string reference in StageReferences(instruction))
                {
                    if (reference.Contains('$', StringComparison.Ordinal))
                    {
                        continue;
                    }
                    string name = reference.ToLowerInvariant();
                    int? target = names.TryGetValue(name, out var named) ? named.Index
                        : int.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out int number) ? number
                        : null;
                    if (target is int referenced && referenced >= stage.Index)
                    {
                        throw new DockerfileException(instruction.Location,
                            referenced == stage.Index
                                ? $"{instruction.Keyword} --from={reference} names the stage it is in"
                                : $"{instruction.Keyword} --from={reference} names a later stage (stage {referenced}); a stage can only use stages before it",
                            "move the stage it copies from above this one");
                    }
                }
            }
        }
    }

    /// <summary>The stage or image names an instruction reads from: COPY's <c>--from</c> and RUN's
    /// <c>--mount=...,from=NAME</c>.</summary>
    internal static IEnumerable<string> StageReferences(Instruction instruction)
    {
        if (instruction is CopyInstruction { From: { } copyFrom })
        {
            yield return copyFrom;
        }
        if (instruction is RunInstruction run)
        {
            foreach (string mount in run.Mounts)
            {
                foreach (string field in mount.Split(','))
                {
                    if (field.StartsWith("from=", StringComparison.Ordinal))
                    {
                        yield return field[5..];
                    }
                }
            }
        }
    }

    [GeneratedRegex(@"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")]
    private static partial Regex DirectivePattern();

    /// <summary>Reads the parser directives: <c># name=value</c> lines at the very top. The first line that is not
    /// one (an instruction, an empty line, an ordinary comment or an unknown directive) ends them; later
    /// directive-looking lines are comments. A directive may appear once.</summary>
    private static List<ParserDirective> ReadDirectives(string[] lines, string fileName, ref int index)
    {
        var directives = new List<ParserDirective>();
        while (index < lines.Length)
        {
            var match = DirectivePattern().Match(lines[index]);
            if (!match.Success)
            {
                break;
            }
            string name = match.Groups[1].Value.ToLowerInvariant();
            if (name is not ("syntax" or "escape" or "check"))
            {
                break;
            }
            var location = new SourceLocation(fileName, index + 1);
            if (directives.Any(d => d.Name == name))
            {
                throw new DockerfileException(location, $"the parser directive '{name}' is given twice",
                    "keep one # " + name + "= line");
            }
            directives.Add(new ParserDirective(name, match.Groups[2].Value, location));
            index++;
        }
        return directives;
    }

    /// <summary>The next logical line: comment and empty lines skipped, continuation lines (ending in the escape
    /// character and optional white space) joined, comment and empty lines inside a continuation skipped.
    /// Continuation lines keep their leading white space, as Docker joins them.</summary>
    private static bool NextLogicalLine(string[] lines, ref int index, char escape, out string line,
        out int lineNumber, out int column)
    {
        while (index < lines.Length && IsEmptyOrComment(lines[index]))
        {
            index++;
        }
        if (index >= lines.Length)
        {
            line = "";
            lineNumber = 0;
            column = 0;
            return false;
        }
        lineNumber = index + 1;
        string first = lines[index++];
        string trimmed = first.TrimStart();
        column = first.Length - trimmed.Length + 1;
        var text = new StringBuilder();
        bool continues = TrimContinuation(trimmed, escape, out string part);
        text.Append(part);
        while (continues && index < lines.Length)
        {
            string next = lines[index++];
            if (IsEmptyOrComment(next))
            {
                continue;
            }
            continues = TrimContinuation(next, escape, out part);
            text.Append(part);
        }
        line = text.ToString().TrimEnd();
        return true;
    }

    private static bool IsEmptyOrComment(string line)
    {
        string trimmed = line.TrimStart();
        return trimmed.Length == 0 || trimmed[0] == '#';
    }

    private static bool TrimContinuation(string line, char escape, out string content)
    {
        string end = line.TrimEnd(' ', '\t');
        if (end.Length > 0 && end[^1] == escape)
        {
            content = end[..^1];
            return true;
        }
        content = line;
        return false;
    }

    /// <summary>Parses one logical line (and the heredoc bodies after it) into an instruction.</summary>
    private static Instruction ParseInstruction(string line, SourceLocation location, char escape, string[] lines,
        ref int index, bool nested)
    {
        int space = 0;
        while (space < line.Length && !char.IsWhiteSpace(line[space]))
        {
            space++;
        }
        string word = line[..space];
        string keyword = word.ToLowerInvariant();
        string rest = line[space..].Trim();
        if (!Keywords.Contains(keyword))
        {
            string? near = Keywords.OrderBy(k => Distance(k, keyword)).First();
            throw new DockerfileException(location, $"unknown instruction '{word}'",
                Distance(near, keyword) <= 2
                    ? $"did you mean {near.ToUpperInvariant()}?"
                    : "instructions are " + string.Join(", ", Keywords.Select(k => k.ToUpperInvariant())));
        }
        string upper = keyword.ToUpperInvariant();

        var flags = ExtractFlags(ref rest, escape, location, upper);
        if (flags.Count > 0)
        {
            var allowed = AllowedFlags.GetValueOrDefault(keyword, []);
            foreach (var flag in flags)
            {
                if (!allowed.Contains(flag.Name))
                {
                    throw new DockerfileException(location, $"{upper} does not take the flag --{flag.Name}",
                        allowed.Length == 0 ? $"{upper} takes no flags"
                            : $"{upper} takes " + string.Join(", ", allowed.Select(a => "--" + a)));
                }
            }
        }

        // Heredocs: the words of a shell-form RUN or of COPY/ADD that are <<NAME; their bodies follow the line.
        var heredocs = new List<Heredoc>();
        string original = line;
        if (keyword is "run" or "copy" or "add" && !nested && DockerfileWords.TryJsonArray(rest) is null)
        {
            foreach (string candidate in DockerfileWords.SplitQuoted(rest, escape))
            {
                if (ParseHeredocOperator(candidate) is { } heredoc)
                {
                    heredocs.Add(heredoc);
                }
            }
            if (heredocs.Count > 0)
            {
                var body = new StringBuilder(original);
                for (int i = 0; i < heredocs.Count; i++)
                {
                    heredocs[i] = ReadHeredocBody(heredocs[i], lines, ref index, location, body);
                }
                original = body.ToString();
            }
        }
        if (rest.Length == 0 && heredocs.Count == 0)
        {
            throw new DockerfileException(location, $"{upper} needs arguments", Usage(keyword));
        }
        Instruction instruction = keyword switch
        {
            "from" => ParseFrom(rest, location, original),
            "run" => new RunInstruction(location, original, ParseCommand(rest), heredocs),
            "cmd" => new CmdInstruction(location, original, ParseCommand(rest)),
            "entrypoint" => new EntrypointInstruction(location, original, ParseCommand(rest)),
            "copy" or "add" => ParseCopy(keyword == "add", rest, heredocs, location, original, escape),
            "env" => new EnvInstruction(location, original, ParseNameValues(rest, "ENV", location, escape)),
            "label" => new LabelInstruction(location, original, ParseNameValues(rest, "LABEL", location, escape)),
            "arg" => ParseArg(rest, location, original, escape),
            "workdir" => new WorkdirInstruction(location, original, rest),
            "user" => new UserInstruction(location, original, rest),
            "expose" => new ExposeInstruction(location, original, DockerfileWords.SplitWhiteSpace(rest)),
            "volume" => ParseVolume(rest, location, original),
            "shell" => new ShellInstruction(location, original, DockerfileWords.TryJsonArray(rest) is { Count: > 0 } shell
                ? shell
                : throw new DockerfileException(location, "SHELL needs a JSON array of strings",
                    "write SHELL [\"/bin/bash\", \"-c\"]")),
            "stopsignal" => ParseStopSignal(rest, location, original),
            "healthcheck" => ParseHealthcheck(rest, flags, location, original),
            "maintainer" => new MaintainerInstruction(location, original, rest),
            "onbuild" => ParseOnbuild(rest, location, original, escape, lines, ref index, nested),
            _ => throw new InvalidOperationException(keyword),
        };
        return instruction with { Flags = flags, EscapeCharacter = escape };
    }

    private static string Usage(string keyword) => keyword switch
    {
        "from" => "write FROM IMAGE[:TAG] [AS NAME] or FROM scratch",
        "run" => "write RUN COMMAND or RUN [\"EXECUTABLE\", \"ARG\"]",
        "cmd" or "entrypoint" => $"write {keyword.ToUpperInvariant()} [\"EXECUTABLE\", \"ARG\"] or {keyword.ToUpperInvariant()} COMMAND",
        "copy" or "add" => $"write {keyword.ToUpperInvariant()} SOURCE... DESTINATION",
        "env" => "write ENV NAME=VALUE ...",
        "label" => "write LABEL KEY=VALUE ...",
        "arg" => "write ARG NAME[=DEFAULT]",
        "expose" => "write EXPOSE PORT[/PROTOCOL] ...",
        "volume" => "write VOLUME /PATH or VOLUME [\"/PATH\"]",
        "shell" => "write SHELL [\"/bin/bash\", \"-c\"]",
        "healthcheck" => "write HEALTHCHECK [OPTIONS] CMD COMMAND or HEALTHCHECK NONE",
        "onbuild" => "write ONBUILD INSTRUCTION",
        _ => $"write {keyword.ToUpperInvariant()} VALUE",
    };

    /// <summary>Removes the leading <c>--name[=value]</c> words from <paramref name="rest"/> (a bare <c>--</c> ends
    /// them). Values keep their quotes; expansion removes them.</summary>
    private static List<InstructionFlag> ExtractFlags(ref string rest, char escape, SourceLocation location, string keyword)
    {
        var flags = new List<InstructionFlag>();
        int position = 0;
        while (true)
        {
            while (position < rest.Length && char.IsWhiteSpace(rest[position]))
            {
                position++;
            }
            if (position + 1 >= rest.Length || rest[position] != '-' || rest[position + 1] != '-')
            {
                break;
            }
            int start = position;
            char quote = '\0';
            while (position < rest.Length && (quote != '\0' || !char.IsWhiteSpace(rest[position])))
            {
                char c = rest[position];
                if (quote != '\0')
                {
                    if (c == quote)
                    {
                        quote = '\0';
                    }
                }
                else if (c is '"' or '\'')
                {
                    quote = c;
                }
                else if (c == escape && position + 1 < rest.Length)
                {
                    position++;
                }
                position++;
            }
            if (quote != '\0')
            {
                throw new DockerfileException(location, $"{keyword}: the flag {rest[start..]} has no closing quote",
                    "close the quote");
            }
            string word = rest[(start + 2)..position];
            if (word.Length == 0)
            {
                break;
            }
            int equals = word.IndexOf('=');
            string name = (equals < 0 ? word : word[..equals]).ToLowerInvariant();
            flags.Add(new InstructionFlag(name, equals < 0 ? null : word[(equals + 1)..]));
        }
        rest = rest[position..].Trim();
        return flags;
    }

    private static CommandLine ParseCommand(string rest) =>
        DockerfileWords.TryJsonArray(rest) is { } arguments ? CommandLine.Exec(arguments) : CommandLine.Shell(rest);

    private static FromInstruction ParseFrom(string rest, SourceLocation location, string original)
    {
        var words = DockerfileWords.SplitWhiteSpace(rest);
        if (words.Count == 1)
        {
            return new FromInstruction(location, original, words[0], null);
        }
        if (words.Count != 3 || !words[1].Equals("as", StringComparison.OrdinalIgnoreCase))
        {
            throw new DockerfileException(location, $"FROM takes an image and optionally AS NAME, not '{rest}'",
                Usage("from"));
        }
        string name = words[2].ToLowerInvariant();
        if (!StageNamePattern().IsMatch(name))
        {
            throw new DockerfileException(location,
                $"invalid stage name '{words[2]}': it must start with a letter and hold only letters, digits, '-', '_' and '.'",
                "rename the stage, e.g. FROM IMAGE AS builder");
        }
        return new FromInstruction(location, original, words[0], name);
    }

    [GeneratedRegex(@"^[a-z][a-z0-9\-_\.]*$")]
    private static partial Regex StageNamePattern();

    private static CopyInstruction ParseCopy(bool isAdd, string rest, List<Heredoc> heredocs, SourceLocation location,
        string original, char escape)
    {
        string keyword = isAdd ? "ADD" : "COPY";
        List<string> words;
        bool json = false;
        if (DockerfileWords.TryJsonArray(rest) is { } array)
        {
            words = array;
            json = true;
        }
        else
        {
            words = DockerfileWords.SplitWhiteSpace(rest);
        }
        // Heredoc operators are sources too; they are kept apart from the paths.
        var sources = new List<string>();
        int heredocWords = 0;
        foreach (string word in words.Take(Math.Max(0, words.Count - 1)))
        {
            if (!json && heredocs.Count > 0 && ParseHeredocOperator(word) is not null)
            {
                heredocWords++;
                continue;
            }
            sources.Add(word);
        }
        if (words.Count < 2 && !(heredocWords == 0 && heredocs.Count > 0 && words.Count == 1))
        {
            throw new DockerfileException(location, $"{keyword} needs at least one source and a destination",
                Usage(isAdd ? "add" : "copy"));
        }
        string destination = words[^1];
        if (!json && heredocs.Count > 0 && ParseHeredocOperator(destination) is not null)
        {
            throw new DockerfileException(location, $"{keyword}: the last argument is a heredoc, not a destination",
                Usage(isAdd ? "add" : "copy"));
        }
        _ = escape;
        return new CopyInstruction(location, original, isAdd, sources, destination, heredocs, json);
    }

    private static List<NameValuePair> ParseNameValues(string rest, string keyword, SourceLocation location, char escape)
    {
        var words = DockerfileWords.SplitQuoted(rest, escape);
        if (words.Count > 0 && !words[0].Contains('=', StringComparison.Ordinal))
        {
            // The legacy form NAME VALUE: the value is everything after the first white space.
            int split = 0;
            while (split < rest.Length && !char.IsWhiteSpace(rest[split]))
            {
                split++;
            }
            string value = rest[split..].TrimStart();
            if (value.Length == 0)
            {
                throw new DockerfileException(location, $"{keyword} {rest}: no value (write {rest}=VALUE)",
                    Usage(keyword.ToLowerInvariant()));
            }
            return [new NameValuePair(rest[..split], value)];
        }
        var pairs = new List<NameValuePair>();
        foreach (string word in words)
        {
            int equals = word.IndexOf('=');
            if (equals < 0)
            {
                throw new DockerfileException(location, $"{keyword}: '{word}' has no '='",
                    $"write {keyword} NAME=VALUE; quote values with spaces: {keyword} NAME=\"two words\"");
            }
            if (equals == 0)
            {
                throw new DockerfileException(location, $"{keyword}: '{word}' has an empty name", Usage(keyword.ToLowerInvariant()));
            }
            pairs.Add(new NameValuePair(word[..equals], word[(equals + 1)..]));
        }
        return pairs;
    }

    private static ArgInstruction ParseArg(string rest, SourceLocation location, string original, char escape)
    {
        var declarations = new List<ArgDeclaration>();
        foreach (string word in DockerfileWords.SplitQuoted(rest, escape))
        {
            int equals = word.IndexOf('=');
            string name = equals < 0 ? word : word[..equals];
            if (!ArgNamePattern().IsMatch(name))
            {
                throw new DockerfileException(location, $"ARG: '{name}' is not a variable name",
                    "names are letters, digits and '_', not starting with a digit: ARG NAME[=DEFAULT]");
            }
            declarations.Add(new ArgDeclaration(name, equals < 0 ? null : word[(equals + 1)..]));
        }
        return new ArgInstruction(location, original, declarations);
    }

    [GeneratedRegex(@"^[A-Za-z_][A-Za-z0-9_]*$")]
    private static partial Regex ArgNamePattern();

    private static VolumeInstruction ParseVolume(string rest, SourceLocation location, string original)
    {
        bool json = DockerfileWords.TryJsonArray(rest) is not null;
        var paths = DockerfileWords.TryJsonArray(rest) ?? DockerfileWords.SplitWhiteSpace(rest);
        if (paths.Count == 0 || paths.Any(p => p.Trim().Length == 0))
        {
            throw new DockerfileException(location, "VOLUME names an empty path", Usage("volume"));
        }
        return new VolumeInstruction(location, original, paths, json);
    }

    private static StopSignalInstruction ParseStopSignal(string rest, SourceLocation location, string original)
    {
        if (DockerfileWords.SplitWhiteSpace(rest).Count != 1)
        {
            throw new DockerfileException(location, $"STOPSIGNAL takes one signal, not '{rest}'",
                "write STOPSIGNAL SIGTERM (a name or a number)");
        }
        if (!rest.Contains('$', StringComparison.Ordinal) && !IsSignal(rest))
        {
            throw new DockerfileException(location, $"STOPSIGNAL: '{rest}' is not a signal",
                "write a signal name (SIGTERM, SIGINT, SIGQUIT, SIGRTMIN+3) or a number 1-64");
        }
        return new StopSignalInstruction(location, original, rest);
    }

    /// <summary>True for a signal number 1-64 or a Linux signal name (signal(7)), with or without the SIG prefix.</summary>
    public static bool IsSignal(string text)
    {
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int number))
        {
            return number is >= 1 and <= 64;
        }
        string name = text.ToUpperInvariant();
        if (name.StartsWith("SIG", StringComparison.Ordinal))
        {
            name = name[3..];
        }
        if (name.StartsWith("RTMIN", StringComparison.Ordinal) || name.StartsWith("RTMAX", StringComparison.Ordinal))
        {
            string offset = name[5..];
            return offset.Length == 0 || (offset.Length > 1 && offset[0] is '+' or '-'
                && int.TryParse(offset[1..], NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n <= 30);
        }
        return name is "HUP" or "INT" or "QUIT" or "ILL" or "TRAP" or "ABRT" or "IOT" or "BUS" or "FPE" or "KILL"
            or "USR1" or "SEGV" or "USR2" or "PIPE" or "ALRM" or "TERM" or "STKFLT" or "CHLD" or "CONT" or "STOP"
            or "TSTP" or "TTIN" or "TTOU" or "URG" or "XCPU" or "XFSZ" or "VTALRM" or "PROF" or "WINCH" or "IO"
            or "POLL" or "PWR" or "SYS";
    }

    [GeneratedRegex(@"^\d*<<-?[^<\s]+$")]
    internal static partial Regex HeredocWordPattern();

    private static HealthcheckInstruction ParseHealthcheck(string rest, List<InstructionFlag> flags,
        SourceLocation location, string original)
    {
        int space = 0;
        while (space < rest.Length && !char.IsWhiteSpace(rest[space]))
        {
            space++;
        }
        string type = rest[..space];
        string command = rest[space..].Trim();
        if (type.Equals("none", StringComparison.OrdinalIgnoreCase))
        {
            if (command.Length > 0 || flags.Count > 0)
            {
                throw new DockerfileException(location, "HEALTHCHECK NONE takes no options or arguments",
                    "write HEALTHCHECK NONE alone");
            }
            return new HealthcheckInstruction(location, original, null);
        }
        if (!type.Equals("cmd", StringComparison.OrdinalIgnoreCase))
        {
            throw new DockerfileException(location, $"HEALTHCHECK: unknown type '{type}' (CMD or NONE)",
                Usage("healthcheck"));
        }
        if (command.Length == 0)
        {
            throw new DockerfileException(location, "HEALTHCHECK CMD needs a command", Usage("healthcheck"));
        }
        int? retries = null;
        if (flags.LastOrDefault(f => f.Name == "retries") is { } retriesFlag)
        {
            retries = int.TryParse(retriesFlag.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int r) && r >= 0
                ? r
                : throw new DockerfileException(location,
                    $"HEALTHCHECK --retries={retriesFlag.Value} is not a whole number 0 or more", "write e.g. --retries=3");
        }
        return new HealthcheckInstruction(location, original, ParseCommand(command))
        {
            Interval = HealthDuration(flags, "interval", location),
            Timeout = HealthDuration(flags, "timeout", location),
            StartPeriod = HealthDuration(flags, "start-period", location),
            StartInterval = HealthDuration(flags, "start-interval", location),
            Retries = retries,
        };
    }

    /// <summary>A HEALTHCHECK duration: Go's time.ParseDuration syntax (<c>30s</c>, <c>1m30s</c>, <c>1.5h</c>,
    /// <c>250ms</c>); 0 means the default; anything else under 1 ms is an error, as Docker's.</summary>
    private static TimeSpan? HealthDuration(List<InstructionFlag> flags, string name, SourceLocation location)
    {
        if (flags.LastOrDefault(f => f.Name == name) is not { } flag)
        {
            return null;
        }
        string advice = $"write --{name}=DURATION such as 30s, 1m30s or 500ms";
        if (flag.Value is null || GoDuration.TryParse(flag.Value) is not { } duration)
        {
            throw new DockerfileException(location, $"HEALTHCHECK --{name}={flag.Value}: not a duration", advice);
        }
        if (duration != TimeSpan.Zero && duration < TimeSpan.FromMilliseconds(1))
        {
            throw new DockerfileException(location, $"HEALTHCHECK --{name}={flag.Value}: less than 1ms", advice);
        }
        return duration;
    }

    private static OnbuildInstruction ParseOnbuild(string rest, SourceLocation location, string original, char escape,
        string[] lines, ref int index, bool nested)
    {
        _ = nested;
        string trigger = rest.Split((char[]?)null, 2, StringSplitOptions.RemoveEmptyEntries)[0].ToLowerInvariant();
        if (trigger is "onbuild" or "from" or "maintainer")
        {
            throw new DockerfileException(location, $"ONBUILD {trigger.ToUpperInvariant()} is not allowed",
                "ONBUILD takes any instruction but ONBUILD, FROM and MAINTAINER");
        }
        var inner = ParseInstruction(rest, location, escape, lines, ref index, nested: true);
        return new OnbuildInstruction(location, original, inner);
    }

    [GeneratedRegex(@"^(\d*)<<(-?)([^<]*)$")]
    private static partial Regex HeredocPattern();

    /// <summary>The heredoc a word opens (<c>&lt;&lt;EOF</c>, <c>&lt;&lt;-EOF</c>, <c>&lt;&lt;"EOF"</c>,
    /// <c>3&lt;&lt;EOF</c>), without its body yet, or null when the word is not one.</summary>
    private static Heredoc? ParseHeredocOperator(string word)
    {
        var match = HeredocPattern().Match(word);
        if (!match.Success || match.Groups[3].Value.Length == 0)
        {
            return null;
        }
        string delimiter = match.Groups[3].Value;
        bool quoted = delimiter.IndexOfAny(['"', '\'']) >= 0;
        string name = delimiter.Replace("\"", "", StringComparison.Ordinal).Replace("'", "", StringComparison.Ordinal);
        if (name.Length == 0)
        {
            return null;
        }
        int? descriptor = match.Groups[1].Value.Length > 0
            ? int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture) : null;
        return new Heredoc(name, "", !quoted, match.Groups[2].Value == "-", descriptor);
    }

    /// <summary>Reads a heredoc's body: the lines after the instruction up to one that is exactly the delimiter
    /// (after leading tabs are removed, for <c>&lt;&lt;-</c>). Comment lines and escapes are body text.</summary>
    private static Heredoc ReadHeredocBody(Heredoc heredoc, string[] lines, ref int index, SourceLocation location,
        StringBuilder original)
    {
        var content = new StringBuilder();
        while (index < lines.Length)
        {
            string line = lines[index++];
            original.Append('\n').Append(line);
            string text = heredoc.StripLeadingTabs ? line.TrimStart('\t') : line;
            if (text == heredoc.Name)
            {
                return heredoc with { Content = content.ToString() };
            }
            content.Append(text).Append('\n');
        }
        throw new DockerfileException(location, $"the heredoc <<{heredoc.Name} has no closing line '{heredoc.Name}'",
            $"end the heredoc with a line holding only {heredoc.Name}");
    }

    /// <summary>Levenshtein distance, for "did you mean" advice.</summary>
    private static int Distance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++)
        {
            previous[j] = j;
        }
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                current[j] = Math.Min(Math.Min(current[j - 1], previous[j]) + 1,
                    previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            }
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }
}
