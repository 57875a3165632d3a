using Nestor.Containers.Build.Dockerfiles;
using Nestor.Containers.Tests.Images;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

public class DockerIgnoreTests
{
    /// <summary>Go filepath.Match syntax plus **, anchored at both ends, classes never matching '/'.</summary>
    [Theory]
    [InlineData("*.md", "README.md", true)]
    [InlineData("*.md", "docs/README.md", false)]
    [InlineData("*/temp*", "somedir/temporary.txt", true)]
    [InlineData("*/*/temp*", "somedir/subdir/temporary.txt", true)]
    [InlineData("*/*/temp*", "somedir/temporary.txt", false)]
    [InlineData("temp?", "temp1", true)]
    [InlineData("temp?", "temp12", false)]
    [InlineData("temp?", "temp/", false)]
    [InlineData("**/*.go", "a.go", true)]
    [InlineData("**/*.go", "x/y/z/a.go", true)]
    [InlineData("a/**/b", "a/b", true)]
    [InlineData("a/**/b", "a/x/y/b", true)]
    [InlineData("a/**", "a/x/y", true)]
    [InlineData("[a-c]x", "bx", true)]
    [InlineData("[a-c]x", "dx", false)]
    [InlineData("[^a-c]x", "dx", true)]
    [InlineData("[^a-c]x", "/x", false)]
    [InlineData("\\*x", "*x", true)]
    [InlineData("\\*x", "ax", false)]
    [InlineData("a.b", "axb", false)]
    [InlineData("a+b(c)", "a+b(c)", true)]
    public void PatternMatching(string pattern, string path, bool match)
    {
        Assert.Equal(match, PathPattern.Parse(pattern).IsMatch(path));
    }

    /// <summary>Malformed classes are refused as Go's ErrBadPattern.</summary>
    [Theory]
    [InlineData("[abc")]
    [InlineData("[]")]
    [InlineData("a\\")]
    public void BadPatterns(string pattern)
    {
        Assert.Throws<FormatException>(() => PathPattern.Parse(pattern));
    }

    /// <summary>The reference's example file: comments, */temp*, */*/temp*, temp?; a leading / and ./ are
    /// cleaned away; a pattern excludes what is under a matching directory.</summary>
    [Theory]
    [InlineData("somedir/temporary.txt", true)]
    [InlineData("somedir/temp", true)]
    [InlineData("somedir/subdir/temporary.txt", true)]
    [InlineData("tempa", true)]
    [InlineData("tempa/inside.txt", true)]
    [InlineData("temporary.txt", false)]
    [InlineData("rooted/file", true)]
    [InlineData("dotted/x/y", true)]
    [InlineData("a/b/../../dotted/z", true)]
    [InlineData("# comment", false)]
    [InlineData("keep.txt", false)]
    public void ReferenceExample(string path, bool excluded)
    {
        var ignore = DockerIgnore.Parse("# comment\n*/temp*\n*/*/temp*\n  temp?  \n/rooted\n./dotted/\n\n");
        Assert.Equal(excluded, ignore.IsExcluded(path));
    }

    /// <summary>! exceptions re-include; the last matching line decides, so order matters.</summary>
    [Fact]
    public void ExceptionsAndOrder()
    {
        var ignore = DockerIgnore.Parse("*.md\n!README*.md\nREADME-secret.md");
        Assert.True(ignore.IsExcluded("CHANGES.md"));
        Assert.False(ignore.IsExcluded("README.md"));
        Assert.True(ignore.IsExcluded("README-secret.md"));

        var reordered = DockerIgnore.Parse("*.md\nREADME-secret.md\n!README*.md");
        Assert.False(reordered.IsExcluded("README-secret.md"));

        var directory = DockerIgnore.Parse("docs\n!docs/keep.md");
        Assert.True(directory.IsExcluded("docs/other.md"));
        Assert.False(directory.IsExcluded("docs/keep.md"));

        var everything = DockerIgnore.Parse("**\n!src/**\n! Dockerfile");
        Assert.True(everything.IsExcluded("bin/x"));
        Assert.False(everything.IsExcluded("src/a/b.c"));
        Assert.False(everything.IsExcluded("Dockerfile"));
    }

    /// <summary>A malformed pattern is an error at its line of the ignore file.</summary>
    [Fact]
    public void MalformedLine()
    {
        var error = Assert.Throws<DockerfileException>(() => DockerIgnore.Parse("ok\n\nbad[", ".dockerignore"));
        Assert.Equal(3, error.Location.Line);
        Assert.Equal(".dockerignore", error.Location.File);
    }

    /// <summary>The context listing leaves out excluded paths, does not descend into an excluded directory, but
    /// does when an exception could re-include something inside it; Dockerfile-specific ignore files win.</summary>
    [Fact]
    public void ListsTheContext()
    {
        using var context = new TemporaryDirectory("ignore");
        foreach (string file in new[] { "Dockerfile", "app/main.c", "app/main.o", "build/out/x", "build/keep", "notes.md" })
        {
            Directory.CreateDirectory(Path.GetDirectoryName(context.Combine(file))!);
            File.WriteAllText(context.Combine(file), file);
        }
        File.WriteAllText(context.Combine(".dockerignore"), "**/*.o\nbuild\n*.md\nDockerfile\n.dockerignore\n");
        var ignore = DockerIgnore.Load(context.Path);
        Assert.Equal(["app", "app/main.c"], ignore.ListContext(context.Path));

        File.AppendAllText(context.Combine(".dockerignore"), "!build/keep\n");
        Assert.Equal(["app", "app/main.c", "build/keep"], DockerIgnore.Load(context.Path).ListContext(context.Path));

        File.WriteAllText(context.Combine("Dockerfile.dockerignore"), "app\n");
        var specific = DockerIgnore.Load(context.Path, context.Combine("Dockerfile"));
        Assert.DoesNotContain("app/main.c", specific.ListContext(context.Path));
        Assert.Contains("notes.md", specific.ListContext(context.Path));
        Assert.Same(DockerIgnore.None, DockerIgnore.Load(context.Combine("app")));
    }

    /// <summary>Go's filepath.Clean, as patterns are cleaned.</summary>
    [Theory]
    [InlineData("./a/", "a")]
    [InlineData("a//b/./c/..", "a/b")]
    [InlineData("/../a", "/a")]
    [InlineData("../a", "../a")]
    [InlineData("", ".")]
    [InlineData("/", "/")]
    public void Clean(string path, string expected)
    {
        Assert.Equal(expected, DockerIgnore.Clean(path));
    }
}
