using System.Text.Json;
using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>The runtime-spec's lifecycle (runtime.md "State", "Operations", "Lifecycle"): creating → created →
/// running → stopped, the errors for operations in the wrong state or on unknown ids, bad configurations, and the
/// hooks in their order with the state on stdin.</summary>
public sealed class RuntimeLifecycleTests : IDisposable
{
    private readonly RuntimeUnderTest runtime = new();

    public void Dispose() => runtime.Dispose();

    [Fact]
    public void StatusGoesFromCreatedToRunningToStopped()
    {
        using var bundle = new BusyboxBundle(["sleep", "60"]);
        bundle.Write();
        string id = RuntimeUnderTest.UniqueId("life");
        var nestor = runtime.Runtime;
        nestor.Create(id, bundle.Directory, new RuntimeIo());
        var created = nestor.State(id);
        Assert.Equal("created", created.Status);
        Assert.Equal(id, created.Id);
        Assert.Equal(bundle.Directory, created.Bundle);
        Assert.True(created.Pid > 0);
        Assert.Contains(id, nestor.List());
        // The init waits: it has not executed sleep yet.
        Assert.DoesNotContain("sleep", File.ReadAllText($"/proc/{created.Pid}/cmdline"));

        Assert.Throws<ContainerRuntimeException>(() => nestor.Delete(id));
        nestor.Start(id);
        var running = nestor.State(id);
        Assert.Equal("running", running.Status);
        Assert.Equal(created.Pid, running.Pid);
        Assert.StartsWith("sleep", File.ReadAllText($"/proc/{running.Pid}/cmdline"));
        var again = Assert.Throws<ContainerRuntimeException>(() => nestor.Start(id));
        Assert.Contains("running", again.Message);
        Assert.Throws<ContainerRuntimeException>(() => nestor.Delete(id));

        nestor.Kill(id, ProcessCalls.KillSignal);
        Assert.Equal(128 + ProcessCalls.KillSignal, nestor.WaitForExit(id));
        var stopped = nestor.State(id);
        Assert.Equal("stopped", stopped.Status);
        Assert.Null(stopped.Pid);
        Assert.Contains("stopped", Assert.Throws<ContainerRuntimeException>(() => nestor.Kill(id, 15)).Message);
        Assert.Contains("stopped", Assert.Throws<ContainerRuntimeException>(() => nestor.Start(id)).Message);

        nestor.Delete(id);
        Assert.DoesNotContain(id, nestor.List());
        Assert.False(Directory.Exists(Path.Combine(runtime.StateRoot, id)));
        Assert.Contains("does not exist", Assert.Throws<ContainerRuntimeException>(() => nestor.State(id)).Message);
    }

    [Fact]
    public void ForcedDeleteKillsACreatedContainer()
    {
        using var bundle = new BusyboxBundle(["true"]);
        bundle.Write();
        string id = RuntimeUnderTest.UniqueId("force");
        runtime.Runtime.Create(id, bundle.Directory, new RuntimeIo());
        int pid = runtime.Runtime.State(id).Pid!.Value;
        runtime.Runtime.Delete(id, force: true);
        Assert.Null(ProcessCalls.StartTime(pid));
        Assert.Empty(runtime.Runtime.List());
    }

    [Fact]
    public void DuplicateAndInvalidIdsAreRefused()
    {
        using var bundle = new BusyboxBundle(["true"]);
        bundle.Write();
        string id = RuntimeUnderTest.UniqueId("dup");
        runtime.Runtime.Create(id, bundle.Directory, new RuntimeIo());
        Assert.Contains("already exists", Assert.Throws<ContainerRuntimeException>(() => runtime.Runtime.Create(id, bundle.Directory, new RuntimeIo())).Message);
        Assert.Equal("created", runtime.Runtime.State(id).Status);
        Assert.Contains("invalid container id", Assert.Throws<ContainerRuntimeException>(() => runtime.Runtime.Create("../escape", bundle.Directory, new RuntimeIo())).Message);
        Assert.Contains("does not exist", Assert.Throws<ContainerRuntimeException>(() => runtime.Runtime.Start("no-such-container")).Message);
    }

    [Fact]
    public void BadConfigurationsAreClearErrorsAndLeaveNoState()
    {
        using var bundle = new BusyboxBundle(["true"]);
        var nestor = runtime.Runtime;
        Assert.Contains("no config.json", Assert.Throws<ContainerRuntimeException>(() => nestor.Create("missing", bundle.Directory, new RuntimeIo())).Message);

        File.WriteAllText(Path.Combine(bundle.Directory, "config.json"), "{ \"ociVersion\": \"1.2.0\", \"process\": ");
        Assert.Contains("malformed", Assert.Throws<ContainerRuntimeException>(() => nestor.Create("malformed", bundle.Directory, new RuntimeIo())).Message);

        bundle.Spec.Linux!.Namespaces!.Add(new SpecNamespace { Type = "bogus" });
        bundle.Write();
        Assert.Contains("unknown namespace type 'bogus'", Assert.Throws<ContainerRuntimeException>(() => nestor.Create("bogus", bundle.Directory, new RuntimeIo())).Message);
        bundle.Spec.Linux.Namespaces.RemoveAt(bundle.Spec.Linux.Namespaces.Count - 1);

        // A failure inside the init names its step.
        bundle.Spec.Mounts!.Add(new SpecMount { Destination = "/data", Type = "bind", Source = "/nonexistent-" + Guid.NewGuid().ToString("N"), Options = ["bind"] });
        bundle.Write();
        var failure = Assert.Throws<ContainerRuntimeException>(() => nestor.Create("badmount", bundle.Directory, new RuntimeIo()));
        Assert.Contains("/data", failure.Message);
        Assert.Contains("does not exist", failure.Message);
        bundle.Spec.Mounts.RemoveAt(bundle.Spec.Mounts.Count - 1);

        // A program that is not there fails start (the exec), not create.
        bundle.Spec.Process!.Args = ["no-such-program"];
        bundle.Write();
        nestor.Create("noprogram", bundle.Directory, new RuntimeIo());
        Assert.Contains("executable file not found", Assert.Throws<ContainerRuntimeException>(() => nestor.Start("noprogram")).Message);
        Assert.Equal("stopped", WaitStopped("noprogram"));
        nestor.Delete("noprogram");
        Assert.Empty(nestor.List());
    }

    private string WaitStopped(string id)
    {
        runtime.Runtime.WaitForExit(id);
        return runtime.Runtime.State(id).Status;
    }

    /// <summary>Each hook kind appends its name to a log in a directory bound into the container (startContainer runs
    /// inside it after pivot_root); prestart also saves its stdin, the state.</summary>
    [Fact]
    public void HooksRunInTheirOrderWithTheStateOnStdin()
    {
        using var bundle = new BusyboxBundle(["sh", "-c", "echo process >> /hooks/log"]);
        string logDirectory = Path.Combine(bundle.Directory, "hooks");
        Directory.CreateDirectory(logDirectory);
        string log = Path.Combine(logDirectory, "log");
        SpecHook Hook(string name, string logPath, string shell = "/bin/sh") =>
            new() { Path = shell, Args = ["sh", "-c", $"cat > {logPath}.{name}.json; echo {name} >> {logPath}"] };
        bundle.Spec.Mounts!.Add(new SpecMount { Destination = "/hooks", Type = "bind", Source = logDirectory, Options = ["rbind"] });
        bundle.Spec.Hooks = new SpecHooks
        {
            Prestart = [Hook("prestart", log)],
            CreateRuntime = [Hook("createRuntime", log)],
            CreateContainer = [Hook("createContainer", log)],
            StartContainer = [Hook("startContainer", "/hooks/log")],
            Poststart = [Hook("poststart", log)],
            Poststop = [Hook("poststop", log)],
        };
        var (status, _, stderr) = runtime.Run(bundle);
        Assert.True(status == 0, stderr);
        var order = File.ReadAllLines(log);
        // poststart runs after start returns and may race the process's own line; the rest is ordered.
        Assert.Equal(["prestart", "createRuntime", "createContainer", "startContainer"], order[..4]);
        Assert.Equal("poststop", order[^1]);
        Assert.Contains("process", order);
        Assert.Contains("poststart", order);
        var state = JsonSerializer.Deserialize(File.ReadAllText(log + ".prestart.json"), RuntimeSpecJson.Default.SpecState)!;
        Assert.Equal("creating", state.Status);
        Assert.Equal(bundle.Directory, state.Bundle);
        Assert.StartsWith("run-", state.Id);
    }

    [Fact]
    public void AFailingCreateRuntimeHookFailsCreate()
    {
        using var bundle = new BusyboxBundle(["true"]);
        bundle.Spec.Hooks = new SpecHooks { CreateRuntime = [new SpecHook { Path = "/bin/sh", Args = ["sh", "-c", "exit 3"] }] };
        bundle.Write();
        var failure = Assert.Throws<ContainerRuntimeException>(() => runtime.Runtime.Create("hookfail", bundle.Directory, new RuntimeIo()));
        Assert.Contains("createRuntime hook 0", failure.Message);
        Assert.Contains("3", failure.Message);
        Assert.Empty(runtime.Runtime.List());
    }
}
