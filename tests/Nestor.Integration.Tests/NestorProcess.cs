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
        string path = Path.Combine(Path.GetTempPath(), $"nestor-test-{Guid.NewGuid():N}{extension}");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Tests that boot guests on KVM fail with this explanation when /dev/kvm is absent.</summary>
    public static void RequireKvm()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Fail("This test boots a VM on KVM and this machine has no /dev/kvm. Run the suite on a Linux host with KVM.");
        }
    }
}
