using Nestor.Containers.Build.Dockerfiles;
using Nestor.Containers.Tests.Images;

namespace Nestor.Containers.Tests.Build.Dockerfiles;

public sealed class CopySourcesTests : IDisposable
{
    private readonly TemporaryDirectory context = new("copysrc");

    public CopySourcesTests()
    {
        foreach (string file in new[] { "Dockerfile", "hom.txt", "home.txt", "hometown.txt", "src/a.c", "src/lib/b.c", "src/a.o", "docs/x.md" })
        {
            Directory.CreateDirectory(Path.GetDirectoryName(context.Combine(file))!);
            File.WriteAllText(context.Combine(file), file);
        }
        Directory.CreateDirectory(context.Combine("empty"));
        File.CreateSymbolicLink(context.Combine("link"), "home.txt");
    }

    public void Dispose() => context.Dispose();

    private IReadOnlyList<CopyEntry> Plan(string line, string ignore = "", string workdir = "/")
    {
        var file = DockerfileParser.Parse("FROM a\n" + line, "Dockerfile");
        var copy = (CopyInstruction)file.FinalStage.Instructions[0].Expand(ShellWordExpansion.Empty());
        return CopySources.Plan(context.Path, copy, DockerIgnore.Parse(ignore), workdir);
    }

    private static string[] Show(IReadOnlyList<CopyEntry> entries) =>
        [.. entries.Select(e => $"{e.ContextPath}>{e.DestinationPath}:{e.Kind}")];

    /// <summary>A single file goes to the destination path, or into it when it ends in '/'; a relative destination
    /// is under WORKDIR.</summary>
    [Fact]
    public void SingleFile()
    {
        Assert.Equal(["home.txt>/etc/motd:File"], Show(Plan("COPY home.txt /etc/motd")));
        Assert.Equal(["home.txt>/etc/home.txt:File"], Show(Plan("COPY /home.txt /etc/")));
        Assert.Equal(["home.txt>/app/relativeDir/home.txt:File"], Show(Plan("COPY ./home.txt relativeDir/", workdir: "/app")));
        Assert.Equal(["link>/l:SymbolicLink"], Show(Plan("COPY link /l")));
    }

    /// <summary>The reference's wildcard examples: hom* and hom?.txt; several matches need a trailing '/'.</summary>
    [Fact]
    public void Wildcards()
    {
        Assert.Equal(["hom.txt>/mydir/hom.txt:File", "home.txt>/mydir/home.txt:File", "hometown.txt>/mydir/hometown.txt:File"],
            Show(Plan("COPY hom* /mydir/")));
        Assert.Equal(["home.txt>/mydir/home.txt:File"], Show(Plan("COPY hom?.txt /mydir/")));
        Assert.Equal(["src/a.c>/c/a.c:File", "src/lib/b.c>/c/b.c:File"], Show(Plan("COPY **/*.c /c/")));
        var error = Assert.Throws<DockerfileException>(() => Plan("COPY hom* /mydir"));
        Assert.Contains("does not end in '/'", error.Message);
        Assert.Equal(2, error.Location.Line);
    }

    /// <summary>A directory's contents are copied, not the directory; "." is the whole context (as ignored).</summary>
    [Fact]
    public void DirectoryContents()
    {
        Assert.Equal(["src>/app:Directory", "src/a.c>/app/a.c:File", "src/a.o>/app/a.o:File", "src/lib>/app/lib:Directory",
                "src/lib/b.c>/app/lib/b.c:File"],
            Show(Plan("COPY src /app")));
        Assert.Equal(["empty>/e:Directory"], Show(Plan("COPY empty /e")));
        var all = Show(Plan("COPY . /ctx/", ignore: "*.o\n**/*.o\ndocs\nDockerfile"));
        Assert.Contains(".>/ctx:Directory", all);
        Assert.Contains("src/lib/b.c>/ctx/src/lib/b.c:File", all);
        Assert.DoesNotContain(all, e => e.Contains(".o>", StringComparison.Ordinal) || e.Contains("docs", StringComparison.Ordinal)
            || e.StartsWith("Dockerfile", StringComparison.Ordinal));
    }

    /// <summary>Missing, ignored and outside-the-context sources, and wildcards matching nothing, are errors.</summary>
    [Theory]
    [InlineData("COPY nothere /x", "", "not found")]
    [InlineData("COPY src/a.o /x", "**/*.o", "not found")]
    [InlineData("COPY *.zip /x/", "", "no file in the build context matches")]
    [InlineData("COPY ../secret /x", "", "outside the build context")]
    [InlineData("ADD https://example.com/a.tar /x", "", "URL")]
    public void Errors(string line, string ignore, string reason)
    {
        var error = Assert.Throws<DockerfileException>(() => Plan(line, ignore));
        Assert.Contains(reason, error.Message);
        Assert.Equal(2, error.Location.Line);
    }
}
