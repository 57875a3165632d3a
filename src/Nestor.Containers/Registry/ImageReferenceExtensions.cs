using Nestor.Containers.Images;

namespace Nestor.Containers.Registry;

/// <summary>What the distribution API needs of an <see cref="ImageReference"/> (the image store's Docker-style
/// reference) beyond its parts.</summary>
public static class ImageReferenceExtensions
{
    extension(ImageReference reference)
    {
        /// <summary>What to ask the manifest endpoint for: the digest when there is one (it pins the content), else
        /// the tag.</summary>
        public string ManifestReference => reference.Digest ?? reference.Tag ?? "latest";

        /// <summary>The host the API is served on: Docker Hub's API lives on <c>registry-1.docker.io</c>, not on the
        /// name references use.</summary>
        public string ApiHost => ApiHostOf(reference.Registry);

        /// <summary>Whether the registry is this machine (<c>localhost</c>, 127.0.0.0/8, <c>[::1]</c>): Docker treats
        /// those as insecure registries, so they are spoken to in plain HTTP first.</summary>
        public bool IsLoopback => IsLoopbackRegistry(reference.Registry);

        /// <summary>The same repository with <paramref name="tag"/> and no digest.</summary>
        public ImageReference WithTag(string tag) => reference with { Tag = tag, Digest = null };

        /// <summary>The same repository pinned to <paramref name="digest"/>, without a tag.</summary>
        public ImageReference WithDigest(string digest) => reference with { Tag = null, Digest = digest };
    }

    /// <summary>The API host of a registry as references write it.</summary>
    public static string ApiHostOf(string registry) => registry == ImageReference.DockerHub ? "registry-1.docker.io" : registry;

    /// <summary>Whether a registry (host[:port]) is a loopback address or <c>localhost</c>.</summary>
    public static bool IsLoopbackRegistry(string registry)
    {
        string host = registry;
        if (host.StartsWith('['))
        {
            int close = host.IndexOf(']');
            host = close > 0 ? host[1..close] : host;
        }
        else if (host.IndexOf(':') is var colon and >= 0)
        {
            host = host[..colon];
        }
        return host == "localhost" || (System.Net.IPAddress.TryParse(host, out var address) && System.Net.IPAddress.IsLoopback(address));
    }
}
