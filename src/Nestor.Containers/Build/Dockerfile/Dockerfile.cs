namespace Nestor.Containers.Build.Dockerfiles;

// The namespace is Dockerfiles (plural) while the folder is Dockerfile/: a namespace named Dockerfile would hide the
// type Dockerfile from code in Nestor.Containers.Build (namespace members are found before using-imported types).

/// <summary>A parsed Dockerfile: its parser directives, the ARGs declared before the first FROM (visible only to
/// FROM lines unless a stage redeclares them) and its stages in file order. Nothing is expanded yet: base image
/// names, paths and values are the text as written; <see cref="BuildVariables"/> expands them.</summary>
/// <param name="FileName">The name the file was parsed under (used in every error).</param>
/// <param name="Directives">The parser directives (<c># syntax=</c>, <c># escape=</c>, <c># check=</c>) with
/// lower-case names, in file order.</param>
/// <param name="EscapeCharacter">The escape character: <c>\</c>, or <c>`</c> after <c># escape=`</c>.</param>
/// <param name="GlobalArgs">The ARG instructions before the first FROM.</param>
/// <param name="Stages">The stages, index 0 first.</param>
public sealed record Dockerfile(
    string FileName,
    IReadOnlyList<ParserDirective> Directives,
    char EscapeCharacter,
    IReadOnlyList<ArgInstruction> GlobalArgs,
    IReadOnlyList<BuildStage> Stages)
{
    /// <summary>The <c># syntax=</c> directive's value, or null (Nestor records it; it does not fetch frontends).</summary>
    public string? Syntax => Directives.FirstOrDefault(d => d.Name == "syntax")?.Value;

    /// <summary>The last stage: the one built when no target is given.</summary>
    public BuildStage FinalStage => Stages[^1];

    /// <summary>The stage named <paramref name="nameOrIndex"/> (names compare case-insensitively, as Docker
    /// lower-cases them) or with that decimal index, or null.</summary>
    public BuildStage? FindStage(string nameOrIndex)
    {
        foreach (var stage in Stages)
        {
            if (stage.Name is not null && string.Equals(stage.Name, nameOrIndex, StringComparison.OrdinalIgnoreCase))
            {
                return stage;
            }
        }
        if (int.TryParse(nameOrIndex, System.Globalization.NumberStyles.None,
                System.Globalization.CultureInfo.InvariantCulture, out int index) && index < Stages.Count)
        {
            return Stages[index];
        }
        return null;
    }

    /// <summary>The whole file in canonical form: directives, global ARGs, then each stage's lines. Parsing it
    /// again gives the same instructions.</summary>
    public string ToCanonicalText()
    {
        var text = new System.Text.StringBuilder();
        foreach (var directive in Directives)
        {
            text.Append("# ").Append(directive.Name).Append('=').Append(directive.Value).Append('\n');
        }
        foreach (var arg in GlobalArgs)
        {
            text.Append(arg.ToCanonicalText()).Append('\n');
        }
        foreach (var stage in Stages)
        {
            text.Append(stage.From.ToCanonicalText()).Append('\n');
            foreach (var instruction in stage.Instructions)
            {
                text.Append(instruction.ToCanonicalText()).Append('\n');
            }
        }
        return text.ToString();
    }
}

/// <summary>A parser directive: a <c># name=value</c> comment at the top of the file.</summary>
/// <param name="Name">The directive's name, lower-case.</param>
/// <param name="Value">Its value, trimmed.</param>
/// <param name="Location">Where it is.</param>
public sealed record ParserDirective(string Name, string Value, SourceLocation Location);

/// <summary>One stage: a FROM line and the instructions up to the next FROM.</summary>
/// <param name="Index">The stage's 0-based position in the file (what <c>COPY --from=0</c> names).</param>
/// <param name="From">The FROM instruction that starts the stage.</param>
/// <param name="Instructions">The instructions after FROM, in order (FROM itself not included).</param>
public sealed record BuildStage(int Index, FromInstruction From, IReadOnlyList<Instruction> Instructions)
{
    /// <summary>The <c>AS</c> name, lower-cased as Docker does, or null.</summary>
    public string? Name => From.StageName;

    /// <summary>The base image as written, before ARG expansion (a reference, <c>scratch</c>, or an earlier
    /// stage's name).</summary>
    public string BaseImage => From.BaseImage;

    /// <summary>The <c>--platform</c> flag's value as written, or null.</summary>
    public string? Platform => From.Platform;

    /// <summary>Where the stage's FROM line is.</summary>
    public SourceLocation Location => From.Location;

    /// <summary>The name by which a later stage refers to this one: its <c>AS</c> name, else its index.</summary>
    public string DisplayName => Name ?? Index.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
