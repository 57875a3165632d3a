using System.Text.Json.Serialization;
using Nestor.Containers.Images;

namespace Nestor.Containers.Registry;

/// <summary>The manifest media types of the distribution API beyond <see cref="OciMediaTypes"/>: Docker's
/// deprecated schema 1, and what a manifest request accepts.</summary>
public static class RegistryMediaTypes
{
    /// <summary>Docker's signed schema 1 (and its unsigned form): deprecated, carries no config blob, not pulled.</summary>
    public const string DockerSchema1 = "application/vnd.docker.distribution.manifest.v1+json";
    public const string DockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// <summary>The Accept header of a manifest request: the four forms Nestor can read, so that a registry that
    /// holds several answers with one of them and never converts to schema 1.</summary>
    public static readonly string[] Accepted =
        [OciMediaTypes.Manifest, OciMediaTypes.Index, OciMediaTypes.DockerManifest, OciMediaTypes.DockerManifestList];
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

/// <summary>Source-generated JSON for the registry client (NativeAOT has no reflection-based serializer).</summary>
[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = false)]
[JsonSerializable(typeof(TokenResponse))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(AuthFile))]
internal sealed partial class RegistryJson : JsonSerializerContext;
