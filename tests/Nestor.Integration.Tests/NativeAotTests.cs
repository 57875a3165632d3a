using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Nestor.Integration.Tests;

/// <summary>The lean nestor, published once per test run with scripts/publish (NativeAOT) into this test's output
/// directory. scripts/publish keeps its intermediate files in artifacts/build/, so after scripts/test's own publish,
/// or any earlier one with the same sources, this publish only copies (seconds); from a clean clone it compiles
/// (a minute or two).</summary>
public sealed class NativeAotBuild
{
    public NativeAotBuild()
    {
        string repository = FindRepository();
        Directory = Path.Combine(AppContext.BaseDirectory, "nativeaot");
        var info = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = repository };
        info.ArgumentList.Add(Path.Combine(repository, "scripts", "publish"));
        info.ArgumentList.Add(Directory);
        var clock = Stopwatch.StartNew();
        using var p = Process.Start(info)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            p.Kill(entireProcessTree: true);
            throw new InvalidOperationException("scripts/publish did not finish within 15 minutes");
        }
        PublishTime = clock.Elapsed;
        PublishLog = stdout.Result + stderr.Result;
        PublishStatus = p.ExitCode;
        Executable = Path.Combine(Directory, "nestor");
    }

    public string Directory { get; }

    public string Executable { get; }

    public int PublishStatus { get; }

    public string PublishLog { get; }

    public TimeSpan PublishTime { get; }

    /// <summary>Runs the published executable itself (no dotnet host), as a user of the lean build would.</summary>
    internal NestorResult Run(params string[] args)
    {
        Assert.True(PublishStatus == 0, $"scripts/publish failed with status {PublishStatus}:\n{PublishLog}");
        var info = new ProcessStartInfo(Executable) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var p = Process.Start(info)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(2)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{Executable} {string.Join(' ', args)} did not finish within 2 minutes");
        }
        return new NestorResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    private static string FindRepository()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "Nestor.slnx")))
            {
                return d.FullName;
            }
        }
        throw new InvalidOperationException($"no Nestor.slnx above {AppContext.BaseDirectory}");
    }
}

/// <summary>The NativeAOT build behaves as the JIT build does (the one every other test runs): same exit statuses,
/// same registers, the same NestorOS output and counts, the same errors. Only times may differ.</summary>
public class NativeAotTests(NativeAotBuild aot, ITestOutputHelper output) : IClassFixture<NativeAotBuild>
{
    /// <summary>mov edx,0xf4; mov eax,42; out dx,eax; hlt: the README's 12-byte guest.</summary>
    private static readonly byte[] Exit42 = [0xBA, 0xF4, 0x00, 0x00, 0x00, 0xB8, 0x2A, 0x00, 0x00, 0x00, 0xEF, 0xF4];

    [Fact]
    public void The_publish_is_one_native_executable()
    {
        output.WriteLine($"scripts/publish took {aot.PublishTime.TotalSeconds:0.0} s; {aot.PublishLog.Trim()}");
        Assert.True(aot.PublishStatus == 0, aot.PublishLog);
        var header = new byte[4];
        using (var f = File.OpenRead(aot.Executable))
        {
            f.ReadExactly(header);
        }
        Assert.Equal("\u007fELF"u8.ToArray(), header);
        // No IL, no runtime configuration: nothing for a dotnet host to load.
        Assert.Empty(Directory.GetFiles(aot.Directory, "*.dll"));
        Assert.Empty(Directory.GetFiles(aot.Directory, "*.runtimeconfig.json"));
        Assert.Equal(NestorProcess.Run("--version").Stdout, aot.Run("--version").Stdout);
    }

    [Fact]
    public void The_12_byte_exit42_guest_runs_on_sim_with_the_JIT_builds_status_and_registers()
    {
        string guest = NestorProcess.WriteTemp(Exit42, ".bin");
        try
        {
            var native = aot.Run("run", "--engine", "sim", "--flat", guest, "--dump-state", "-");
            Assert.True(native.ExitCode == 42, native.ToString());
            var jit = NestorProcess.Run("run", "--engine", "sim", "--flat", guest, "--dump-state", "-");
            Assert.Equal(jit.ExitCode, native.ExitCode);
            Assert.Equal(jit.Stdout, native.Stdout);
            Assert.Equal("0x2a", JsonNode.Parse(native.Stdout)!["rax"]!.GetValue<string>());
        }
        finally
        {
            File.Delete(guest);
        }
    }

    [Fact]
    public void The_12_byte_exit42_guest_runs_on_kvm_with_the_JIT_builds_status_and_registers()
    {
        NestorProcess.RequireKvm();
        string guest = NestorProcess.WriteTemp(Exit42, ".bin");
        try
        {
            var native = aot.Run("run", "--engine", "kvm", "--flat", guest, "--dump-state", "-");
            Assert.True(native.ExitCode == 42, native.ToString());
            var jit = NestorProcess.Run("run", "--engine", "kvm", "--flat", guest, "--dump-state", "-");
            Assert.Equal(jit.Stdout, native.Stdout);
        }
        finally
        {
            File.Delete(guest);
        }
    }

    /// <summary>NestorOS's default workload on sim: Iced's decoder, the interpreter and the JSON report under
    /// NativeAOT. Everything but the times is deterministic on sim, so the two reports must be equal.</summary>
    [Fact]
    public void NestorOS_runs_on_sim_with_the_JIT_builds_outcome_output_and_counts()
    {
        var native = aot.Run("run", "--json");
        Assert.True(native.ExitCode == 0, native.ToString());
        var report = JsonNode.Parse(native.Stdout)!;
        Assert.Equal("debug-exit", report["outcome"]!["kind"]!.GetValue<string>());
        string serial = report["serial"]!.GetValue<string>();
        Assert.Matches(new Regex(@"^RESULT init programs=\d+ failures=0$", RegexOptions.Multiline), serial);
        var jit = NestorProcess.Run(TimeSpan.FromMinutes(5), "run", "--json");
        Assert.True(jit.ExitCode == 0, jit.ToString());
        Assert.Equal(WithoutTimes(JsonNode.Parse(jit.Stdout)!), WithoutTimes(report));
    }

    [Fact]
    public void Bad_input_gives_the_JIT_builds_message_and_status()
    {
        var native = aot.Run("run", "--no-such-option");
        var jit = NestorProcess.Run("run", "--no-such-option");
        Assert.Equal(120, native.ExitCode);
        Assert.Equal(jit.Stderr, native.Stderr);
    }

    /// <summary>The report as text with every wall-clock figure (names ending in _ns or _per_second) removed.</summary>
    private static string WithoutTimes(JsonNode node)
    {
        var copy = node.DeepClone();
        Strip(copy);
        return copy.ToJsonString();

        static void Strip(JsonNode? n)
        {
            switch (n)
            {
                case JsonObject o:
                    foreach (var name in o.Select(p => p.Key).Where(k => k.EndsWith("_ns", StringComparison.Ordinal) || k.EndsWith("_per_second", StringComparison.Ordinal)).ToList())
                    {
                        o.Remove(name);
                    }
                    foreach (var p in o)
                    {
                        Strip(p.Value);
                    }
                    break;
                case JsonArray a:
                    foreach (var item in a)
                    {
                        Strip(item);
                    }
                    break;
            }
        }
    }
}
