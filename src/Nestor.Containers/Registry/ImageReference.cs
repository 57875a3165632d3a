using System.Text.RegularExpressions;

namespace Nestor.Containers.Registry;

/// <summary>A reference to an image in a registry, read Docker's way (distribution's <c>reference</c> grammar):
/// <c>[REGISTRY/]REPOSITORY[:TAG][@DIGEST]</c>. The first path component is the registry only when it holds a dot or
/// a colon or is <c>localhost</c>; otherwise the registry is <c>docker.io</c>, where a one-component repository is
/// an official image under <c>library/</c>. Without tag and digest the tag is <c>latest</c>.</summary>
public sealed partial record ImageReference
{
    /// <summary>The registry Docker assumes when a reference names none.</summary>
    public const string DockerHub = "docker.io";

    /// <summary>The tag a reference without tag or digest means.</summary>
    public const string DefaultTag = "latest";

    private ImageReference(string registry, string repository, string? tag, string? digest)
    {
        Registry = registry;
        Repository = repository;
        Tag = tag;
        Digest = digest;
    }

    /// <summary>The registry's host and optional port (<c>docker.io</c>, <c>127.0.0.1:5000</c>, <c>localhost</c>).</summary>
    public string Registry { get; }

    /// <summary>The repository path inside the registry (<c>library/busybox</c>, <c>team/app</c>).</summary>
    public string Repository { get; }

    /// <summary>The tag, or null when the reference names a digest only.</summary>
    public string? Tag { get; }

    /// <summary>The manifest digest (<c>sha256:…</c>), or null.</summary>
    public string? Digest { get; }

    /// <summary>What to ask the registry's manifest endpoint for: the digest when there is one (it pins the content),
    /// else the tag.</summary>
    public string ManifestReference => Digest ?? Tag ?? DefaultTag;

    /// <summary>The host the distribution API is served on: Docker Hub's API lives on <c>registry-1.docker.io</c>,
    /// not on the name users write.</summary>
    public string ApiHost => Registry == DockerHub ? "registry-1.docker.io" : Registry;

    /// <summary>Whether the registry is this machine (<c>localhost</c>, 127.0.0.0/8, <c>[::1]</c>): such registries
    /// are spoken to in plain HTTP, as Docker treats them as insecure registries by default.</summary>
    public bool IsLoopback
    {
        get
        {
            string host = HostWithoutPort(Registry);
            return host == "localhost" || host == "::1" || host.StartsWith("127.", StringComparison.Ordinal);
        }
    }

    /// <summary>Reads <paramref name="text"/>; <see cref="FormatException"/> with the reason if it is not a
    /// reference.</summary>
    public static ImageReference Parse(string text)
    {
        if (TryParse(text, out var reference, out string? error))
        {
            return reference;
        }
        throw new FormatException(error);
    }

    /// <summary>Reads <paramref name="text"/> without throwing; <paramref name="error"/> says why it is not one.</summary>
    public static bool TryParse(string text, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out ImageReference? reference, out string? error)
    {
        reference = null;
        error = null;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "an image reference is empty";
            return false;
        }
        string rest = text.Trim();
        string? digest = null;
        int at = rest.IndexOf('@');
        if (at >= 0)
        {
            digest = rest[(at + 1)..];
            rest = rest[..at];
            bool registered = digest.StartsWith("sha256:", StringComparison.Ordinal) || digest.StartsWith("sha512:", StringComparison.Ordinal);
            if (!(registered ? RegisteredDigestPattern() : DigestPattern()).IsMatch(digest))
            {
                error = $"'{digest}' in '{text}' is not a digest (ALGORITHM:HEX, e.g. sha256: and 64 hexadecimal digits)";
                return false;
            }
        }
        string? tag = null;
        int lastSlash = rest.LastIndexOf('/');
        int colon = rest.LastIndexOf(':');
        if (colon > lastSlash)
        {
            tag = rest[(colon + 1)..];
            rest = rest[..colon];
            if (!TagPattern().IsMatch(tag))
            {
                error = $"'{tag}' in '{text}' is not a tag (up to 128 of letters, digits, '_', '.', '-', not beginning with '.' or '-')";
                return false;
            }
        }
        string registry = DockerHub;
        string repository = rest;
        int firstSlash = rest.IndexOf('/');
        if (firstSlash > 0)
        {
            string first = rest[..firstSlash];
            if (first.Contains('.') || first.Contains(':') || first == "localhost")
            {
                registry = first;
                repository = rest[(firstSlash + 1)..];
            }
        }
        if (!DomainPattern().IsMatch(registry))
        {
            error = $"'{registry}' in '{text}' is not a registry host (HOST or HOST:PORT, the port in digits)";
            return false;
        }
        if (registry == "index.docker.io" || registry == "registry-1.docker.io")
        {
            registry = DockerHub;
        }
        if (registry == DockerHub && !repository.Contains('/'))
        {
            repository = "library/" + repository;
        }
        if (!RepositoryPattern().IsMatch(repository))
        {
            error = $"'{repository}' in '{text}' is not a repository name (lower-case letters, digits and separators '.', '_', '__', '-', in components separated by '/')";
            return false;
        }
        if (tag is null && digest is null)
        {
            tag = DefaultTag;
        }
        reference = new ImageReference(registry, repository, tag, digest);
        return true;
    }

    /// <summary>The same repository with another tag (no digest).</summary>
    public ImageReference WithTag(string tag) => new(Registry, Repository, tag, null);

    /// <summary>The same repository pinned to <paramref name="digest"/> (no tag).</summary>
    public ImageReference WithDigest(string digest) => new(Registry, Repository, null, digest);

    /// <summary>The fully qualified form (<c>docker.io/library/busybox:latest</c>), which parses back to this
    /// reference.</summary>
    public override string ToString() =>
        $"{Registry}/{Repository}{(Tag is null ? "" : ":" + Tag)}{(Digest is null ? "" : "@" + Digest)}";

    private static string HostWithoutPort(string registry)
    {
        if (registry.StartsWith('['))
        {
            int close = registry.IndexOf(']');
            return close > 0 ? registry[1..close] : registry;
        }
        int colon = registry.IndexOf(':');
        return colon >= 0 ? registry[..colon] : registry;
    }

    // distribution/reference's grammar: path components of lower-case alphanumerics joined by separators.
    [GeneratedRegex(@"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")]
    private static partial Regex RepositoryPattern();

    [GeneratedRegex(@"^[\w][\w.-]{0,127}$")]
    private static partial Regex TagPattern();

    // image-spec descriptor.md "Digests": algorithm ":" encoded; sha256's encoding is 64 lower-case hex digits.
    // sha256 and sha512 are image-spec's registered algorithms, with fixed lengths; others are only shaped.
    [GeneratedRegex(@"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")]
    private static partial Regex RegisteredDigestPattern();

    [GeneratedRegex(@"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")]
    private static partial Regex DigestPattern();

    // distribution/reference's domain: DNS labels joined by dots (or a bracketed IPv6 address), an optional numeric port.
    [GeneratedRegex(@"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")]
    private static partial Regex DomainPattern();
}
