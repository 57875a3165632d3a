using Nestor.Containers.Engine;

namespace Nestor.Containers.Tests.Engine;

/// <summary>The engine's parsing and formats, without containers.</summary>
public sealed class EngineUnitTests
{
    /// <summary>Ids are 64 lower-case hex digits whose short form is never all decimal; names follow
    /// adjective_surname and are never one already taken.</summary>
    [Fact]
    public void IdsAndNamesHaveDockersShape()
    {
        var ids = Enumerable.Range(0, 200).Select(_ => ContainerNames.NewId()).ToList();
        Assert.All(ids, id => Assert.Matches("^[0-9a-f]{64}$", id));
        Assert.All(ids, id => Assert.False(id[..12].All(char.IsAsciiDigit)));
        Assert.Equal(ids.Count, ids.Distinct().Count());
        var taken = new HashSet<string>();
        for (int i = 0; i < 100; i++)
        {
            string name = ContainerNames.NewName(taken);
            Assert.Matches("^[a-z]+_[a-z]+[0-9]?$", name);
            Assert.True(taken.Add(name));
        }
        Assert.True(ContainerNames.IsValid("my-app.1_x"));
        Assert.False(ContainerNames.IsValid("-bad"));
        Assert.False(ContainerNames.IsValid("has space"));
    }

    [Theory]
    [InlineData("64m", 64L * 1024 * 1024)]
    [InlineData("1g", 1024L * 1024 * 1024)]
    [InlineData("8388608", 8388608L)]
    [InlineData("7000k", 7000L * 1024)]
    public void MemoryTakesDockersUnits(string text, long bytes) => Assert.Equal(bytes, CreateOptions.ParseMemory(text));

    [Theory]
    [InlineData("12x")]
    [InlineData("1m")]
    [InlineData("")]
    public void BadMemoryIsTheEnginesError(string text) => Assert.Throws<ContainerEngineException>(() => CreateOptions.ParseMemory(text));

    [Fact]
    public void PortsTakeDockersForms()
    {
        Assert.Equal(new Nestor.Containers.Network.PortMapping("0.0.0.0", 8080, 80, "tcp"), CreateOptions.ParsePort("8080:80"));
        Assert.Equal(new Nestor.Containers.Network.PortMapping("127.0.0.1", 53, 5353, "udp"), CreateOptions.ParsePort("127.0.0.1:53:5353/udp"));
        Assert.Throws<ContainerEngineException>(() => CreateOptions.ParsePort("80"));
        Assert.Throws<ContainerEngineException>(() => CreateOptions.ParsePort("70000:80"));
    }

    [Theory]
    [InlineData("SIGTERM", 15)]
    [InlineData("term", 15)]
    [InlineData("KILL", 9)]
    [InlineData("1", 1)]
    [InlineData("SIGUSR1", 10)]
    public void SignalsByNameOrNumber(string text, int number) => Assert.Equal(number, Signals.Parse(text));

    /// <summary>The log is one JSON object per line with log, stream and time; a partial line waits for its end, and
    /// what was appended is on disk at once (a killed writer loses nothing it wrote).</summary>
    [Fact]
    public void LogIsDockersJsonFileFormat()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nestor-log-{Guid.NewGuid():N}.log");
        try
        {
            var writer = new ContainerLogWriter(path);
            writer.Append("stdout", "one\ntw"u8);
            writer.Append("stderr", "err\n"u8);
            var beforeFlush = ContainerLogReader.Read(path);
            Assert.Equal(["one\n", "err\n"], beforeFlush.Select(entry => entry.Text));
            writer.Append("stdout", "o\n\"quoted\"\n"u8);
            writer.Dispose();
            var entries = ContainerLogReader.Read(path);
            Assert.Equal(["one\n", "err\n", "two\n", "\"quoted\"\n"], entries.Select(entry => entry.Text));
            Assert.Equal(["stdout", "stderr", "stdout", "stdout"], entries.Select(entry => entry.Stream));
            string first = File.ReadLines(path).First();
            Assert.Matches("^\\{\"log\":\"one\\\\n\",\"stream\":\"stdout\",\"time\":\"\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d+Z\"\\}$", first);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A path in a container is resolved inside its root: '..' and absolute symbolic links stay in it.</summary>
    [Fact]
    public void ContainerPathsStayInsideTheRoot()
    {
        string root = Path.Combine(Path.GetTempPath(), $"nestor-root-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "etc"));
            File.CreateSymbolicLink(Path.Combine(root, "escape"), "/etc");
            Assert.Equal(Path.Combine(root, "etc/passwd"), ContainerEngine.ResolveInside(root, "/../../etc/passwd"));
            Assert.Equal(Path.Combine(root, "etc/passwd"), ContainerEngine.ResolveInside(root, "/escape/passwd"));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
