using Nestor.Containers.Images;

namespace Nestor.Containers.Tests.Images;

public class ImageReferenceTests
{
    /// <summary>References normalize as Docker's do and show in Docker's short form.</summary>
    [Theory]
    [InlineData("busybox", "docker.io/library/busybox:latest", "busybox:latest")]
    [InlineData("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36")]
    [InlineData("user/app:v1", "docker.io/user/app:v1", "user/app:v1")]
    [InlineData("docker.io/library/debian:bookworm", "docker.io/library/debian:bookworm", "debian:bookworm")]
    [InlineData("localhost:5000/x/y:tag", "localhost:5000/x/y:tag", "localhost:5000/x/y:tag")]
    [InlineData("localhost/app", "localhost/app:latest", "localhost/app:latest")]
    [InlineData("quay.io/a/b", "quay.io/a/b:latest", "quay.io/a/b:latest")]
    public void NormalizesAsDocker(string input, string full, string familiar)
    {
        var reference = ImageReference.Parse(input);
        Assert.Equal(full, reference.ToString());
        Assert.Equal(familiar, reference.FamiliarName);
    }

    /// <summary>A digest reference keeps its digest and has no default tag.</summary>
    [Fact]
    public void DigestReference()
    {
        string digest = "sha256:" + new string('a', 64);
        var reference = ImageReference.Parse("localhost:5000/x@" + digest);
        Assert.Equal(digest, reference.Digest);
        Assert.Null(reference.Tag);
        Assert.Equal("localhost:5000", reference.Registry);
    }

    /// <summary>Malformed references are refused with the reason.</summary>
    [Theory]
    [InlineData("UPPER", "repository")]
    [InlineData("a:-bad", "tag")]
    [InlineData("a@sha256:12", "digest")]
    [InlineData("", "empty")]
    public void RefusesMalformed(string input, string reason)
    {
        var error = Assert.Throws<ImageStoreException>(() => ImageReference.Parse(input));
        Assert.Contains(reason, error.Message);
    }
}
