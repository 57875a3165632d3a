using System.Text.Json;
using Nestor.Cli.Commands.Host;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Hosting.ControlApi;
using Nestor.Tests.Shared;

namespace Nestor.Integration.Tests;

/// <summary><c>nestor host ctl</c> and <c>nestor host top</c> end to end: the built command, as a separate process,
/// against a control API server in this process over real VMs on the software machine.</summary>
public sealed class HostApiTests : IDisposable
{
    private readonly string socketPath = NestorProcess.TempPath(".sock");
    private readonly SpinningVmHost host = new(["web", "db"], running: false);
    private readonly ControlApiServer server;

    public HostApiTests()
    {
        server = ControlApiServer.Start(socketPath, host);
    }

    public void Dispose()
    {
        server.Dispose();
        host.Dispose();
    }

    private NestorResult Ctl(params string[] args) => NestorProcess.Run(["host", "ctl", socketPath, .. args]);

    [Fact]
    public void Ctl_lists_gets_pauses_resumes_changes_cpu_and_stops_through_the_socket()
    {
        var list = Ctl("list");
        Assert.True(list.ExitCode == 0, list.ToString());
        var lines = list.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("NAME", lines[0]);
        Assert.Equal(["web", "db"], lines.Skip(1).Select(l => l.Split(' ')[0]));
        Assert.All(lines.Skip(1), l => Assert.Contains("Paused", l));

        var resumed = Ctl("resume", "web");
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        Assert.StartsWith("web: Running", resumed.Stdout);
        Assert.Equal(HostedVmState.Running, host.Get("web").State);

        var cpu = Ctl("cpu", "web", "--shares", "2000", "--limit", "40");
        Assert.True(cpu.ExitCode == 0, cpu.ToString());
        Assert.Equal(new CpuControls(2000, 0, 40), host.Get("web").Cpu);
        Assert.Contains("limit 40%", cpu.Stdout);
        Assert.Equal(0, Ctl("cpu", "web", "--limit", "none").ExitCode);
        Assert.Null(host.Get("web").Cpu.LimitPercent);

        Assert.Equal(0, Ctl("pause", "web").ExitCode);
        var get = Ctl("get", "web", "--json");
        Assert.True(get.ExitCode == 0, get.ToString());
        var document = JsonDocument.Parse(get.Stdout).RootElement;
        Assert.Equal("Paused", document.GetProperty("state").GetString());
        var instructions = document.GetProperty("counters").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "instructions_retired");
        Assert.True(instructions.GetProperty("value").GetUInt64() > 0, "web ran while it was resumed");

        var stop = Ctl("stop", "db");
        Assert.True(stop.ExitCode == 0, stop.ToString());
        Assert.StartsWith("db: Stopped", stop.Stdout);
        var hostCounters = Ctl("host");
        Assert.Contains("host_cpus", hostCounters.Stdout);
    }

    [Fact]
    public void Ctl_says_clearly_when_the_socket_is_missing_or_the_host_says_no()
    {
        Assert.Equal(0, Ctl("resume", "db").ExitCode); // db was paused: resume is allowed
        var again = Ctl("resume", "db");
        Assert.Equal(120, again.ExitCode);
        Assert.Contains("409", again.Stderr);

        var unknown = Ctl("get", "nobody");
        Assert.Equal(120, unknown.ExitCode);
        Assert.Contains("there is no VM named 'nobody'", unknown.Stderr);

        var noName = Ctl("pause");
        Assert.Equal(120, noName.ExitCode);
        Assert.Contains("needs the VM's name", noName.Stderr);

        var missing = NestorProcess.Run("host", "ctl", socketPath + ".absent", "list");
        Assert.Equal(120, missing.ExitCode);
        Assert.Contains("there is no control API socket", missing.Stderr);
        Assert.Contains("--api-socket", missing.Stderr);
        Assert.DoesNotContain("   at ", missing.Stderr); // no stack trace
    }

    [Fact]
    public void Top_prints_plain_lines_when_not_on_a_terminal_with_exits_per_second_from_two_samples()
    {
        host.Resume("web");
        var top = NestorProcess.Run("host", "top", socketPath, "--count", "2", "--interval", "0.5");
        Assert.True(top.ExitCode == 0, top.ToString());
        Assert.DoesNotContain("\e[", top.Stdout); // no escape sequences into a pipe
        var lines = top.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, lines.Length); // two views of two VMs
        var web = lines.Where(l => l.Contains(" vm=web ")).ToList();
        var db = lines.Where(l => l.Contains(" vm=db ")).ToList();
        Assert.Equal(2, web.Count);
        Assert.All(web, l => Assert.Contains("state=Running", l));
        Assert.All(db, l => Assert.Contains("state=Paused", l));
        // The spinning guest exits once per loop iteration: a running VM has exits every second, a paused one none.
        Assert.All(web, l => Assert.True(Field(l, "exits_per_s") > 0, l));
        Assert.All(db, l => Assert.Equal(0, Field(l, "exits_per_s")));
        Assert.All(lines, l => Assert.Contains("shared=- ballooned=- swapped=-", l));
    }

    [Fact]
    public void Top_frame_on_a_terminal_is_a_table_with_a_column_per_measure()
    {
        using var client = new ControlApiClient(socketPath);
        var before = new HostTopCommand.Sample(client.List(), client.HostCounters(), System.Diagnostics.Stopwatch.GetTimestamp(), DateTime.UtcNow);
        var frame = HostTopCommand.Frame(before, before, socketPath);
        var lines = frame.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(socketPath, lines[0]);
        Assert.Equal(["NAME", "STATE", "CPU", "RUN", "READY", "EXITS/S", "MEMORY", "SHARED", "BALLOONED", "SWAPPED"],
            lines[1].Split(' ', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("web", lines[2]);
        Assert.Contains("16.0 MiB", lines[2]); // memory_size of the 16 MiB guest
    }

    [Fact]
    public async Task Host_run_serves_the_api_socket_that_ctl_drives_until_the_host_ends()
    {
        string apiSocket = NestorProcess.TempPath(".sock");
        var info = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["exec", Path.Combine(AppContext.BaseDirectory, "nestor.dll"), "host", "run",
            "--vm", "a=builtin:spin", "--vm", "b=builtin:spin", "--api-socket", apiSocket, "--timeout", "120"])
        {
            info.ArgumentList.Add(a);
        }
        using var run = System.Diagnostics.Process.Start(info)!;
        var stdout = run.StandardOutput.ReadToEndAsync();
        var stderr = run.StandardError.ReadToEndAsync();
        try
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            while (!File.Exists(apiSocket))
            {
                if (run.HasExited)
                {
                    Assert.Fail($"nestor host run ended before it made its socket: {await stderr}");
                }
                Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), "no socket within 60 s");
                Thread.Sleep(50);
            }
            var list = NestorProcess.Run("host", "ctl", apiSocket, "list");
            Assert.True(list.ExitCode == 0, list.ToString());
            Assert.Equal(["a", "b"], list.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(l => l.Split(' ')[0]));
            var pause = NestorProcess.Run("host", "ctl", apiSocket, "pause", "a");
            Assert.True(pause.ExitCode == 0, pause.ToString());
            Assert.StartsWith("a: Paused", pause.Stdout);
            Assert.Equal(0, NestorProcess.Run("host", "ctl", apiSocket, "stop", "a").ExitCode);
            Assert.Equal(0, NestorProcess.Run("host", "ctl", apiSocket, "stop", "b").ExitCode);
            Assert.True(run.WaitForExit(TimeSpan.FromSeconds(60)), "the host ended once its VMs were stopped");
            Assert.Contains("stopped by the operator", await stdout);
            Assert.False(File.Exists(apiSocket)); // removed when the host ended
        }
        finally
        {
            if (!run.HasExited)
            {
                run.Kill(entireProcessTree: true);
            }
        }
    }

    [Fact]
    public async Task Ctl_balloon_sets_a_vms_balloon_and_its_held_memory_falls_and_a_vm_without_one_is_refused()
    {
        string apiSocket = NestorProcess.TempPath(".sock");
        var info = new System.Diagnostics.ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["exec", Path.Combine(AppContext.BaseDirectory, "nestor.dll"), "host", "run", "--host-cpus", "2", "--host-swap", "64M",
            "--vm", "a=builtin:nestoros,technique=hw,memory=16M,min=4M,balloon,cmdline=memtouch 8 seq ; balloon wait 2048 ; compute 20000",
            "--vm", "b=builtin:spin", "--api-socket", apiSocket, "--timeout", "300"])
        {
            info.ArgumentList.Add(a);
        }
        using var run = System.Diagnostics.Process.Start(info)!;
        var stdout = run.StandardOutput.ReadToEndAsync();
        var stderr = run.StandardError.ReadToEndAsync();
        JsonElement Balloon()
        {
            var shown = NestorProcess.Run("host", "ctl", apiSocket, "balloon", "a", "--json");
            Assert.True(shown.ExitCode == 0, shown.ToString());
            return JsonDocument.Parse(shown.Stdout).RootElement;
        }
        void WaitFor(Func<bool> condition, string what)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            while (!condition())
            {
                Assert.False(run.HasExited, $"nestor host run ended before {what}");
                Assert.True(watch.Elapsed < TimeSpan.FromMinutes(3), $"not within 3 minutes: {what}");
                Thread.Sleep(100);
            }
        }
        try
        {
            WaitFor(() => File.Exists(apiSocket), "it made its socket");
            WaitFor(() => NestorProcess.Run("host", "ctl", apiSocket, "get", "a", "--json") is { ExitCode: 0 } got &&
                JsonDocument.Parse(got.Stdout).RootElement.GetProperty("state").GetString() == "Running", "VM a was powered on");
            ulong before = 0;
            WaitFor(() => (before = Balloon().GetProperty("held_bytes").GetUInt64()) >= 12UL << 20, "VM a held 12 MiB");
            var set = NestorProcess.Run("host", "ctl", apiSocket, "balloon", "a", "8");
            Assert.True(set.ExitCode == 0, set.ToString());
            Assert.Contains("target set to 8 MiB", set.Stdout);
            JsonElement after = default;
            WaitFor(() => (after = Balloon()).GetProperty("inflated_pages").GetInt64() == 2048, "the guest inflated 2048 pages");
            Assert.True(after.GetProperty("set_by_operator").GetBoolean());
            ulong held = after.GetProperty("held_bytes").GetUInt64();
            Assert.True(held <= before - (7UL << 20), $"VM a held {before} bytes before the balloon and {held} after");

            var refused = NestorProcess.Run("host", "ctl", apiSocket, "balloon", "b", "8");
            Assert.Equal(120, refused.ExitCode);
            Assert.Contains("has no balloon", refused.Stderr);
            Assert.Equal(0, NestorProcess.Run("host", "ctl", apiSocket, "stop", "b").ExitCode);
            Assert.True(run.WaitForExit(TimeSpan.FromMinutes(3)), "the host ended");
            string output = await stdout;
            Assert.DoesNotContain("nestor:", await stderr);
            Assert.Contains("[a] RESULT balloon-wait pages=2048 actual=2048 target=2048", output);
            Assert.Contains("[a] RESULT compute n=20000 primes=2262", output);
        }
        finally
        {
            if (!run.HasExited)
            {
                run.Kill(entireProcessTree: true);
            }
        }
    }

    private static double Field(string line, string key) =>
        double.Parse(line.Split(' ').Single(f => f.StartsWith(key + "=", StringComparison.Ordinal))[(key.Length + 1)..],
            System.Globalization.CultureInfo.InvariantCulture);
}
