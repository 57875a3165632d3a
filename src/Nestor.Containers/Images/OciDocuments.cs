using System.Text.Json;
using System.Text.Json.Serialization;

namespace Nestor.Containers.Images;

// The JSON documents of the OCI image specification (image-spec 1.1: descriptor.md, image-layout.md,
// image-index.md, manifest.md, config.md) and of docker-archive tarballs (docker save's manifest.json). Names are
// spelled as the specifications spell them (camelCase in manifests, snake_case in the config's rootfs and history,
// PascalCase in the config's "config"), so every property carries its JSON name. Blobs are kept byte for byte as
// they were written: these models are for reading them and for writing new ones, never for rewriting a stored one
// (that would change its digest).

/// <summary>A content descriptor (image-spec descriptor.md).</summary>
public sealed class OciDescriptor
{
    [JsonPropertyName("mediaType")] public string MediaType { get; set; } = "";
    [JsonPropertyName("digest")] public string Digest { get; set; } = "";
    [JsonPropertyName("size")] public long Size { get; set; }
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
    [JsonPropertyName("platform")] public OciPlatform? Platform { get; set; }
}

/// <summary>A platform in an index entry (image-spec image-index.md).</summary>
public sealed class OciPlatform
{
    [JsonPropertyName("architecture")] public string Architecture { get; set; } = "";
    [JsonPropertyName("os")] public string Os { get; set; } = "";
    [JsonPropertyName("variant")] public string? Variant { get; set; }
}

/// <summary>The <c>oci-layout</c> file of a layout (image-spec image-layout.md).</summary>
public sealed class OciLayoutFile
{
    [JsonPropertyName("imageLayoutVersion")] public string ImageLayoutVersion { get; set; } = "1.0.0";
}

/// <summary>An image index, also <c>index.json</c> (image-spec image-index.md).</summary>
public sealed class OciIndex
{
    [JsonPropertyName("schemaVersion")] public int SchemaVersion { get; set; } = 2;
    [JsonPropertyName("mediaType")] public string? MediaType { get; set; } = OciMediaTypes.Index;
    [JsonPropertyName("manifests")] public List<OciDescriptor> Manifests { get; set; } = [];
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
}

/// <summary>An image manifest (image-spec manifest.md).</summary>
public sealed class OciManifest
{
    [JsonPropertyName("schemaVersion")] public int SchemaVersion { get; set; } = 2;
    [JsonPropertyName("mediaType")] public string? MediaType { get; set; } = OciMediaTypes.Manifest;
    [JsonPropertyName("config")] public OciDescriptor Config { get; set; } = new();
    [JsonPropertyName("layers")] public List<OciDescriptor> Layers { get; set; } = [];
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
}

/// <summary>An image configuration (image-spec config.md).</summary>
public sealed class OciImageConfiguration
{
    [JsonPropertyName("created")] public DateTimeOffset? Created { get; set; }
    [JsonPropertyName("author")] public string? Author { get; set; }
    [JsonPropertyName("architecture")] public string Architecture { get; set; } = "amd64";
    [JsonPropertyName("os")] public string Os { get; set; } = "linux";
    [JsonPropertyName("config")] public ImageConfig? Config { get; set; }
    [JsonPropertyName("rootfs")] public OciRootFileSystem RootFileSystem { get; set; } = new();
    [JsonPropertyName("history")] public List<OciHistory>? History { get; set; }
}

/// <summary>The config's <c>rootfs</c>: the layers' diff ids, bottom first.</summary>
public sealed class OciRootFileSystem
{
    [JsonPropertyName("type")] public string Type { get; set; } = "layers";
    [JsonPropertyName("diff_ids")] public List<string> DiffIds { get; set; } = [];
}

/// <summary>One entry of the config's <c>history</c>.</summary>
public sealed class OciHistory
{
    [JsonPropertyName("created")] public DateTimeOffset? Created { get; set; }
    [JsonPropertyName("created_by")] public string? CreatedBy { get; set; }
    [JsonPropertyName("author")] public string? Author { get; set; }
    [JsonPropertyName("comment")] public string? Comment { get; set; }
    [JsonPropertyName("empty_layer")] public bool? EmptyLayer { get; set; }
}

/// <summary>One image of a docker-archive's <c>manifest.json</c> (docker save).</summary>
public sealed class DockerArchiveManifestEntry
{
    [JsonPropertyName("Config")] public string Config { get; set; } = "";
    [JsonPropertyName("RepoTags")] public List<string>? RepoTags { get; set; }
    [JsonPropertyName("Layers")] public List<string> Layers { get; set; } = [];
}

/// <summary>Source-generated JSON for the image documents (NativeAOT has no reflection-based serializer). The
/// config's free-form maps (<c>ExposedPorts</c>, <c>Volumes</c>) hold <see cref="JsonElement"/> values when read.</summary>
[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    AllowTrailingCommas = true, ReadCommentHandling = JsonCommentHandling.Skip)]
[JsonSerializable(typeof(OciLayoutFile))]
[JsonSerializable(typeof(OciIndex))]
[JsonSerializable(typeof(OciManifest))]
[JsonSerializable(typeof(OciImageConfiguration))]
[JsonSerializable(typeof(ImageConfig))]
[JsonSerializable(typeof(List<DockerArchiveManifestEntry>))]
[JsonSerializable(typeof(Dictionary<string, Dictionary<string, string>>))]
[JsonSerializable(typeof(JsonElement))]
[JsonSerializable(typeof(Dictionary<string, object>))]
[JsonSerializable(typeof(object))]
public sealed partial class OciJson : JsonSerializerContext
{
    /// <summary>The context Nestor writes with: like <see cref="Default"/>, but without escaping <c>+</c> and other
    /// HTML-sensitive characters (media types are <c>…v1+json</c>; the specifications' examples and other tools write
    /// them plainly). Only JSON strings are affected, never the documents' meaning.</summary>
    public static OciJson Writer { get; } = new(new JsonSerializerOptions
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    });
}
