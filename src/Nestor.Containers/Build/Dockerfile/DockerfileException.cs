namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>A Dockerfile cannot be used: a syntax error, an unknown instruction, a flag an instruction does not
/// take, a stage that does not exist. The message names the file and line; <see cref="Advice"/> says what to do.</summary>
public sealed class DockerfileException : Exception
{
    /// <summary>Makes the error for <paramref name="location"/>; the message is prefixed with it.</summary>
    public DockerfileException(SourceLocation location, string message, string? advice = null, Exception? inner = null)
        : base($"{location}: {message}", inner)
    {
        Location = location;
        Reason = message;
        Advice = advice;
    }

    /// <summary>Where the error is (file, 1-based line, and column when known).</summary>
    public SourceLocation Location { get; }

    /// <summary>The message without the location prefix.</summary>
    public string Reason { get; }

    /// <summary>What the user can do about it, or null.</summary>
    public string? Advice { get; }
}
