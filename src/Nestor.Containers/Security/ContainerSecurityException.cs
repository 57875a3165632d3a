namespace Nestor.Containers.Security;

/// <summary>A capability, seccomp or resource-limit setting could not be resolved or applied; the message says which
/// and what to do.</summary>
public sealed class ContainerSecurityException(string message, Exception? inner = null) : Exception(message, inner);
