namespace Nestor.Containers.Build;

/// <summary>A build failed: a step's command exited non-zero, a source is missing, a base image is not in the store.
/// The message names the Dockerfile and line when a step is to blame; <see cref="Advice"/> says what to do.</summary>
public sealed class BuildException(string message, string? advice = null, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>What the user can do about it, or null.</summary>
    public string? Advice { get; } = advice;

    /// <summary>A failed RUN's exit status (Docker reports it), or null when the build failed otherwise.</summary>
    public int? ExitStatus { get; init; }
}
