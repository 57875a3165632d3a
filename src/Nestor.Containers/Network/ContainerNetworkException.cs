namespace Nestor.Containers.Network;

/// <summary>A container's network could not be set up or taken down; the message says what happened and
/// <see cref="Advice"/> what to do.</summary>
public sealed class ContainerNetworkException(string message, string? advice = null, Exception? inner = null)
    : Exception(message, inner)
{
    public string? Advice { get; } = advice;
}
