namespace Nestor.Containers.Registry;

/// <summary>What went wrong talking to a registry, so that the command line can say what to do about it.</summary>
public enum RegistryFailure
{
    /// <summary>The registry's host name does not resolve.</summary>
    UnknownHost,
    /// <summary>Nothing listens on the registry's address, or the connection broke.</summary>
    ConnectionRefused,
    /// <summary>HTTP 401: no or wrong credentials.</summary>
    Unauthorized,
    /// <summary>HTTP 403: the credentials do not allow this repository or action.</summary>
    Denied,
    /// <summary>HTTP 404 for a manifest: the repository or the tag does not exist.</summary>
    ManifestUnknown,
    /// <summary>Content whose digest is not the one it was asked for.</summary>
    DigestMismatch,
    /// <summary>A manifest form Nestor does not read (Docker schema 1, an unknown type) or an index without
    /// linux/amd64.</summary>
    UnsupportedMediaType,
    /// <summary>TLS failed (an untrusted certificate, or a plain-HTTP registry spoken to in HTTPS).</summary>
    Tls,
    /// <summary>Any other answer the distribution API does not allow.</summary>
    Protocol,
}

/// <summary>A registry operation that failed; <see cref="Exception.Message"/> says what happened and what to do.</summary>
public sealed class RegistryException(RegistryFailure failure, string message, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>The kind of failure.</summary>
    public RegistryFailure Failure { get; } = failure;
}
