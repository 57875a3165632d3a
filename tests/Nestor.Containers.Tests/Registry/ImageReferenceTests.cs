using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary>The image store's references as the registry client uses them (the parsing itself is tested with the
/// store; here what a pull needs: where to connect, what to ask for, which scheme).</summary>
public class ImageReferenceTests
{
    private const string Digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    [Theory]
    [InlineData("busybox", "docker.io", "library/busybox", "latest", "registry-1.docker.io")]
    [InlineData("localhost:5000/a/b:v1", "localhost:5000", "a/b", "v1", "localhost:5000")]
    [InlineData("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", "127.0.0.1:5000")]
    [InlineData("quay.io/org/app:tag", "quay.io", "org/app", "tag", "quay.io")]
    [InlineData("app@" + Digest, "docker.io", "library/app", Digest, "registry-1.docker.io")]
    [InlineData("127.0.0.1:5000/app:v2@" + Digest, "127.0.0.1:5000", "app", Digest, "127.0.0.1:5000")]
    public void NamesRegistryRepositoryAndManifest(string text, string registry, string repository, string manifest, string apiHost)
    {
        var reference = ImageReference.Parse(text);
        Assert.Equal(registry, reference.Registry);
        Assert.Equal(repository, reference.Repository);
        Assert.Equal(manifest, reference.ManifestReference);
        Assert.Equal(apiHost, reference.ApiHost);
        Assert.Equal(reference, ImageReference.Parse(reference.ToString()));
    }

    [Theory]
    [InlineData("localhost:5000/a", true)]
    [InlineData("localhost/a", true)]
    [InlineData("127.0.0.1:5000/a", true)]
    [InlineData("127.1.2.3/a", true)]
    [InlineData("[::1]:5000/a", true)]
    [InlineData("quay.io/a", false)]
    [InlineData("127.example.com/a", false)]
    [InlineData("busybox", false)]
    public void KnowsLoopbackRegistries(string text, bool loopback) =>
        Assert.Equal(loopback, ImageReference.Parse(text).IsLoopback);

    [Fact]
    public void WithTagAndWithDigestReplaceTheOther()
    {
        var pinned = ImageReference.Parse("127.0.0.1:5000/app:v1").WithDigest(Digest);
        Assert.Equal($"127.0.0.1:5000/app@{Digest}", pinned.ToString());
        Assert.Equal("127.0.0.1:5000/app:v2", pinned.WithTag("v2").ToString());
    }
}
