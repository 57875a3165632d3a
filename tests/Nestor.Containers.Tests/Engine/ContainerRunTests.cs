using System.Text.Json;

namespace Nestor.Containers.Tests.Engine;

/// <summary><c>nestor container run</c> in the foreground: output, Docker's exit statuses, flags, <c>--rm</c>.</summary>
public sealed class ContainerRunTests(EngineFixture engine) : IClassFixture<EngineFixture>
{
    /// <summary>The container's stdout and stderr reach the caller's, and its exit status is the command's.</summary>
    [Theory]
    [InlineData("runc")]
    [InlineData("crun")]
    [InlineData("nestor")]
    public void ForegroundRunRelaysOutputAndExitStatus(string runtime)
    {
        var result = engine.Container("run", "--rm", "--runtime", runtime, EngineFixture.ImageName, "sh", "-c", "echo out; echo err >&2; exit 7");
        Assert.True(result.Status == 7, result.ToString());
        Assert.Equal("out\n", result.Output);
        Assert.Contains("err", result.Error);
    }

    /// <summary>Docker's statuses: 127 for a command not found, 126 for one that cannot be executed, 125 for the
    /// engine's own errors (unknown image, unknown flag, name in use), 128 + signal for a process killed by one.</summary>
    [Fact]
    public void ExitStatusesAreDockers()
    {
        Assert.Equal(127, engine.Container("run", "--rm", EngineFixture.ImageName, "/no/such/program").Status);
        Assert.Equal(126, engine.Container("run", "--rm", EngineFixture.ImageName, "/etc/passwd").Status);
        var unknownImage = engine.Container("run", "--rm", "no-such-image:1", "true");
        Assert.Equal(125, unknownImage.Status);
        Assert.Contains("no-such-image", unknownImage.Error);
        Assert.Equal(125, engine.Container("run", "--no-such-flag", EngineFixture.ImageName, "true").Status);
        // A signal from outside (a namespace's init ignores SIGKILL from inside it): 128 + 9.
        var sleeper = engine.Container("run", "-d", EngineFixture.ImageName, "sleep", "1000");
        Assert.True(sleeper.Status == 0, sleeper.ToString());
        Assert.Equal(0, engine.Container("kill", "-s", "KILL", sleeper.Output.Trim()).Status);
        Assert.Equal($"{128 + 9}\n", engine.Container("wait", sleeper.Output.Trim()).Output);
        Assert.Equal(0, engine.Container("rm", sleeper.Output.Trim()).Status);
        Assert.Equal(0, engine.Container("run", "--rm", EngineFixture.ImageName, "true").Status);
    }

    /// <summary>A name is unique: a second container with it is refused (125), naming the holder.</summary>
    [Fact]
    public void NameInUseIsRefused()
    {
        string name = $"dup-{Guid.NewGuid():N}"[..12];
        var first = engine.Container("create", "--name", name, EngineFixture.ImageName, "true");
        Assert.True(first.Status == 0, first.ToString());
        var second = engine.Container("create", "--name", name, EngineFixture.ImageName, "true");
        Assert.Equal(125, second.Status);
        Assert.Contains(first.Output.Trim(), second.Error);
        Assert.Equal(0, engine.Container("rm", name).Status);
    }

    /// <summary>-e, --env-file, -w, -u, --hostname and the options after the image reach the process.</summary>
    [Fact]
    public void FlagsShapeTheProcess()
    {
        string envFile = Path.Combine(engine.Root, $"env-{Guid.NewGuid():N}");
        File.WriteAllText(envFile, "# comment\nFROM_FILE=yes\n");
        var result = engine.Container("run", "--rm", "-e", "GREETING=hello", "--env-file", envFile, "-w", "/tmp", "-u", "nobody",
            "--hostname", "box1", EngineFixture.ImageName, "sh", "-c", "echo $GREETING $FROM_FILE; pwd; id -u; id -g; hostname");
        Assert.True(result.Status == 0, result.ToString());
        Assert.Equal("hello yes\n/tmp\n65534\n65534\nbox1\n", result.Output);
        // Words after the image, options included, are the container's: `ls -l` is not nestor's -l.
        var listing = engine.Container("run", "--rm", EngineFixture.ImageName, "ls", "-ld", "/tmp");
        Assert.True(listing.Status == 0, listing.ToString());
        Assert.StartsWith("d", listing.Output);
    }

    /// <summary>-i: the caller's input is the container's stdin, and its end closes it.</summary>
    [Fact]
    public void InteractiveRunReadsStdin()
    {
        var result = engine.Container(["run", "--rm", "-i", EngineFixture.ImageName, "sh", "-c", "tr a-z A-Z; echo done"], stdin: "piped text\n");
        Assert.True(result.Status == 0, result.ToString());
        Assert.Equal("PIPED TEXT\ndone\n", result.Output);
    }

    /// <summary>-v HOST:CONTAINER[:ro]: the host directory is seen inside; :ro refuses writes.</summary>
    [Fact]
    public void BindMountsShowHostFilesAndHonourReadOnly()
    {
        string host = Path.Combine(engine.Root, $"bind-{Guid.NewGuid():N}");
        Directory.CreateDirectory(host);
        File.WriteAllText(Path.Combine(host, "note"), "from the host\n");
        var read = engine.Container("run", "--rm", "-v", $"{host}:/data:ro", EngineFixture.ImageName, "sh", "-c", "cat /data/note; touch /data/x");
        Assert.Equal("from the host\n", read.Output);
        Assert.NotEqual(0, read.Status);
        Assert.False(File.Exists(Path.Combine(host, "x")));
        var write = engine.Container("run", "--rm", "-v", $"{host}:/data", EngineFixture.ImageName, "sh", "-c", "echo inside > /data/y");
        Assert.True(write.Status == 0, write.ToString());
        Assert.Equal("inside\n", File.ReadAllText(Path.Combine(host, "y")));
    }

    /// <summary>--memory and --pids-limit become the container's cgroup limits, which it reads in its own cgroup
    /// namespace; --read-only makes / unwritable.</summary>
    [Fact]
    public void LimitsAndReadOnlyRootApply()
    {
        var result = engine.Container("run", "--rm", "--memory", "32m", "--pids-limit", "50", EngineFixture.ImageName, "sh", "-c",
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max");
        Assert.True(result.Status == 0, result.ToString());
        Assert.Equal($"{32 * 1024 * 1024}\n50\n", result.Output);
        var readOnly = engine.Container("run", "--rm", "--read-only", EngineFixture.ImageName, "touch", "/file");
        Assert.NotEqual(0, readOnly.Status);
    }

    /// <summary>--rm leaves nothing: no record or directories, no mount, no cgroup, nothing in the runtime's state.</summary>
    [Fact]
    public void RemoveOnExitLeavesNothing()
    {
        string name = $"rm-{Guid.NewGuid():N}"[..12];
        // The container's default host name is its short id (12 digits), which tells the test who it was; a cgroup
        // namespace hides the cgroup path from the container itself.
        var result = engine.Container("run", "--rm", "--name", name, "--memory", "16m", EngineFixture.ImageName, "hostname");
        Assert.True(result.Status == 0, result.ToString());
        string shortId = result.Output.Trim();
        Assert.Matches("^[0-9a-f]{12}$", shortId);
        Assert.DoesNotContain(engine.ContainerIds(), id => id.StartsWith(shortId, StringComparison.Ordinal));
        Assert.DoesNotContain(File.ReadAllLines("/proc/self/mountinfo"), line => line.Contains(shortId));
        foreach (string controller in new[] { "memory", "pids", "cpu", "devices", "freezer" })
        {
            string parent = Path.Combine("/sys/fs/cgroup", controller, "nestor");
            Assert.False(Directory.Exists(parent) && Directory.EnumerateDirectories(parent, shortId + "*").Any(), controller);
        }
        string runtimeState = Path.Combine(engine.State, "runtime", "runc");
        Assert.False(Directory.Exists(runtimeState) && Directory.EnumerateFileSystemEntries(runtimeState, shortId + "*").Any());
        Assert.False(Directory.Exists(Path.Combine(engine.State, "containers")) && Directory.EnumerateDirectories(Path.Combine(engine.State, "containers"), shortId + "*").Any());
        Assert.Equal(125, engine.Container("inspect", name).Status);
    }

    /// <summary>--network bridge (the default for root) gives the container eth0 with an address on the bridge and
    /// a default route; none leaves only loopback; detach at the end leaves no host interface behind.</summary>
    [Fact]
    public void NetworkModesShapeTheContainersInterfaces()
    {
        var bridge = engine.Container("run", "--rm", EngineFixture.ImageName, "sh", "-c", "ip -o -4 addr show eth0; ip route");
        Assert.True(bridge.Status == 0, bridge.ToString());
        Assert.Contains("inet 10.77.", bridge.Output);
        Assert.Contains("default via 10.77.0.1", bridge.Output);
        var none = engine.Container("run", "--rm", "--network", "none", EngineFixture.ImageName, "sh", "-c", "ls /sys/class/net");
        Assert.True(none.Status == 0, none.ToString());
        Assert.Equal("lo\n", none.Output);
        var host = engine.Container("run", "--rm", "--network", "host", EngineFixture.ImageName, "sh", "-c", "readlink /proc/self/ns/net");
        Assert.Equal(new FileInfo("/proc/self/ns/net").LinkTarget + "\n", host.Output);
    }

    /// <summary>inspect prints Docker's shape: Id, Name with its slash, State, Config, GraphDriver's overlay dirs.</summary>
    [Fact]
    public void InspectIsDockerShaped()
    {
        string name = $"insp-{Guid.NewGuid():N}"[..12];
        var created = engine.Container("create", "--name", name, "-e", "K=V", EngineFixture.ImageName, "echo", "hi");
        Assert.True(created.Status == 0, created.ToString());
        var inspect = engine.Container("inspect", name);
        Assert.True(inspect.Status == 0, inspect.ToString());
        using var document = JsonDocument.Parse(inspect.Output);
        var container = document.RootElement[0];
        Assert.Equal(created.Output.Trim(), container.GetProperty("Id").GetString());
        Assert.Equal(64, container.GetProperty("Id").GetString()!.Length);
        Assert.Equal("/" + name, container.GetProperty("Name").GetString());
        Assert.Equal("created", container.GetProperty("State").GetProperty("Status").GetString());
        Assert.Equal("echo", container.GetProperty("Path").GetString());
        Assert.Contains("K=V", container.GetProperty("Config").GetProperty("Env").EnumerateArray().Select(e => e.GetString()));
        var graph = container.GetProperty("GraphDriver").GetProperty("Data");
        Assert.True(Directory.Exists(graph.GetProperty("UpperDir").GetString()));
        Assert.Equal(engine.Image.LayerDiffIds.Count, graph.GetProperty("LowerDir").GetString()!.Split(':').Length);
        var format = engine.Container("inspect", "-f", "{{.State.Status}} {{.Config.Cmd}}", name);
        Assert.Equal("created [\"echo\",\"hi\"]\n", format.Output);
        Assert.Equal(0, engine.Container("rm", name).Status);
    }
}
