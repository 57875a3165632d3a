using Nestor.Containers.Build;
using Nestor.Containers.Tests.Images;

namespace Nestor.Containers.Tests.Build;

/// <summary>The build context and the cache key: .dockerignore, wildcards, and a content digest that follows
/// contents and modes but not modification times.</summary>
public sealed class BuildContextTests
{
    private static TemporaryDirectory Context()
    {
        var directory = new TemporaryDirectory("context");
        Directory.CreateDirectory(directory.Combine("src", "deep"));
        File.WriteAllText(directory.Combine("src", "a.c"), "int a;\n");
        File.WriteAllText(directory.Combine("src", "b.c"), "int b;\n");
        File.WriteAllText(directory.Combine("src", "deep", "c.c"), "int c;\n");
        File.WriteAllText(directory.Combine("src", "notes.txt"), "notes\n");
        File.WriteAllText(directory.Combine("secret.key"), "k\n");
        File.WriteAllText(directory.Combine("keep.key"), "k\n");
        return directory;
    }

    [Fact]
    public void DockerignoreExcludesByLastMatchingRuleAndParents()
    {
        using var directory = Context();
        var context = new BuildContext(directory.Path, ["# comment", "*.key", "!keep.key", "src/deep", "**/*.txt"]);
        Assert.True(context.IsExcluded("secret.key"));
        Assert.False(context.IsExcluded("keep.key"));
        Assert.True(context.IsExcluded("src/deep/c.c")); // under an excluded directory
        Assert.True(context.IsExcluded("src/notes.txt"));
        Assert.False(context.IsExcluded("src/a.c"));
        var error = Assert.Throws<BuildException>(() => context.Resolve("secret.key"));
        Assert.Contains("dockerignore", error.Message);
        Assert.Equal(["keep.key"], context.Resolve("*.key").Select(source => source.RelativePath));
    }

    [Fact]
    public void WildcardsMatchWithinOneComponentAndPathsStayInside()
    {
        using var directory = Context();
        var context = new BuildContext(directory.Path, []);
        Assert.Equal(["src/a.c", "src/b.c"], context.Resolve("src/*.c").Select(source => source.RelativePath));
        Assert.Equal(["src/a.c"], context.Resolve("./src/[a]?c").Select(source => source.RelativePath));
        Assert.Throws<BuildException>(() => context.Resolve("../etc/passwd"));
        Assert.Throws<BuildException>(() => context.Resolve("src/*.h"));
    }

    /// <summary>Sources and ignore rules share one matcher (PathPattern): <c>**</c> spans directories in a COPY
    /// source as in .dockerignore, an entry inside a matched directory is not listed again, a quoted <c>\[</c> is a
    /// literal, and a malformed class is an error naming the pattern.</summary>
    [Fact]
    public void SourcesAndIgnoreRulesShareOneMatcher()
    {
        using var directory = Context();
        File.WriteAllText(directory.Combine("src", "[x].c"), "int x;\n");
        Directory.CreateDirectory(directory.Combine("src", "more"));
        File.WriteAllText(directory.Combine("src", "more", "d.c"), "int d;\n");
        var context = new BuildContext(directory.Path, ["src/deep/**"]);
        Assert.Equal(["src/[x].c", "src/a.c", "src/b.c", "src/more/d.c"], context.Resolve("**/*.c").Select(source => source.RelativePath));
        Assert.Equal(["src"], context.Resolve("sr*").Select(source => source.RelativePath));
        Assert.Equal(["src/[x].c", "src/a.c", "src/b.c", "src/deep", "src/more", "src/notes.txt"],
            context.Resolve("src/**").Select(source => source.RelativePath)); // src/more/d.c comes with src/more
        Assert.Equal(["src/[x].c"], context.Resolve("src/\\[x].c").Select(source => source.RelativePath));
        Assert.True(context.IsExcluded("src/deep/c.c"));
        Assert.False(context.IsExcluded("src/deep")); // deep/** matches what is under deep, not deep itself
        var bad = Assert.Throws<BuildException>(() => context.Resolve("src/[ab.c"));
        Assert.Contains("src/[ab.c", bad.Message);
        var badIgnore = Assert.Throws<BuildException>(() => new BuildContext(directory.Path, ["ok", "[oops"]));
        Assert.Contains(":2", badIgnore.Message); // the line of the bad rule
    }

    /// <summary>BuildKit's per-Dockerfile ignore file (<c>NAME.dockerignore</c> beside the Dockerfile) wins over the
    /// context's <c>.dockerignore</c>.</summary>
    [Fact]
    public void ADockerfilesOwnIgnoreFileWins()
    {
        using var directory = Context();
        File.WriteAllText(directory.Combine(".dockerignore"), "src\n");
        Assert.True(BuildContext.Open(directory.Path).IsExcluded("src/a.c"));
        File.WriteAllText(directory.Combine("Other.dockerignore"), "*.key\n");
        var context = BuildContext.Open(directory.Path, directory.Combine("Other"));
        Assert.False(context.IsExcluded("src/a.c"));
        Assert.True(context.IsExcluded("keep.key"));
    }

    [Fact]
    public void ContentDigestFollowsContentsModesAndNamesNotTimes()
    {
        using var directory = Context();
        var context = new BuildContext(directory.Path, ["src/notes.txt"]);
        string Digest() => context.ContentDigest(context.Resolve("src"));
        string first = Digest();
        File.SetLastWriteTimeUtc(directory.Combine("src", "a.c"), new DateTime(2001, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        Assert.Equal(first, Digest());
        File.WriteAllText(directory.Combine("src", "notes.txt"), "excluded: no change\n");
        Assert.Equal(first, Digest());
        File.WriteAllText(directory.Combine("src", "a.c"), "int a = 1;\n");
        string changed = Digest();
        Assert.NotEqual(first, changed);
        Nestor.Host.FileSystemCalls.Chmod(directory.Combine("src", "a.c"), 0x1c0);
        Assert.NotEqual(changed, Digest());
        File.Move(directory.Combine("src", "b.c"), directory.Combine("src", "b2.c"));
        Assert.NotEqual(changed, Digest());
    }

    [Fact]
    public void CacheKeysDifferInParentInstructionAndInputs()
    {
        string key = BuildCache.Key("sha256:1", "RUN make", ["env", "A=1"]);
        Assert.Equal(key, BuildCache.Key("sha256:1", "RUN make", ["env", "A=1"]));
        Assert.NotEqual(key, BuildCache.Key("sha256:2", "RUN make", ["env", "A=1"]));
        Assert.NotEqual(key, BuildCache.Key("sha256:1", "RUN make all", ["env", "A=1"]));
        Assert.NotEqual(key, BuildCache.Key("sha256:1", "RUN make", ["env", "A=2"]));
        // Parts are length-prefixed: moving text between them changes the key.
        Assert.NotEqual(BuildCache.Key("p", "ab", ["c"]), BuildCache.Key("p", "a", ["bc"]));
    }
}
