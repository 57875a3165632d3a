using System.Net;
using System.Text;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary>One docker-registry with htpasswd Basic authentication, shared by a class's tests.</summary>
public sealed class BasicAuthRegistryFixture : IDisposable
{
    public RegistryServer Server { get; } = RegistryServer.Start(new RegistryCredential("nestor", "pw-" + Guid.NewGuid().ToString("N")[..8]));

    public void Dispose() => Server.Dispose();
}

/// <summary>Basic authentication against docker-registry's htpasswd (a real bcrypt file made with python3's crypt).</summary>
public class BasicAuthenticationTests(BasicAuthRegistryFixture fixture) : IClassFixture<BasicAuthRegistryFixture>
{
    private readonly RegistryServer server = fixture.Server;

    /// <summary>With the credential found in an auth.json file, push and pull work; the client saw a Basic challenge.</summary>
    [Fact]
    public async Task CredentialsFromAuthFileAreSent()
    {
        using var directory = new TestImages.TemporaryDirectory();
        string authFile = Path.Combine(directory.Path, "auth.json");
        string encoded = Convert.ToBase64String(Encoding.UTF8.GetBytes($"{server.User!.UserName}:{server.User.Password}"));
        File.WriteAllText(authFile, $$"""{"auths":{"{{server.Address}}":{"auth":"{{encoded}}"} } }""");
        var options = new RegistryClientOptions { Credentials = new RegistryCredentialStore([authFile]) };
        var store = new OciLayoutContentStore(Path.Combine(directory.Path, "source"));
        var made = TestImages.AddBusybox(store, "local/auth", "basic-auth");
        var reference = ImageReference.Parse($"{server.Address}/private/busybox:latest");

        await new ImageTransfer(options).PushAsync(store, "local/auth", reference);
        var pulled = await new ImageTransfer(options).PullAsync(reference, new OciLayoutContentStore(Path.Combine(directory.Path, "target")));
        Assert.Equal(made.ManifestDigest, pulled.ManifestDigest);
        using var client = new RegistryClient(server.Address, options);
        await client.PingAsync();
        Assert.Equal("Basic", client.ChallengeScheme);
    }

    /// <summary>Login checks the credential against the registry (Basic challenge answered at /v2/) and refuses a
    /// wrong password.</summary>
    [Fact]
    public async Task LoginChecksTheCredential()
    {
        using (var client = new RegistryClient(server.Address, new RegistryClientOptions { Credential = server.User }))
        {
            Assert.Equal("Basic", await client.LoginAsync());
        }
        using var wrong = new RegistryClient(server.Address, new RegistryClientOptions { Credential = new RegistryCredential(server.User!.UserName, "wrong") });
        var e = await Assert.ThrowsAsync<RegistryException>(() => wrong.LoginAsync());
        Assert.Equal(RegistryFailure.Unauthorized, e.Failure);
    }

    /// <summary>Without credentials: Unauthorized, telling the user to log in.</summary>
    [Fact]
    public async Task NoCredentialsSaysToLogIn()
    {
        using var directory = new TestImages.TemporaryDirectory();
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(new RegistryClientOptions())
            .PullAsync(ImageReference.Parse($"{server.Address}/private/busybox"), new OciLayoutContentStore(directory.Path)));
        Assert.Equal(RegistryFailure.Unauthorized, e.Failure);
        Assert.Contains("log in", e.Message);
    }

    /// <summary>A wrong password: Unauthorized after the retry with credentials.</summary>
    [Fact]
    public async Task WrongPasswordIsUnauthorized()
    {
        using var directory = new TestImages.TemporaryDirectory();
        var options = new RegistryClientOptions { Credential = new RegistryCredential(server.User!.UserName, "wrong") };
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(options)
            .PullAsync(ImageReference.Parse($"{server.Address}/private/busybox"), new OciLayoutContentStore(directory.Path)));
        Assert.Equal(RegistryFailure.Unauthorized, e.Failure);
        Assert.Contains("refused the credentials", e.Message);
    }
}

/// <summary>Docker's Bearer token flow (realm, service, scope) and manifest checks against a tiny in-test HTTP
/// fake: docker-registry's token authentication needs a token server with signing certificates, too much for a test
/// fixture, so only the negotiation is faked here; content transfer is tested against the real registry.</summary>
public class BearerTokenTests
{
    private const string Token = "nestor-test-token";

    private sealed class FakeRegistry : IDisposable
    {
        private readonly HttpListener listener;
        private readonly Func<HttpListenerContext, Task> handle;
        private readonly Task loop;

        public FakeRegistry(Func<HttpListenerContext, Task> handle)
        {
            this.handle = handle;
            // HttpListener cannot bind port 0, so a free port is picked first; another test may take it in between,
            // hence a few attempts.
            for (int attempt = 1; ; attempt++)
            {
                Port = RegistryServer.FreePort();
                listener = new HttpListener();
                listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
                try
                {
                    listener.Start();
                    break;
                }
                catch (HttpListenerException) when (attempt < 5)
                {
                    listener.Close();
                }
            }
            loop = Task.Run(Loop);
        }

        public int Port { get; }

        public List<string> Requests { get; } = [];

        private async Task Loop()
        {
            while (listener.IsListening)
            {
                HttpListenerContext context;
                try
                {
                    context = await listener.GetContextAsync();
                }
                catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
                {
                    return;
                }
                lock (Requests)
                {
                    Requests.Add($"{context.Request.HttpMethod} {context.Request.Url!.PathAndQuery} {context.Request.Headers["Authorization"]}");
                }
                try
                {
                    await handle(context);
                }
                finally
                {
                    context.Response.Close();
                }
            }
        }

        public void Dispose()
        {
            // Close only: .NET's managed HttpListener removes its endpoint on Stop and, on a later Close, looks the
            // endpoint up again, which binds the port anew and fails with "Address already in use" when another
            // test already holds it (CI run of af0495a).
            listener.Close();
            loop.Wait(TimeSpan.FromSeconds(5));
        }
    }

    private static async Task Reply(HttpListenerContext context, int status, string body, string contentType = "application/json")
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = contentType;
        byte[] bytes = Encoding.UTF8.GetBytes(body);
        await context.Response.OutputStream.WriteAsync(bytes);
    }

    /// <summary>A registry answering with a Bearer challenge; its token service admits <paramref name="user"/>
    /// (or anyone when null) and the manifest endpoint serves <paramref name="manifest"/> only with the token.</summary>
    private static FakeRegistry Start(string? user, string manifest, string manifestType)
    {
        FakeRegistry? fake = null;
        fake = new FakeRegistry(async context =>
        {
            string path = context.Request.Url!.AbsolutePath;
            string? authorization = context.Request.Headers["Authorization"];
            if (path == "/token")
            {
                string expected = user is null ? "" : "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes(user));
                if (user is not null && authorization != expected)
                {
                    await Reply(context, 401, """{"errors":[{"code":"UNAUTHORIZED","message":"bad user"}]}""");
                    return;
                }
                await Reply(context, 200, $$"""{"token":"{{Token}}","expires_in":300}""");
                return;
            }
            if (authorization != "Bearer " + Token)
            {
                context.Response.AddHeader("WWW-Authenticate",
                    $"Bearer realm=\"http://127.0.0.1:{fake!.Port}/token\",service=\"fake-registry\",scope=\"repository:team/app:pull\"");
                await Reply(context, 401, """{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}""");
                return;
            }
            if (path == "/v2/")
            {
                await Reply(context, 200, "{}");
                return;
            }
            if (path == "/v2/team/app/manifests/latest")
            {
                await Reply(context, 200, manifest, manifestType);
                return;
            }
            await Reply(context, 404, """{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}""");
        });
        return fake;
    }

    private const string SchemaOne = """{"schemaVersion":1,"name":"team/app","tag":"latest","architecture":"amd64","fsLayers":[],"history":[]}""";

    /// <summary>The client asks the realm for a token with the challenge's service and the request's scope, sending
    /// the stored Basic credential, then repeats the request with the token. The manifest served is schema 1, which
    /// is refused as unsupported.</summary>
    [Fact]
    public async Task TokenIsFetchedForTheScopeAndSchemaOneIsRefused()
    {
        using var fake = Start("user:pass", SchemaOne, RegistryMediaTypes.DockerSchema1Signed);
        using var directory = new TestImages.TemporaryDirectory();
        var options = new RegistryClientOptions { Credential = new RegistryCredential("user", "pass") };
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(options)
            .PullAsync(ImageReference.Parse($"127.0.0.1:{fake.Port}/team/app"), new OciLayoutContentStore(directory.Path)));
        Assert.Equal(RegistryFailure.UnsupportedMediaType, e.Failure);
        Assert.Contains("schema 1", e.Message);
        string basic = "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes("user:pass"));
        Assert.Contains(fake.Requests, r => r == $"GET /token?service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull {basic}");
        Assert.Contains(fake.Requests, r => r == $"GET /v2/team/app/manifests/latest Bearer {Token}");
    }

    /// <summary>Login against a Bearer registry fetches a token without a repository scope and uses it at /v2/.</summary>
    [Fact]
    public async Task LoginFetchesAnUnscopedToken()
    {
        using var fake = Start("user:pass", SchemaOne, RegistryMediaTypes.DockerSchema1Signed);
        using var client = new RegistryClient($"127.0.0.1:{fake.Port}", new RegistryClientOptions { Credential = new RegistryCredential("user", "pass") });
        Assert.Equal("Bearer", await client.LoginAsync());
        Assert.Contains(fake.Requests, r => r.StartsWith("GET /token?service=fake-registry Basic ", StringComparison.Ordinal));
        Assert.Contains(fake.Requests, r => r == $"GET /v2/ Bearer {Token}");
    }

    /// <summary>A token service that refuses the credential: Unauthorized, telling the user to log in.</summary>
    [Fact]
    public async Task RefusedTokenSaysToLogIn()
    {
        using var fake = Start("user:pass", SchemaOne, RegistryMediaTypes.DockerSchema1Signed);
        using var directory = new TestImages.TemporaryDirectory();
        var options = new RegistryClientOptions { Credential = new RegistryCredential("user", "wrong") };
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(options)
            .PullAsync(ImageReference.Parse($"127.0.0.1:{fake.Port}/team/app"), new OciLayoutContentStore(directory.Path)));
        Assert.Equal(RegistryFailure.Unauthorized, e.Failure);
        Assert.Contains("log in", e.Message);
    }

    /// <summary>A manifest whose bytes do not hash to the Docker-Content-Digest the registry reports is refused.</summary>
    [Fact]
    public async Task ReportedDigestMustMatch()
    {
        const string manifest = """{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:00","size":1},"layers":[]}""";
        FakeRegistry? fake = null;
        fake = new FakeRegistry(async context =>
        {
            context.Response.AddHeader("Docker-Content-Digest", "sha256:" + new string('a', 64));
            await Reply(context, 200, context.Request.Url!.AbsolutePath == "/v2/" ? "{}" : manifest, OciMediaTypes.Manifest);
        });
        using (fake)
        {
            using var client = new RegistryClient($"127.0.0.1:{fake.Port}");
            var e = await Assert.ThrowsAsync<RegistryException>(() => client.GetManifestAsync("team/app", "latest"));
            Assert.Equal(RegistryFailure.DigestMismatch, e.Failure);
        }
    }
}
