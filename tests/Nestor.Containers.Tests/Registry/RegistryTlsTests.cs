using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary>docker-registry served over HTTPS with a self-signed certificate made by the test.</summary>
public sealed class TlsRegistryFixture : IDisposable
{
    public TlsRegistryFixture()
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        Files = new TestImages.TemporaryDirectory();
        CertificateFile = Path.Combine(Files.Path, "registry.crt");
        string keyFile = Path.Combine(Files.Path, "registry.key");
        File.WriteAllText(CertificateFile, certificate.ExportCertificatePem());
        File.WriteAllText(keyFile, key.ExportPkcs8PrivateKeyPem());
        try
        {
            Server = RegistryServer.Start(tls: (CertificateFile, keyFile));
        }
        catch
        {
            Files.Dispose();
            throw;
        }
    }

    public TestImages.TemporaryDirectory Files { get; }

    public string CertificateFile { get; }

    public RegistryServer Server { get; }

    public void Dispose()
    {
        Server.Dispose();
        Files.Dispose();
    }
}

/// <summary>The scheme logic: a loopback registry is tried in plain HTTP first and, when a TLS server answers that
/// with 400, in HTTPS; an untrusted certificate is refused unless --tls-verify=false.</summary>
public class RegistryTlsTests(TlsRegistryFixture fixture) : IClassFixture<TlsRegistryFixture>
{
    private readonly RegistryServer server = fixture.Server;

    [Fact]
    public async Task SelfSignedNeedsTlsVerifyFalse()
    {
        using var directory = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(Path.Combine(directory.Path, "source"));
        var made = TestImages.AddBusybox(store, "local/tls", "tls");
        var reference = ImageReference.Parse($"{server.Address}/secure/busybox:v1");

        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(new RegistryClientOptions()).PushAsync(store, "local/tls", reference));
        Assert.Equal(RegistryFailure.Tls, e.Failure);
        Assert.Contains("--tls-verify=false", e.Message);

        var insecure = new RegistryClientOptions { TlsVerify = false };
        await new ImageTransfer(insecure).PushAsync(store, "local/tls", reference);
        var pulled = await new ImageTransfer(insecure).PullAsync(reference, new OciLayoutContentStore(Path.Combine(directory.Path, "target")));
        Assert.Equal(made.ManifestDigest, pulled.ManifestDigest);
        using var client = new RegistryClient(server.Address, insecure);
        await client.PingAsync();
        Assert.Equal("https", client.BaseUri!.Scheme);
    }
}
