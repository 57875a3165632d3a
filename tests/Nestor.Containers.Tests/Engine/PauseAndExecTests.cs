using System.Text.Json;

namespace Nestor.Containers.Tests.Engine;

/// <summary><c>container pause | unpause</c> (the cgroup freezer) with Docker's messages and states, what exec, stop,
/// kill and commit do to a paused container, and <c>exec -t</c>'s pseudo-terminal; each command a separate nestor
/// process, as the user runs them.</summary>
public sealed class PauseAndExecTests(EngineFixture engine) : IClassFixture<EngineFixture>
{
    // A counter the container advances ten times a second, read from the host through /proc/PID/root.
    private const string Counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

    [Fact]
    public void PauseFreezesTheContainerAndUnpauseLetsItGoOn()
    {
        string name = $"pause-{Guid.NewGuid():N}"[..14];
        var run = engine.Container("run", "-d", "--name", name, EngineFixture.ImageName, "sh", "-c", Counter);
        Assert.True(run.Status == 0, run.ToString());
        int pid = State(name).GetProperty("Pid").GetInt32();
        string count = $"/proc/{pid}/root/tmp/count";
        WaitUntil(() => File.Exists(count) && File.ReadAllText(count).Trim().Length > 0);

        var pause = engine.Container("pause", name);
        Assert.True(pause.Status == 0, pause.ToString());
        Assert.Equal(name + "\n", pause.Output);
        var paused = State(name);
        Assert.Equal("paused", paused.GetProperty("Status").GetString());
        Assert.True(paused.GetProperty("Paused").GetBoolean());
        Assert.True(paused.GetProperty("Running").GetBoolean());
        Assert.Matches(@"  Up [^ ].* \(Paused\)  ", Row(name));
        string frozenAt = File.ReadAllText(count);
        Thread.Sleep(600);
        Assert.Equal(frozenAt, File.ReadAllText(count)); // six ticks later: not one more

        var again = engine.Container("pause", name);
        Assert.Equal(1, again.Status);
        Assert.Contains("is already paused", again.Error);
        var exec = engine.Container("exec", name, "true");
        Assert.NotEqual(0, exec.Status);
        Assert.Contains("is paused, unpause the container before exec", exec.Error);

        // commit of a paused container leaves it paused (commit pauses only what runs).
        string reference = $"paused-{Guid.NewGuid():N}"[..13] + ":v1";
        var commit = engine.Container("commit", name, reference);
        Assert.True(commit.Status == 0, commit.ToString());
        Assert.True(State(name).GetProperty("Paused").GetBoolean());

        var unpause = engine.Container("unpause", name);
        Assert.True(unpause.Status == 0, unpause.ToString());
        Assert.Equal(name + "\n", unpause.Output);
        var running = State(name);
        Assert.Equal("running", running.GetProperty("Status").GetString());
        Assert.False(running.GetProperty("Paused").GetBoolean());
        WaitUntil(() => File.ReadAllText(count) != frozenAt);
        var notPaused = engine.Container("unpause", name);
        Assert.Equal(1, notPaused.Status);
        Assert.Contains("is not paused", notPaused.Error);

        // commit of a running container freezes it only while it copies: afterwards it runs on.
        var runningCommit = engine.Container("commit", name, reference.Replace(":v1", ":v2", StringComparison.Ordinal));
        Assert.True(runningCommit.Status == 0, runningCommit.ToString());
        Assert.Equal("running", State(name).GetProperty("Status").GetString());
        var fromImage = engine.Container("run", "--rm", reference.Replace(":v1", ":v2", StringComparison.Ordinal), "cat", "/tmp/count");
        Assert.True(fromImage.Status == 0 && fromImage.Output.Trim().Length > 0, fromImage.ToString());

        // stop of a paused container works: the stop signal, then SIGKILL, delivered once thawed. A shell as pid 1
        // ignores SIGTERM, so SIGKILL ends it: 137.
        Assert.Equal(0, engine.Container("pause", name).Status);
        var stop = engine.Container("stop", "-t", "1", name);
        Assert.True(stop.Status == 0, stop.ToString());
        var stopped = State(name);
        Assert.Equal("exited", stopped.GetProperty("Status").GetString());
        Assert.False(stopped.GetProperty("Paused").GetBoolean());
        Assert.Equal(137, stopped.GetProperty("ExitCode").GetInt32());
        var notRunning = engine.Container("pause", name);
        Assert.Equal(1, notRunning.Status);
        Assert.Contains("is not running", notRunning.Error);
        Assert.Equal(0, engine.Container("rm", name).Status);
    }

    [Fact]
    public void KillAndForcedRemovalReachAPausedContainer()
    {
        string id = RunSleeping();
        Assert.Equal(0, engine.Container("pause", id).Status);
        var kill = engine.Container("kill", id);
        Assert.True(kill.Status == 0, kill.ToString());
        Assert.Equal("137\n", engine.Container("wait", id).Output);

        string other = RunSleeping();
        Assert.Equal(0, engine.Container("pause", other).Status);
        var remove = engine.Container("rm", "-f", other);
        Assert.True(remove.Status == 0, remove.ToString());
        Assert.DoesNotContain(other, engine.ContainerIds());
        Assert.Equal(0, engine.Container("rm", id).Status);
    }

    [Fact]
    public void ExecWithTtyGetsAPseudoTerminalOfTheContainer()
    {
        string id = RunSleeping();

        // Without -t the process has this command's pipes; with it, a pty of the container's devpts, which its own
        // /dev/pts lists (ttyname resolves it there).
        var plain = engine.Container("exec", id, "tty");
        Assert.Equal("not a tty\n", plain.Output);
        // /proc/PID/stat fields 5, 7 and 8 (proc(5)): the process group, the controlling terminal and its foreground
        // process group.
        var tty = engine.Container("exec", "-t", id, "sh", "-c", "tty; ls /dev/pts; set -- $(cat /proc/$$/stat); echo tty=$7 group=$5 foreground=$8; exit 7");
        Assert.True(tty.Status == 7, tty.ToString());
        string[] lines = tty.Output.Split("\r\n");
        Assert.Matches(@"^/dev/pts/[0-9]+$", lines[0]);
        Assert.Contains(lines[0]["/dev/pts/".Length..], lines[1].Split(' ', StringSplitOptions.RemoveEmptyEntries));
        var facts = lines[2].Split(' ').Select(pair => pair.Split('=')).ToDictionary(pair => pair[0], pair => pair[1]);
        Assert.NotEqual("0", facts["tty"]);
        Assert.Equal(facts["group"], facts["foreground"]);

        // Under a terminal of 33 rows and 101 columns (script(1) gives nestor one), the container's pty has its size.
        string command = $"stty rows 33 cols 101; {EngineFixture.Nestor} container --root {engine.Data} --state {engine.State} exec -t {id} stty size";
        var sized = BusyboxRun("script", "-qec", command, "/dev/null");
        Assert.True(sized.Status == 0, sized.ToString());
        // script's own terminal turns the pty's \r\n into \r\r\n (and .NET's console prints the terminal's keypad
        // mode first).
        Assert.Matches("33 101\r+\n", sized.Output);
        Assert.Equal(0, engine.Container("rm", "-f", id).Status);
    }

    private static CommandResult BusyboxRun(string file, params string[] arguments)
    {
        var start = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = System.Diagnostics.Process.Start(start)!;
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(60_000))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} did not end: {error.Result}");
        }
        return new CommandResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>A detached container that sleeps; its id.</summary>
    private string RunSleeping()
    {
        var run = engine.Container("run", "-d", EngineFixture.ImageName, "sleep", "1000");
        Assert.True(run.Status == 0, run.ToString());
        return run.Output.Trim();
    }

    private string Row(string name) => engine.Container("ps", "-a").Output.Split('\n').Single(line => line.Contains(name, StringComparison.Ordinal));

    private static void WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the condition did not become true within 15 s");
            Thread.Sleep(50);
        }
    }

    private JsonElement State(string container)
    {
        var inspect = engine.Container("inspect", container);
        Assert.True(inspect.Status == 0, inspect.ToString());
        using var document = JsonDocument.Parse(inspect.Output);
        return document.RootElement[0].GetProperty("State").Clone();
    }
}
