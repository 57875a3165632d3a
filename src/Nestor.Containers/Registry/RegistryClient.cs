using System.Net;
using System.Net.Http.Headers;
using System.Net.Security;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Nestor.Containers.Images;

namespace Nestor.Containers.Registry;

/// <summary>How a <see cref="RegistryClient"/> connects and authenticates.</summary>
public sealed class RegistryClientOptions
{
    /// <summary>Whether to require HTTPS with a trusted certificate (<c>--tls-verify</c>). When false, HTTPS is tried
    /// without checking the certificate and plain HTTP after it, as Podman does. Loopback registries are always
    /// spoken to in plain HTTP first.</summary>
    public bool TlsVerify { get; init; } = true;

    /// <summary>Where credentials are looked up when the registry asks for them.</summary>
    public RegistryCredentialStore? Credentials { get; init; }

    /// <summary>A credential that overrides <see cref="Credentials"/>.</summary>
    public RegistryCredential? Credential { get; init; }

    /// <summary>Blobs larger than this are uploaded in chunks of this size (POST, PATCH…, PUT); smaller ones in one
    /// PUT (distribution-spec "Pushing a blob monolithically" / "in chunks").</summary>
    public long ChunkSize { get; init; } = 16 * 1024 * 1024;

    /// <summary>How long one request may take before it is abandoned.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>Sees every request as it is sent (tests count the upload's PATCHes with it).</summary>
    internal Action<HttpRequestMessage>? RequestObserver { get; init; }
}

/// <summary>A manifest as the registry served it: its exact bytes (whose digest is its identity), media type and
/// digest.</summary>
public sealed record RegistryManifest(byte[] Bytes, string MediaType, string Digest)
{
    /// <summary>The bytes read as an image manifest.</summary>
    public OciManifest ReadManifest() => Read(Bytes, OciJson.Default.OciManifest);

    /// <summary>The bytes read as an index (or Docker manifest list).</summary>
    public OciIndex ReadIndex() => Read(Bytes, OciJson.Default.OciIndex);

    /// <summary>Reads <paramref name="bytes"/> as <typeparamref name="T"/>; a <see cref="RegistryException"/> if they
    /// are not that JSON.</summary>
    internal static T Read<T>(byte[] bytes, JsonTypeInfo<T> type)
    {
        try
        {
            return JsonSerializer.Deserialize(bytes, type) ?? throw new JsonException("the document is null");
        }
        catch (JsonException e)
        {
            throw new RegistryException(RegistryFailure.Protocol, $"a manifest is not valid JSON of its kind: {e.Message}", e);
        }
    }

    /// <summary>The media type a manifest says of itself (its <c>mediaType</c> field, or its shape: <c>manifests</c>
    /// for an index, schemaVersion 1 for Docker's schema 1), for registries that serve it as plain JSON.</summary>
    internal static string MediaTypeOf(byte[] bytes)
    {
        try
        {
            using var document = JsonDocument.Parse(bytes);
            var root = document.RootElement;
            if (root.TryGetProperty("mediaType", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() is { Length: > 0 } named)
            {
                return named;
            }
            if (root.TryGetProperty("manifests", out _))
            {
                return OciMediaTypes.Index;
            }
            return root.TryGetProperty("schemaVersion", out var version) && version.ValueKind == JsonValueKind.Number && version.GetInt32() == 1
                ? RegistryMediaTypes.DockerSchema1 : OciMediaTypes.Manifest;
        }
        catch (JsonException e)
        {
            throw new RegistryException(RegistryFailure.Protocol, $"a manifest is not valid JSON: {e.Message}", e);
        }
    }
}

/// <summary>A client of one registry's OCI distribution API (opencontainers/distribution-spec spec.md, which
/// standardises Docker's Registry HTTP API V2): the <c>/v2/</c> ping, Bearer token (Docker's token authentication:
/// realm, service, scope) and Basic authentication, manifest and blob GET/HEAD/PUT, blob uploads (monolithic and
/// chunked) and cross-repository mounts.</summary>
public sealed class RegistryClient : IDisposable
{
    private readonly string registry;
    private readonly RegistryClientOptions options;
    private readonly HttpClient http;
    private readonly Dictionary<string, string> bearerTokens = [];
    private RegistryCredential? credential;
    private bool credentialLookedUp;
    private Uri? baseUri;
    private string? challengeScheme;
    private Dictionary<string, string>? challengeParameters;

    /// <summary>A client of <paramref name="registry"/> (host[:port], as in a reference; <c>docker.io</c> is
    /// spoken to at <c>registry-1.docker.io</c>).</summary>
    public RegistryClient(string registry, RegistryClientOptions? options = null)
    {
        this.registry = registry;
        this.options = options ?? new RegistryClientOptions();
        var handler = new SocketsHttpHandler { AllowAutoRedirect = true, ConnectTimeout = TimeSpan.FromSeconds(30) };
        if (!this.options.TlsVerify)
        {
            handler.SslOptions = new SslClientAuthenticationOptions { RemoteCertificateValidationCallback = (_, _, _, _) => true };
        }
        http = new HttpClient(handler) { Timeout = this.options.Timeout };
        http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("nestor", "1.0"));
    }

    /// <summary>The registry as written in references.</summary>
    public string Registry => registry;

    /// <summary>The base URI the API answered on (known after the first request).</summary>
    public Uri? BaseUri => baseUri;

    /// <summary>The authentication scheme the registry asked for at <c>/v2/</c> (<c>Bearer</c>, <c>Basic</c>), or
    /// null when it needs none.</summary>
    public string? ChallengeScheme => challengeScheme;

    /// <summary>Checks that the registry speaks the distribution API (<c>GET /v2/</c>: 200, or 401 with a challenge)
    /// and finds which scheme does.</summary>
    public async Task PingAsync(CancellationToken cancellation = default)
    {
        if (baseUri is not null)
        {
            return;
        }
        string host = ImageReferenceExtensions.ApiHostOf(registry);
        bool loopback = ImageReferenceExtensions.IsLoopbackRegistry(registry);
        string[] schemes = loopback ? ["http", "https"] : options.TlsVerify ? ["https"] : ["https", "http"];
        RegistryException? first = null;
        bool explicitPort = host.LastIndexOf(':') > host.LastIndexOf(']');
        foreach (string scheme in schemes)
        {
            var candidate = new Uri($"{scheme}://{host}/");
            try
            {
                using var response = await SendRawAsync(new HttpRequestMessage(HttpMethod.Get, new Uri(candidate, "v2/")), cancellation);
                if (response.StatusCode == HttpStatusCode.Unauthorized)
                {
                    ReadChallenge(response);
                }
                else if (!response.IsSuccessStatusCode)
                {
                    throw new RegistryException(RegistryFailure.Protocol,
                        $"{registry} answered GET /v2/ with {(int)response.StatusCode} {response.ReasonPhrase}: it is not an OCI distribution (Docker Registry V2) API");
                }
                baseUri = candidate;
                return;
            }
            catch (RegistryException e) when (scheme != schemes[^1] && FallBack(e.Failure, explicitPort))
            {
                first ??= e;
            }
            catch (RegistryException e) when (first is not null && e.Failure == RegistryFailure.ConnectionRefused && first.Failure != RegistryFailure.ConnectionRefused)
            {
                // When both schemes fail, the later failure says more (a TLS server's untrusted certificate after its
                // 400 to plain HTTP), unless it is only a refused connection after a real answer.
                throw first;
            }
        }
        throw first ?? new RegistryException(RegistryFailure.ConnectionRefused, $"cannot reach {registry}");
    }

    /// <summary>Checks the client's credential against the registry as <c>docker login</c> does: <c>GET /v2/</c>
    /// answering the challenge (Basic, or a Bearer token without a repository scope). Returns the scheme the registry
    /// asked for, or null when it needs no authentication; <see cref="RegistryFailure.Unauthorized"/> if it refuses
    /// the credential.</summary>
    public async Task<string?> LoginAsync(CancellationToken cancellation = default)
    {
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Get, Api("")), "", cancellation);
        await EnsureSuccessAsync(response, "GET /v2/", cancellation);
        return challengeScheme;
    }

    /// <summary>Whether a failed ping in one scheme is tried in the other: a TLS failure, or an HTTP answer that is
    /// not the API's (a TLS server answering plain HTTP with 400), or a refused connection when the port was implied
    /// by the scheme (443 against 80). A refused explicit port is refused in both.</summary>
    private static bool FallBack(RegistryFailure failure, bool explicitPort) =>
        failure is RegistryFailure.Tls or RegistryFailure.Protocol || (failure == RegistryFailure.ConnectionRefused && !explicitPort);

    /// <summary>The manifest <paramref name="reference"/> (a tag or digest) of <paramref name="repository"/>,
    /// checked against the digest it was asked by and the one the registry reports.</summary>
    public async Task<RegistryManifest> GetManifestAsync(string repository, string reference, CancellationToken cancellation = default)
    {
        using var response = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Get, Api($"{repository}/manifests/{reference}"));
            foreach (string type in RegistryMediaTypes.Accepted)
            {
                request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(type));
            }
            return request;
        }, PullScope(repository), cancellation);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            throw new RegistryException(RegistryFailure.ManifestUnknown,
                $"no such image or tag in {registry}: {repository}{(reference.Contains(':') ? "@" : ":")}{reference} (check the repository and the tag; a private image may also answer so to a user without access)");
        }
        await EnsureSuccessAsync(response, $"GET manifest {repository}:{reference}", cancellation);
        byte[] bytes = await response.Content.ReadAsByteArrayAsync(cancellation);
        string digest = Images.Digest.Of(bytes);
        if (reference.Contains(':') && reference != digest)
        {
            throw new RegistryException(RegistryFailure.DigestMismatch,
                $"the manifest {registry} served for {repository}@{reference} has digest {digest}: the registry or something between is corrupting content");
        }
        if (response.Headers.TryGetValues("Docker-Content-Digest", out var reported)
            && reported.FirstOrDefault() is { } header && header.StartsWith("sha256:", StringComparison.Ordinal) && header != digest)
        {
            throw new RegistryException(RegistryFailure.DigestMismatch,
                $"{registry} says the manifest {repository}:{reference} is {header} but its bytes hash to {digest}");
        }
        string? mediaType = response.Content.Headers.ContentType?.MediaType;
        if (mediaType is null or "application/json" or "text/plain" or "application/octet-stream")
        {
            mediaType = RegistryManifest.MediaTypeOf(bytes);
        }
        return new RegistryManifest(bytes, mediaType, digest);
    }

    /// <summary>Whether <paramref name="repository"/> holds the blob <paramref name="digest"/> (<c>HEAD</c>).</summary>
    public async Task<bool> BlobExistsAsync(string repository, string digest, CancellationToken cancellation = default)
    {
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Head, Api($"{repository}/blobs/{digest}")),
            PullScope(repository), cancellation);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            return false;
        }
        await EnsureSuccessAsync(response, $"HEAD blob {digest}", cancellation);
        return true;
    }

    /// <summary>Copies the blob <paramref name="blob"/> of <paramref name="repository"/> to
    /// <paramref name="destination"/>, hashing while it streams; a <see cref="RegistryFailure.DigestMismatch"/> if
    /// the bytes are not the descriptor's (the caller then discards what was written).</summary>
    public async Task DownloadBlobAsync(string repository, OciDescriptor blob, Stream destination,
        Action<long>? progress = null, CancellationToken cancellation = default)
    {
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Get, Api($"{repository}/blobs/{blob.Digest}")),
            PullScope(repository), cancellation, HttpCompletionOption.ResponseHeadersRead);
        if (response.StatusCode == HttpStatusCode.NotFound)
        {
            throw new RegistryException(RegistryFailure.Protocol,
                $"{registry} has no blob {blob.Digest} that the manifest of {repository} refers to (the registry is missing content)");
        }
        await EnsureSuccessAsync(response, $"GET blob {blob.Digest}", cancellation);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        await using var source = await response.Content.ReadAsStreamAsync(cancellation);
        byte[] buffer = new byte[128 * 1024];
        long total = 0;
        int read;
        while ((read = await source.ReadAsync(buffer, cancellation)) > 0)
        {
            hash.AppendData(buffer, 0, read);
            await destination.WriteAsync(buffer.AsMemory(0, read), cancellation);
            total += read;
            if (blob.Size > 0 && total > blob.Size)
            {
                throw new RegistryException(RegistryFailure.DigestMismatch,
                    $"the blob {blob.Digest} from {registry} is longer than the {blob.Size} bytes its manifest says");
            }
            progress?.Invoke(total);
        }
        string digest = "sha256:" + Convert.ToHexStringLower(hash.GetHashAndReset());
        if (digest != blob.Digest || (blob.Size > 0 && total != blob.Size))
        {
            throw new RegistryException(RegistryFailure.DigestMismatch,
                $"the blob {registry}/{repository}@{blob.Digest} arrived as {total} bytes hashing to {digest} (expected {blob.Size} bytes): digest mismatch, nothing kept");
        }
    }

    /// <summary>Asks the registry to link <paramref name="digest"/> from <paramref name="fromRepository"/> into
    /// <paramref name="repository"/> without sending it (distribution-spec "Mounting a blob from another
    /// repository"). True when mounted (201); false when the registry declined (it then opened an upload, which is
    /// abandoned).</summary>
    public async Task<bool> TryMountBlobAsync(string repository, string digest, string fromRepository, CancellationToken cancellation = default)
    {
        string scope = $"repository:{repository}:pull,push repository:{fromRepository}:pull";
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Post,
            Api($"{repository}/blobs/uploads/?mount={Uri.EscapeDataString(digest)}&from={Uri.EscapeDataString(fromRepository)}")),
            scope, cancellation);
        if (response.StatusCode == HttpStatusCode.Created)
        {
            return true;
        }
        if (response.StatusCode == HttpStatusCode.Accepted && response.Headers.Location is { } location)
        {
            // The session the registry opened instead is cancelled so it does not linger until it expires.
            using var _ = await SendAsync(() => new HttpRequestMessage(HttpMethod.Delete, Resolve(location)), PushScope(repository), cancellation);
            return false;
        }
        if (response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Accepted)
        {
            return false;
        }
        await EnsureSuccessAsync(response, $"mount {digest} from {fromRepository}", cancellation);
        return false;
    }

    /// <summary>Uploads the blob <paramref name="blob"/> read from <paramref name="open"/> (opened again if the
    /// request must be repeated for authentication): in one PUT when it is at most
    /// <see cref="RegistryClientOptions.ChunkSize"/>, else in PATCH chunks with <c>Content-Range</c> and a closing
    /// <c>PUT ?digest=</c>.</summary>
    public async Task UploadBlobAsync(string repository, OciDescriptor blob, Func<Stream> open,
        Action<long>? progress = null, CancellationToken cancellation = default)
    {
        Uri location = await StartUploadAsync(repository, cancellation);
        if (blob.Size <= options.ChunkSize)
        {
            using var put = await SendAsync(() =>
            {
                var request = new HttpRequestMessage(HttpMethod.Put, WithDigest(location, blob.Digest))
                {
                    Content = new StreamContent(open()),
                };
                request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
                request.Content.Headers.ContentLength = blob.Size;
                return request;
            }, PushScope(repository), cancellation);
            await EnsureUploadedAsync(put, blob, cancellation);
            progress?.Invoke(blob.Size);
            return;
        }
        await using var stream = open();
        byte[] buffer = new byte[(int)Math.Min(options.ChunkSize, int.MaxValue / 2)];
        long offset = 0;
        while (offset < blob.Size)
        {
            int length = await stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellation);
            if (length == 0)
            {
                throw new RegistryException(RegistryFailure.Protocol, $"the local blob {blob.Digest} ended at {offset} of {blob.Size} bytes");
            }
            long start = offset;
            Uri chunkLocation = location;
            using var patch = await SendAsync(() =>
            {
                var request = new HttpRequestMessage(HttpMethod.Patch, chunkLocation)
                {
                    Content = new ByteArrayContent(buffer, 0, length),
                };
                request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
                // distribution-spec: Content-Range is "<start>-<end>", both inclusive, with no unit.
                request.Content.Headers.TryAddWithoutValidation("Content-Range", $"{start}-{start + length - 1}");
                return request;
            }, PushScope(repository), cancellation);
            if (patch.StatusCode != HttpStatusCode.Accepted)
            {
                await EnsureSuccessAsync(patch, $"PATCH chunk {start}-{start + length - 1} of {blob.Digest}", cancellation);
                throw new RegistryException(RegistryFailure.Protocol, $"{registry} answered a chunk of {blob.Digest} with {(int)patch.StatusCode} instead of 202");
            }
            location = patch.Headers.Location is { } next ? Resolve(next) : location;
            offset += length;
            progress?.Invoke(offset);
        }
        Uri closing = location;
        using var close = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Put, WithDigest(closing, blob.Digest)) { Content = new ByteArrayContent([]) };
            request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            return request;
        }, PushScope(repository), cancellation);
        await EnsureUploadedAsync(close, blob, cancellation);
    }

    /// <summary>Stores <paramref name="manifest"/> under <paramref name="reference"/> (a tag or its digest) with its
    /// media type as <c>Content-Type</c>; returns the digest the registry reports.</summary>
    public async Task<string> PutManifestAsync(string repository, string reference, byte[] manifest, string mediaType,
        CancellationToken cancellation = default)
    {
        using var response = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Put, Api($"{repository}/manifests/{reference}")) { Content = new ByteArrayContent(manifest) };
            request.Content.Headers.ContentType = new MediaTypeHeaderValue(mediaType);
            return request;
        }, PushScope(repository), cancellation);
        if (response.StatusCode != HttpStatusCode.Created)
        {
            await EnsureSuccessAsync(response, $"PUT manifest {repository}:{reference}", cancellation);
        }
        string digest = Images.Digest.Of(manifest);
        if (response.Headers.TryGetValues("Docker-Content-Digest", out var reported) && reported.FirstOrDefault() is { } header
            && header.StartsWith("sha256:", StringComparison.Ordinal) && header != digest)
        {
            throw new RegistryException(RegistryFailure.DigestMismatch,
                $"{registry} stored the manifest as {header} but it hashes to {digest}");
        }
        return digest;
    }

    public void Dispose() => http.Dispose();

    private async Task<Uri> StartUploadAsync(string repository, CancellationToken cancellation)
    {
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Post, Api($"{repository}/blobs/uploads/")),
            PushScope(repository), cancellation);
        if (response.StatusCode != HttpStatusCode.Accepted || response.Headers.Location is not { } location)
        {
            await EnsureSuccessAsync(response, $"start an upload to {repository}", cancellation);
            throw new RegistryException(RegistryFailure.Protocol,
                $"{registry} answered an upload request with {(int)response.StatusCode} and no Location");
        }
        return Resolve(location);
    }

    private async Task EnsureUploadedAsync(HttpResponseMessage response, OciDescriptor blob, CancellationToken cancellation)
    {
        if (response.StatusCode != HttpStatusCode.Created)
        {
            await EnsureSuccessAsync(response, $"upload of {blob.Digest}", cancellation);
        }
    }

    private Uri Api(string path) => new(baseUri!, "v2/" + path);

    private Uri Resolve(Uri location) => location.IsAbsoluteUri ? location : new Uri(baseUri!, location);

    private static Uri WithDigest(Uri location, string digest) =>
        new(location + (location.Query.Length > 0 ? "&" : "?") + "digest=" + Uri.EscapeDataString(digest));

    private static string PullScope(string repository) => $"repository:{repository}:pull";

    private static string PushScope(string repository) => $"repository:{repository}:pull,push";

    /// <summary>Sends a request made by <paramref name="create"/> with the authorization the registry asked for; on a
    /// 401 it answers the challenge (a Bearer token for <paramref name="scope"/> from the realm, or Basic
    /// credentials) and sends a new request once more.</summary>
    private async Task<HttpResponseMessage> SendAsync(Func<HttpRequestMessage> create, string scope, CancellationToken cancellation,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        await PingAsync(cancellation);
        var response = await SendRawAsync(Authorize(create(), scope), cancellation, completion);
        if (response.StatusCode == HttpStatusCode.Unauthorized)
        {
            ReadChallenge(response);
            response.Dispose();
            await AnswerChallengeAsync(scope, cancellation);
            response = await SendRawAsync(Authorize(create(), scope), cancellation, completion);
        }
        if (response.StatusCode == HttpStatusCode.Unauthorized)
        {
            string detail = await ErrorDetailAsync(response, cancellation);
            response.Dispose();
            throw new RegistryException(RegistryFailure.Unauthorized,
                $"{registry} refused the {(Credential() is null ? "anonymous request" : "credentials")} (401 unauthorized{detail}): log in to {registry} (credentials in $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json)");
        }
        if (response.StatusCode == HttpStatusCode.Forbidden)
        {
            string detail = await ErrorDetailAsync(response, cancellation);
            response.Dispose();
            throw new RegistryException(RegistryFailure.Denied,
                $"{registry} denied access to {scope} (403 forbidden{detail}): log in as a user allowed to do this");
        }
        return response;
    }

    private HttpRequestMessage Authorize(HttpRequestMessage request, string scope)
    {
        if (bearerTokens.TryGetValue(scope, out string? token))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }
        else if (string.Equals(challengeScheme, "Basic", StringComparison.OrdinalIgnoreCase) && Credential() is { } basic)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Basic", basic.BasicParameter);
        }
        return request;
    }

    private async Task AnswerChallengeAsync(string scope, CancellationToken cancellation)
    {
        if (string.Equals(challengeScheme, "Basic", StringComparison.OrdinalIgnoreCase))
        {
            if (Credential() is null)
            {
                throw new RegistryException(RegistryFailure.Unauthorized,
                    $"{registry} requires a user name and password (Basic authentication) and none is stored: log in to {registry} (credentials in $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json)");
            }
            return;
        }
        if (!string.Equals(challengeScheme, "Bearer", StringComparison.OrdinalIgnoreCase)
            || challengeParameters is null || !challengeParameters.TryGetValue("realm", out string? realm))
        {
            throw new RegistryException(RegistryFailure.Unauthorized,
                $"{registry} asks for authentication Nestor does not speak ({challengeScheme ?? "no WWW-Authenticate challenge"})");
        }
        // Docker's token authentication: GET realm?service=…&scope=… (one scope parameter per scope), Basic
        // credentials when there are any (an anonymous token otherwise).
        var query = new List<string>();
        if (challengeParameters.TryGetValue("service", out string? service))
        {
            query.Add("service=" + Uri.EscapeDataString(service));
        }
        foreach (string one in scope.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            query.Add("scope=" + Uri.EscapeDataString(one));
        }
        var tokenUri = new Uri(realm + (realm.Contains('?') ? "&" : "?") + string.Join('&', query));
        using var request = new HttpRequestMessage(HttpMethod.Get, tokenUri);
        if (Credential() is { } basic)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Basic", basic.BasicParameter);
        }
        using var response = await SendRawAsync(request, cancellation);
        if (response.StatusCode is HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden)
        {
            throw new RegistryException(response.StatusCode == HttpStatusCode.Unauthorized ? RegistryFailure.Unauthorized : RegistryFailure.Denied,
                $"the token service of {registry} ({realm}) refused {(Credential() is null ? "an anonymous token" : "the stored credentials")} ({(int)response.StatusCode}): log in to {registry} (credentials in $XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json)");
        }
        if (!response.IsSuccessStatusCode)
        {
            throw new RegistryException(RegistryFailure.Protocol,
                $"the token service of {registry} ({realm}) answered {(int)response.StatusCode} {response.ReasonPhrase}");
        }
        TokenResponse? answer;
        try
        {
            answer = JsonSerializer.Deserialize(await response.Content.ReadAsByteArrayAsync(cancellation), RegistryJson.Default.TokenResponse);
        }
        catch (JsonException e)
        {
            throw new RegistryException(RegistryFailure.Protocol, $"the token service of {registry} answered no JSON: {e.Message}", e);
        }
        string token = answer?.Token ?? answer?.AccessToken
            ?? throw new RegistryException(RegistryFailure.Protocol, $"the token service of {registry} answered no token");
        bearerTokens[scope] = token;
    }

    private RegistryCredential? Credential()
    {
        if (!credentialLookedUp)
        {
            credential = options.Credential ?? options.Credentials?.Find(registry);
            credentialLookedUp = true;
        }
        return credential;
    }

    private void ReadChallenge(HttpResponseMessage response)
    {
        var header = response.Headers.WwwAuthenticate.FirstOrDefault();
        if (header is null)
        {
            return;
        }
        challengeScheme = header.Scheme;
        challengeParameters = ParseChallengeParameters(header.Parameter ?? "");
    }

    /// <summary>The <c>name="value"</c> pairs of a WWW-Authenticate challenge (RFC 7235 auth-params; values may be
    /// quoted and hold commas).</summary>
    internal static Dictionary<string, string> ParseChallengeParameters(string text)
    {
        var parameters = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        int i = 0;
        while (i < text.Length)
        {
            while (i < text.Length && (text[i] == ',' || char.IsWhiteSpace(text[i])))
            {
                i++;
            }
            int nameStart = i;
            while (i < text.Length && text[i] != '=')
            {
                i++;
            }
            if (i >= text.Length)
            {
                break;
            }
            string name = text[nameStart..i].Trim();
            i++;
            var value = new System.Text.StringBuilder();
            if (i < text.Length && text[i] == '"')
            {
                i++;
                while (i < text.Length && text[i] != '"')
                {
                    if (text[i] == '\\' && i + 1 < text.Length)
                    {
                        i++;
                    }
                    value.Append(text[i++]);
                }
                i++;
            }
            else
            {
                while (i < text.Length && text[i] != ',')
                {
                    value.Append(text[i++]);
                }
            }
            parameters[name] = value.ToString().Trim();
        }
        return parameters;
    }

    private async Task<HttpResponseMessage> SendRawAsync(HttpRequestMessage request, CancellationToken cancellation,
        HttpCompletionOption completion = HttpCompletionOption.ResponseContentRead)
    {
        using (request)
        {
            try
            {
                options.RequestObserver?.Invoke(request);
                return await http.SendAsync(request, completion, cancellation);
            }
            catch (HttpRequestException e)
            {
                throw Translate(e, request.RequestUri);
            }
            catch (TaskCanceledException e) when (!cancellation.IsCancellationRequested)
            {
                throw new RegistryException(RegistryFailure.ConnectionRefused,
                    $"{registry} did not answer {request.Method} {request.RequestUri?.AbsolutePath} within {options.Timeout.TotalSeconds:0} s", e);
            }
        }
    }

    private RegistryException Translate(HttpRequestException e, Uri? uri)
    {
        string where = uri is null ? registry : $"{uri.Scheme}://{uri.Authority}";
        return e.HttpRequestError switch
        {
            HttpRequestError.NameResolutionError => new RegistryException(RegistryFailure.UnknownHost,
                $"unknown host: the registry name '{uri?.Host ?? registry}' does not resolve (check the spelling of the reference's registry part and the network)", e),
            HttpRequestError.SecureConnectionError => new RegistryException(RegistryFailure.Tls,
                $"TLS with {where} failed ({e.InnerException?.Message ?? e.Message}): if it is a plain-HTTP or self-signed registry you trust, add --tls-verify=false", e),
            HttpRequestError.ConnectionError when IsRefused(e) => new RegistryException(RegistryFailure.ConnectionRefused,
                $"connection refused by {where}: no registry listens there (is it started, and is the port right?)", e),
            _ => new RegistryException(RegistryFailure.ConnectionRefused,
                $"cannot talk to {where}: {e.Message}", e),
        };
    }

    private static bool IsRefused(Exception e)
    {
        for (Exception? inner = e; inner is not null; inner = inner.InnerException)
        {
            if (inner is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.ConnectionRefused })
            {
                return true;
            }
        }
        return false;
    }

    private async Task EnsureSuccessAsync(HttpResponseMessage response, string what, CancellationToken cancellation)
    {
        if (response.IsSuccessStatusCode)
        {
            return;
        }
        string detail = await ErrorDetailAsync(response, cancellation);
        var failure = detail.Contains("MANIFEST_INVALID", StringComparison.Ordinal) || response.StatusCode == HttpStatusCode.UnsupportedMediaType
            ? RegistryFailure.UnsupportedMediaType
            : detail.Contains("DIGEST_INVALID", StringComparison.Ordinal) ? RegistryFailure.DigestMismatch : RegistryFailure.Protocol;
        throw new RegistryException(failure, $"{registry}: {what} failed with {(int)response.StatusCode} {response.ReasonPhrase}{detail}");
    }

    private static async Task<string> ErrorDetailAsync(HttpResponseMessage response, CancellationToken cancellation)
    {
        try
        {
            byte[] body = await response.Content.ReadAsByteArrayAsync(cancellation);
            if (body.Length == 0)
            {
                return "";
            }
            var errors = JsonSerializer.Deserialize(body, RegistryJson.Default.ErrorResponse)?.Errors;
            return errors is { Count: > 0 } ? ": " + string.Join("; ", errors.Select(e => $"{e.Code} {e.Message}")) : "";
        }
        catch (Exception e) when (e is JsonException or HttpRequestException or IOException)
        {
            return "";
        }
    }
}
