using System.Diagnostics;
using Nestor.Hypervisor.BuiltIn;
using Iced.Intel;

namespace Nestor.Integration.Tests;

/// <summary>The result of running the real <c>nestor</c> command.</summary>
internal sealed record NestorResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the built <c>nestor</c> command as a separate process, exactly as a user would.</summary>
internal static class NestorProcess
{
    private static readonly string Dll = Path.Combine(AppContext.BaseDirectory, "nestor.dll");

    public static NestorResult Run(params string[] args) => Run(TimeSpan.FromSeconds(60), args);

    public static NestorResult Run(TimeSpan limit, params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add("exec");
        info.ArgumentList.Add(Dll);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var p = Process.Start(info)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"nestor {string.Join(' ', args)} did not finish within {limit.TotalSeconds} s");
        }
        return new NestorResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Assembles a 64-bit guest and writes it to a temporary file as raw code.</summary>
    public static string FlatGuest(Action<Assembler> emit) => WriteTemp(GuestAssembler.Assemble(emit), ".bin");

    public static string WriteTemp(byte[] bytes, string extension)
    {
        string path = TempPath(extension);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>A fresh path in this test run's own temporary directory, which is deleted with everything in it when
    /// the test process exits, so that no guest or log is left behind even by a test that fails before its own
    /// clean-up (or has none).</summary>
    public static string TempPath(string extension) => Path.Combine(RunDirectory.Value, $"nestor-test-{Guid.NewGuid():N}{extension}");

    private static readonly Lazy<string> RunDirectory = new(() =>
    {
        string directory = Directory.CreateTempSubdirectory($"nestor-tests-{Environment.ProcessId}-").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(directory, recursive: true);
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        };
        return directory;
    });

    /// <summary>Tests that boot guests on KVM fail with this explanation when /dev/kvm is absent.</summary>
    public static void RequireKvm()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Fail("This test boots a VM on KVM and this machine has no /dev/kvm. Run the suite on a Linux host with KVM.");
        }
    }
}
