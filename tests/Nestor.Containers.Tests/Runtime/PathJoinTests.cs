using Nestor.Containers.Runtime;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>The one path walk that mount destinations, <c>cp</c> and rootless builds share: links resolved inside a
/// tree, <c>..</c> stopping at its root.</summary>
public sealed class PathJoinTests
{
    // A tree described by its links only: /bin -> usr/bin, /etc/evil -> /../../host, /loop -> loop2, /loop2 -> loop.
    private static readonly Dictionary<string, string> Links = new()
    {
        ["/bin"] = "usr/bin",
        ["/etc/evil"] = "/../../host",
        ["/usr/lib64"] = "../lib",
        ["/loop"] = "loop2",
        ["/loop2"] = "loop",
    };

    private static string? Target(string path) => Links.GetValueOrDefault(path);

    [Theory]
    [InlineData("/bin/sh", "/usr/bin/sh")]
    [InlineData("/etc/evil/x", "/host/x")]
    [InlineData("/../../etc/passwd", "/etc/passwd")]
    [InlineData("/usr/lib64/ld.so", "/lib/ld.so")]
    [InlineData("/a/./b/../c", "/a/c")]
    [InlineData("/", "/")]
    public void ResolvesLinksAndParentsInsideTheTree(string path, string expected) =>
        Assert.Equal(expected, PathJoin.Resolve(path, Target));

    [Fact]
    public void TheLastComponentIsKeptWhenAsked()
    {
        Assert.Equal("/bin", PathJoin.Resolve("/bin", Target, followLast: false));
        Assert.Equal("/usr/bin", PathJoin.Resolve("/bin", Target));
        Assert.Equal("/usr/bin/x", PathJoin.Resolve("/bin/x", Target, followLast: false));
    }

    [Fact]
    public void ALinkLoopIsRefused()
    {
        var error = Assert.Throws<ContainerRuntimeException>(() => PathJoin.Resolve("/loop/x", Target));
        Assert.Contains("too many symbolic links", error.Message);
    }

    [Fact]
    public void InRootStaysUnderTheRootOnDisk()
    {
        string root = Directory.CreateTempSubdirectory("nestor-pathjoin-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "etc"));
            File.CreateSymbolicLink(Path.Combine(root, "etc", "evil"), "/../../host");
            Assert.Equal(Path.Combine(root, "host", "x"), PathJoin.InRoot(root, "/etc/evil/x"));
            Assert.Equal(Path.Combine(root, "etc", "evil"), PathJoin.InRoot(root, "/etc/evil", followLast: false));
            Assert.Equal(root, PathJoin.InRoot(root, "/.."));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
