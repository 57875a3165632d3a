namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>A place in a Dockerfile: the file name as given to the parser, the 1-based line of the instruction's
/// first physical line (0 for the file as a whole), and a 1-based column (0 when not known).</summary>
public readonly record struct SourceLocation(string File, int Line, int Column = 0)
{
    /// <summary><c>file:line</c> or <c>file:line:column</c>, the form compilers print.</summary>
    public override string ToString() =>
        Line <= 0 ? File : Column > 0 ? $"{File}:{Line}:{Column}" : $"{File}:{Line}";
}
