using System.Diagnostics;

namespace Nestor.Containers.Tests.Network;

/// <summary>What a finished host command printed and returned.</summary>
internal sealed record ProcessOutcome(int ExitCode, string Output, string Errors)
{
    public override string ToString() => $"exit {ExitCode}; stdout: {Output}; stderr: {Errors}";
}

/// <summary>Host commands the network and chroot tests run (ip, nft, unshare, nsenter, curl, gcc, crun, runc,
/// nestor), with a time limit so that a hung command fails its test instead of hanging the run.</summary>
internal static class HostProcess
{
    /// <summary>The nestor command built with the tests.</summary>
    public static string Nestor => Path.Combine(AppContext.BaseDirectory, "nestor");

    public static ProcessOutcome Run(string program, params string[] arguments) => Run(TimeSpan.FromSeconds(60), program, arguments);

    public static ProcessOutcome Run(TimeSpan limit, string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = Process.Start(start)!;
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(limit))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            throw new TimeoutException($"{program} {string.Join(' ', arguments)} did not finish in {limit.TotalSeconds} s");
        }
        return new ProcessOutcome(process.ExitCode, output.Result, errors.Result);
    }

    /// <summary>Runs a command given as one array (program first).</summary>
    public static ProcessOutcome RunCommand(string[] command) => Run(command[0], command[1..]);

    /// <summary>Runs and asserts success.</summary>
    public static string Check(string program, params string[] arguments)
    {
        var outcome = Run(program, arguments);
        Assert.True(outcome.ExitCode == 0, $"{program} {string.Join(' ', arguments)}: {outcome}");
        return outcome.Output;
    }
}
