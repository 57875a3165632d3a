using System.Diagnostics;
using System.Text.Json;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Runtime;

/// <summary>Runs the runtime-spec's hooks (config.md "POSIX-platform Hooks"): each hook's path with its args (args[0]
/// is argv[0], as execv(3) takes it) and exactly its env, the container's state JSON on stdin, killed after its
/// timeout. A failing prestart/createRuntime/createContainer/startContainer hook fails the operation; a failing
/// poststart/poststop hook is only reported (runtime.md "Lifecycle", steps 9 and 11).</summary>
internal static class HookRunner
{
    public static void Run(string phase, IReadOnlyList<SpecHook>? hooks, SpecState state)
    {
        if (hooks is null)
        {
            return;
        }
        string input = JsonSerializer.Serialize(state, RuntimeSpecJson.Default.SpecState);
        for (int index = 0; index < hooks.Count; index++)
        {
            RunOne(phase, index, hooks[index], input);
        }
    }

    /// <summary>Runs the hooks, writing a failure to standard error instead of throwing.</summary>
    public static void RunReportingFailures(string phase, IReadOnlyList<SpecHook>? hooks, SpecState state)
    {
        try
        {
            Run(phase, hooks, state);
        }
        catch (ContainerRuntimeException exception)
        {
            Console.Error.WriteLine($"nestor: warning: {exception.Message}");
        }
    }

    private static void RunOne(string phase, int index, SpecHook hook, string input)
    {
        var start = new ProcessStartInfo(hook.Path)
        {
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        if (hook.Args is { Count: > 1 })
        {
            foreach (string argument in hook.Args.Skip(1))
            {
                start.ArgumentList.Add(argument);
            }
        }
        start.Environment.Clear();
        foreach (string entry in hook.Env ?? [])
        {
            int equals = entry.IndexOf('=');
            if (equals > 0)
            {
                start.Environment[entry[..equals]] = entry[(equals + 1)..];
            }
        }
        string what = $"{phase} hook {index} ({hook.Path})";
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new ContainerRuntimeException($"{what} did not start");
        }
        catch (System.ComponentModel.Win32Exception exception)
        {
            throw new ContainerRuntimeException($"{what} could not be started: {exception.Message}", exception);
        }
        using (process)
        {
            try
            {
                process.StandardInput.Write(input);
                process.StandardInput.Close();
            }
            catch (IOException)
            {
                // The hook need not read its stdin.
            }
            int timeout = hook.Timeout is > 0 ? hook.Timeout.Value * 1000 : -1;
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
                throw new ContainerRuntimeException($"{what} timed out after {hook.Timeout} s and was killed");
            }
            if (process.ExitCode != 0)
            {
                throw new ContainerRuntimeException($"{what} failed with exit status {process.ExitCode}");
            }
        }
    }
}
