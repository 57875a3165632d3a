using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

public class ImageReferenceTests
{
    private const string Digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// <summary>Docker's defaults: no registry means docker.io, a one-component repository there is an official
    /// image under library/, no tag means latest.</summary>
    [Theory]
    [InlineData("busybox", "docker.io", "library/busybox", "latest", null)]
    [InlineData("busybox:1.36", "docker.io", "library/busybox", "1.36", null)]
    [InlineData("team/app", "docker.io", "team/app", "latest", null)]
    [InlineData("docker.io/busybox", "docker.io", "library/busybox", "latest", null)]
    [InlineData("index.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", null)]
    [InlineData("localhost/app", "localhost", "app", "latest", null)]
    [InlineData("localhost:5000/a/b:v1", "localhost:5000", "a/b", "v1", null)]
    [InlineData("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", null)]
    [InlineData("quay.io/org/app:tag", "quay.io", "org/app", "tag", null)]
    [InlineData("registry:5000/app", "registry:5000", "app", "latest", null)]
    [InlineData("app@" + Digest, "docker.io", "library/app", null, Digest)]
    [InlineData("127.0.0.1:5000/app:v2@" + Digest, "127.0.0.1:5000", "app", "v2", Digest)]
    public void ParsesDockersWay(string text, string registry, string repository, string? tag, string? digest)
    {
        var reference = ImageReference.Parse(text);
        Assert.Equal(registry, reference.Registry);
        Assert.Equal(repository, reference.Repository);
        Assert.Equal(tag, reference.Tag);
        Assert.Equal(digest, reference.Digest);
        Assert.Equal(reference, ImageReference.Parse(reference.ToString()));
    }

    /// <summary>A digest pins the manifest, so it is what the manifest endpoint is asked for even with a tag.</summary>
    [Fact]
    public void ManifestReferencePrefersTheDigest()
    {
        Assert.Equal(Digest, ImageReference.Parse("a:b@" + Digest).ManifestReference);
        Assert.Equal("b", ImageReference.Parse("a:b").ManifestReference);
        Assert.Equal("registry-1.docker.io", ImageReference.Parse("a").ApiHost);
        Assert.Equal("127.0.0.1:5000", ImageReference.Parse("127.0.0.1:5000/a").ApiHost);
    }

    [Theory]
    [InlineData("localhost:5000/a", true)]
    [InlineData("127.0.0.1:5000/a", true)]
    [InlineData("127.1.2.3/a", true)]
    [InlineData("[::1]:5000/a", true)]
    [InlineData("quay.io/a", false)]
    [InlineData("busybox", false)]
    public void KnowsLoopbackRegistries(string text, bool loopback) =>
        Assert.Equal(loopback, ImageReference.Parse(text).IsLoopback);

    [Theory]
    [InlineData("")]
    [InlineData("Busybox")]
    [InlineData("busybox:bad/tag")]
    [InlineData("busybox:-x")]
    [InlineData("busybox@sha256:short")]
    [InlineData("a//b")]
    [InlineData("quay.io/")]
    public void RefusesWhatIsNotAReference(string text)
    {
        Assert.False(ImageReference.TryParse(text, out _, out string? error));
        Assert.False(string.IsNullOrEmpty(error));
        Assert.Throws<FormatException>(() => ImageReference.Parse(text));
    }
}
