using System.Text.Json;
using System.Text.Json.Serialization;

namespace Nestor.Containers.Registry;

/// <summary>The media types the distribution API exchanges (image-spec media-types.md; Docker's Image Manifest V2,
/// Schema 2).</summary>
public static class RegistryMediaTypes
{
    public const string OciManifest = "application/vnd.oci.image.manifest.v1+json";
    public const string OciIndex = "application/vnd.oci.image.index.v1+json";
    public const string DockerManifest = "application/vnd.docker.distribution.manifest.v2+json";
    public const string DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json";

    /// <summary>Docker's signed schema 1 (and its unsigned form): deprecated, carries no config blob, not pulled.</summary>
    public const string DockerSchema1 = "application/vnd.docker.distribution.manifest.v1+json";
    public const string DockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// <summary>The Accept header of a manifest request: the four forms Nestor can read, so that a registry that
    /// holds several answers with one of them and never converts to schema 1.</summary>
    public static readonly string[] Accepted = [OciManifest, OciIndex, DockerManifest, DockerManifestList];

    /// <summary>Whether <paramref name="mediaType"/> lists other manifests (an OCI index or a Docker manifest list).</summary>
    public static bool IsIndex(string? mediaType) => mediaType is OciIndex or DockerManifestList;

    /// <summary>Whether <paramref name="mediaType"/> is a single image's manifest.</summary>
    public static bool IsManifest(string? mediaType) => mediaType is OciManifest or DockerManifest;
}

/// <summary>A content descriptor (image-spec descriptor.md): what a manifest says of a blob or another manifest.</summary>
public sealed class ContentDescriptor
{
    [JsonPropertyName("mediaType")] public string? MediaType { get; set; }
    [JsonPropertyName("digest")] public string Digest { get; set; } = "";
    [JsonPropertyName("size")] public long Size { get; set; }
    [JsonPropertyName("platform")] public ContentPlatform? Platform { get; set; }
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
    [JsonPropertyName("urls")] public List<string>? Urls { get; set; }
}

/// <summary>The platform an index entry is for (image-spec image-index.md, "platform").</summary>
public sealed class ContentPlatform
{
    [JsonPropertyName("architecture")] public string Architecture { get; set; } = "";
    [JsonPropertyName("os")] public string OperatingSystem { get; set; } = "";
    [JsonPropertyName("variant")] public string? Variant { get; set; }
}

/// <summary>A manifest or an index, read leniently into one shape: a manifest has <see cref="Config"/> and
/// <see cref="Layers"/>, an index <see cref="Manifests"/>. The registry client keeps the original bytes (their digest
/// is the manifest's identity) and only reads this.</summary>
public sealed class ManifestDocument
{
    [JsonPropertyName("schemaVersion")] public int SchemaVersion { get; set; }
    [JsonPropertyName("mediaType")] public string? MediaType { get; set; }
    [JsonPropertyName("config")] public ContentDescriptor? Config { get; set; }
    [JsonPropertyName("layers")] public List<ContentDescriptor>? Layers { get; set; }
    [JsonPropertyName("manifests")] public List<ContentDescriptor>? Manifests { get; set; }
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }

    /// <summary>Reads <paramref name="bytes"/>; a <see cref="RegistryException"/> if they are not JSON.</summary>
    public static ManifestDocument Read(ReadOnlySpan<byte> bytes)
    {
        try
        {
            return JsonSerializer.Deserialize(bytes, RegistryJson.Default.ManifestDocument)
                ?? throw new JsonException("null document");
        }
        catch (JsonException e)
        {
            throw new RegistryException(RegistryFailure.Protocol, $"a manifest is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>The blobs an image manifest refers to: its config first, then its layers (bottom first).</summary>
    public IEnumerable<ContentDescriptor> Blobs()
    {
        if (Config is not null)
        {
            yield return Config;
        }
        foreach (var layer in Layers ?? [])
        {
            yield return layer;
        }
    }
}

/// <summary>A token endpoint's answer (Docker's token authentication specification: <c>token</c>, or OAuth's
/// <c>access_token</c>).</summary>
internal sealed class TokenResponse
{
    [JsonPropertyName("token")] public string? Token { get; set; }
    [JsonPropertyName("access_token")] public string? AccessToken { get; set; }
    [JsonPropertyName("expires_in")] public int? ExpiresIn { get; set; }
}

/// <summary>A distribution-spec error body: <c>{"errors":[{"code":…,"message":…}]}</c>.</summary>
internal sealed class ErrorResponse
{
    [JsonPropertyName("errors")] public List<ErrorEntry>? Errors { get; set; }
}

internal sealed class ErrorEntry
{
    [JsonPropertyName("code")] public string? Code { get; set; }
    [JsonPropertyName("message")] public string? Message { get; set; }
}

/// <summary>containers-auth.json(5) and Docker's config.json: <c>{"auths":{"HOST":{"auth":"base64(user:password)"}}}</c>.</summary>
internal sealed class AuthFile
{
    [JsonPropertyName("auths")] public Dictionary<string, AuthEntry>? Auths { get; set; }
}

internal sealed class AuthEntry
{
    [JsonPropertyName("auth")] public string? Auth { get; set; }
}

/// <summary>The OCI image layout's <c>index.json</c> and <c>oci-layout</c> (image-spec image-layout.md).</summary>
internal sealed class LayoutIndex
{
    [JsonPropertyName("schemaVersion")] public int SchemaVersion { get; set; } = 2;
    [JsonPropertyName("mediaType")] public string? MediaType { get; set; } = RegistryMediaTypes.OciIndex;
    [JsonPropertyName("manifests")] public List<ContentDescriptor> Manifests { get; set; } = [];
}

internal sealed class LayoutMarker
{
    [JsonPropertyName("imageLayoutVersion")] public string ImageLayoutVersion { get; set; } = "1.0.0";
}

/// <summary>Source-generated JSON for the registry client (NativeAOT has no reflection-based serializer).</summary>
[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = false)]
[JsonSerializable(typeof(ManifestDocument))]
[JsonSerializable(typeof(TokenResponse))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(AuthFile))]
[JsonSerializable(typeof(LayoutIndex))]
[JsonSerializable(typeof(LayoutMarker))]
internal sealed partial class RegistryJson : JsonSerializerContext;
