namespace Nestor.Containers.Images;

/// <summary>An image reference parsed as Docker parses one (distribution/reference's normalization): a name without a
/// registry is on <c>docker.io</c>, a one-component name on Docker Hub is under <c>library/</c>, a missing tag is
/// <c>latest</c>. The first component is a registry when it contains a dot or a colon or is <c>localhost</c>.
/// <c>busybox</c> is <c>docker.io/library/busybox:latest</c>, shown as <c>busybox:latest</c>.</summary>
public sealed record ImageReference(string Registry, string Repository, string? Tag, string? Digest)
{
    /// <summary>Docker Hub's registry name in normalized references.</summary>
    public const string DockerHub = "docker.io";

    /// <summary>Parses a reference; <see cref="ImageStoreException"/> for a malformed one.</summary>
    public static ImageReference Parse(string reference)
    {
        if (TryParse(reference, out var parsed, out string? error))
        {
            return parsed;
        }
        throw new ImageStoreException($"invalid image reference '{reference}': {error}");
    }

    /// <summary>Parses a reference, or says why it is malformed.</summary>
    public static bool TryParse(string reference, out ImageReference parsed, out string? error)
    {
        parsed = null!;
        error = null;
        if (string.IsNullOrEmpty(reference))
        {
            error = "it is empty";
            return false;
        }
        string rest = reference;
        string? digest = null;
        int at = rest.IndexOf('@');
        if (at >= 0)
        {
            digest = rest[(at + 1)..];
            rest = rest[..at];
            if (!Images.Digest.IsValid(digest))
            {
                error = $"'{digest}' is not a sha256 digest";
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
            if (tag.Length is 0 or > 128 || !IsTagCharacter(tag[0], first: true) || tag.Any(c => !IsTagCharacter(c, first: false)))
            {
                error = $"'{tag}' is not a valid tag (letters, digits, _ . -, at most 128, not starting with . or -)";
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
        if (registry is "index.docker.io")
        {
            registry = DockerHub;
        }
        if (repository.Length == 0 || repository.Split('/').Any(component => !IsPathComponent(component)))
        {
            error = $"'{repository}' is not a valid repository name (lower-case letters, digits and separators . _ __ - between them, components joined by /)";
            return false;
        }
        if (registry == DockerHub && !repository.Contains('/'))
        {
            repository = "library/" + repository;
        }
        if (tag is null && digest is null)
        {
            tag = "latest";
        }
        parsed = new ImageReference(registry, repository, tag, digest);
        return true;
    }

    private static bool IsTagCharacter(char c, bool first) =>
        char.IsAsciiLetterOrDigit(c) || c == '_' || (!first && c is '.' or '-');

    private static bool IsPathComponent(string component)
    {
        if (component.Length == 0 || !IsLowerAlphanumeric(component[0]) || !IsLowerAlphanumeric(component[^1]))
        {
            return false;
        }
        return component.All(c => IsLowerAlphanumeric(c) || c is '.' or '_' or '-');
    }

    private static bool IsLowerAlphanumeric(char c) => char.IsAsciiDigit(c) || char.IsAsciiLetterLower(c);

    /// <summary>Registry and repository: <c>docker.io/library/busybox</c>.</summary>
    public string Name => $"{Registry}/{Repository}";

    /// <summary>The full normalized reference: <c>docker.io/library/busybox:latest</c> (and <c>@sha256:…</c>). This is
    /// the ref name the store's <c>index.json</c> carries.</summary>
    public override string ToString() => Name + (Tag is null ? "" : ":" + Tag) + (Digest is null ? "" : "@" + Digest);

    /// <summary>The short form Docker shows: <c>busybox:latest</c>, <c>user/app:1</c>, <c>localhost:5000/x/y:tag</c>.</summary>
    public string FamiliarName => FamiliarRepository + (Tag is null ? "" : ":" + Tag) + (Digest is null ? "" : "@" + Digest);

    /// <summary>The repository as Docker shows it: <c>busybox</c> for <c>docker.io/library/busybox</c>.</summary>
    public string FamiliarRepository => Registry != DockerHub ? Name
        : Repository.StartsWith("library/", StringComparison.Ordinal) && Repository.IndexOf('/', 8) < 0 ? Repository[8..]
        : Repository;
}
