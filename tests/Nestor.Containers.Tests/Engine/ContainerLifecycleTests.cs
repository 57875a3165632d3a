using System.Diagnostics;
using System.Formats.Tar;
using System.Text.Json;

namespace Nestor.Containers.Tests.Engine;

/// <summary>The course's Docker commands end to end, against a container that lives across commands (each command a
/// separate nestor process; the container belongs to its monitor).</summary>
public sealed class ContainerLifecycleTests(EngineFixture engine) : IClassFixture<EngineFixture>
{
    /// <summary>run -dit --name → ps -a → exec → attach (scripted input) → logs → start → stop → commit → run the
    /// committed image → export → rm.</summary>
    [Fact]
    public void CourseCommandsWorkEndToEnd()
    {
        string name = $"my-app-{Guid.NewGuid():N}"[..14];
        var run = engine.Container("run", "-dit", "--name", name, EngineFixture.ImageName, "sh");
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();
        Assert.Matches("^[0-9a-f]{64}$", id);

        var ps = engine.Container("ps", "-a");
        Assert.True(ps.Status == 0, ps.ToString());
        Assert.StartsWith("CONTAINER ID", ps.Output);
        string row = ps.Output.Split('\n').Single(line => line.Contains(name));
        Assert.StartsWith(id[..12], row);
        Assert.Contains("Up ", row);

        var exec = engine.Container("exec", name, "sh", "-c", "echo made-by-exec > /root/f; cat /root/f");
        Assert.True(exec.Status == 0, exec.ToString());
        Assert.Equal("made-by-exec\n", exec.Output);
        Assert.Equal(3, engine.Container("exec", name, "sh", "-c", "exit 3").Status);
        Assert.Equal(127, engine.Container("exec", name, "no-such-command").Status);

        var attach = engine.Container(["attach", name], stdin: "echo attached-$((40+2))\nexit 5\n");
        Assert.True(attach.Status == 5, attach.ToString());
        Assert.Contains("attached-42", attach.Output);
        Assert.Contains("attached-42", engine.Container("logs", name).Output);
        Assert.Contains("Exited (5)", engine.Container("ps", "-a").Output.Split('\n').Single(line => line.Contains(name)));

        Assert.Equal(0, engine.Container("start", name).Status);
        Assert.Equal("running", State(name).GetProperty("Status").GetString());
        var stop = engine.Container("stop", "-t", "1", name);
        Assert.True(stop.Status == 0, stop.ToString());
        Assert.False(State(name).GetProperty("Running").GetBoolean());

        string reference = $"committed-{Guid.NewGuid():N}"[..16] + ":v1";
        var commit = engine.Container("commit", name, reference);
        Assert.True(commit.Status == 0, commit.ToString());
        var fromCommit = engine.Container("run", "--rm", reference, "cat", "/root/f");
        Assert.True(fromCommit.Status == 0, fromCommit.ToString());
        Assert.Equal("made-by-exec\n", fromCommit.Output);

        string archive = Path.Combine(engine.Root, $"{name}.tar");
        var export = engine.Container("export", "-o", archive, name);
        Assert.True(export.Status == 0, export.ToString());
        var names = new List<string>();
        using (var reader = new TarReader(File.OpenRead(archive)))
        {
            while (reader.GetNextEntry() is { } entry)
            {
                names.Add(entry.Name.TrimStart('.', '/'));
            }
        }
        Assert.Contains("root/f", names);
        Assert.Contains("bin/busybox", names);

        Assert.Equal(0, engine.Container("rm", name).Status);
        Assert.DoesNotContain(name, engine.Container("ps", "-a").Output);
        Assert.DoesNotContain(id, engine.ContainerIds());
    }

    /// <summary>stop sends SIGTERM, then SIGKILL after -t seconds: a shell as pid 1 has no default action for
    /// SIGTERM (the kernel protects a namespace's init), so only the SIGKILL ends it: status 137.</summary>
    [Fact]
    public void StopEscalatesToKillAfterTheTimeout()
    {
        var run = engine.Container("run", "-d", EngineFixture.ImageName, "sh", "-c", "while true; do sleep 1; done");
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();
        var clock = Stopwatch.StartNew();
        Assert.Equal(0, engine.Container("stop", "-t", "1", id).Status);
        Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(1), $"stopped after {clock.Elapsed}");
        Assert.Equal(137, State(id).GetProperty("ExitCode").GetInt32());
        Assert.Equal("137\n", engine.Container("wait", id).Output);
        Assert.Equal(0, engine.Container("rm", id).Status);
    }

    /// <summary>A container's monitor killed with SIGKILL loses neither the log written so far nor, for the next
    /// command, the fact that the container ended (exit status unknown: 255).</summary>
    [Fact]
    public void KilledMonitorLosesNeitherLogsNorTheEnd()
    {
        var run = engine.Container("run", "-d", EngineFixture.ImageName, "sh", "-c", "echo before-the-kill; exec sleep 1000");
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!engine.Container("logs", id).Output.Contains("before-the-kill") && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(50);
        }
        var state = State(id);
        int monitor = state.GetProperty("MonitorPid").GetInt32();
        int pid = state.GetProperty("Pid").GetInt32();
        Assert.True(monitor > 0 && pid > 0);
        Process.GetProcessById(monitor).Kill();
        Process.GetProcessById(monitor).WaitForExit(5000);
        Assert.Equal("before-the-kill\n", engine.Container("logs", id).Output);
        Assert.True(State(id).GetProperty("Running").GetBoolean()); // its process still runs without the monitor
        Process.GetProcessById(pid).Kill();
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (State(id).GetProperty("Running").GetBoolean() && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(50);
        }
        var after = State(id);
        Assert.Equal("exited", after.GetProperty("Status").GetString());
        Assert.Equal(255, after.GetProperty("ExitCode").GetInt32());
        Assert.Contains("monitor", after.GetProperty("Error").GetString());
        Assert.Equal(0, engine.Container("rm", id).Status);
        Assert.DoesNotContain(File.ReadAllLines("/proc/self/mountinfo"), line => line.Contains(id));
    }

    /// <summary>inspect --explain reads the running container from the kernel: its own pid, mount, uts, ipc and net
    /// namespaces (inodes unlike the host's), the memory limit of its cgroup, Docker's 14 capabilities decoded from
    /// CapEff, seccomp filter mode, its mounts and the overlay's layers with their diff ids.</summary>
    [Fact]
    public void ExplainShowsTheMechanisms()
    {
        var run = engine.Container("run", "-d", "--memory", "24m", EngineFixture.ImageName, "sleep", "1000");
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();
        try
        {
            var explain = engine.Container("inspect", "--explain", id);
            Assert.True(explain.Status == 0, explain.ToString());
            string text = explain.Output;
            foreach (string ns in new[] { "pid", "mnt", "uts", "ipc", "net" })
            {
                string line = text.Split('\n').Single(l => l.TrimStart().StartsWith(ns + " ", StringComparison.Ordinal));
                Assert.Contains("own (isolated)", line);
            }
            Assert.Contains($"memory.limit_in_bytes={24 * 1024 * 1024}", text);
            string effective = text.Split('\n').Single(l => l.TrimStart().StartsWith("CapEff", StringComparison.Ordinal));
            Assert.Contains("(14)", effective);
            Assert.Contains("CAP_NET_BIND_SERVICE", effective);
            Assert.DoesNotContain("CAP_SYS_ADMIN", effective);
            Assert.Contains("Seccomp: mode 2 (filter)", text);
            Assert.Contains(" overlay ", text);
            Assert.Contains(engine.Image.LayerDiffIds[0], text);
            var top = engine.Container("top", id);
            Assert.Contains("sleep 1000", top.Output);
            var stats = engine.Container("stats", "--no-stream", id);
            Assert.True(stats.Status == 0, stats.ToString());
            Assert.Contains("24MiB", stats.Output);
        }
        finally
        {
            engine.Container("rm", "-f", id);
        }
    }

    /// <summary>cp copies a file into a container and back out.</summary>
    [Fact]
    public void CopyGoesBothWays()
    {
        var create = engine.Container("create", EngineFixture.ImageName, "true");
        string id = create.Output.Trim();
        string source = Path.Combine(engine.Root, $"cp-{Guid.NewGuid():N}");
        File.WriteAllText(source, "copied\n");
        Assert.Equal(0, engine.Container("cp", source, $"{id}:/tmp/inside").Status);
        string back = source + ".back";
        var copyOut = engine.Container("cp", $"{id}:/tmp/inside", back);
        Assert.True(copyOut.Status == 0, copyOut.ToString());
        Assert.Equal("copied\n", File.ReadAllText(back));
        Assert.Equal(0, engine.Container("rm", id).Status);
    }

    private JsonElement State(string container)
    {
        var inspect = engine.Container("inspect", container);
        Assert.True(inspect.Status == 0, inspect.ToString());
        using var document = JsonDocument.Parse(inspect.Output);
        return document.RootElement[0].GetProperty("State").Clone();
    }
}
