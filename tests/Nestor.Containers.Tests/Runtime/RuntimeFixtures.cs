using System.Diagnostics;
using System.Text;
using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.Spec;
using Nestor.Host;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>An OCI bundle in a unique temporary directory whose root file system is Debian's static busybox with a
/// symbolic link per applet; deleted on dispose.</summary>
public sealed class BusyboxBundle : IDisposable
{
    public BusyboxBundle(IReadOnlyList<string> args, bool rootless = false)
    {
        Directory = Path.Combine(Path.GetTempPath(), $"nestor-rt-bundle-{Guid.NewGuid():N}");
        string bin = Path.Combine(Directory, "rootfs", "bin");
        System.IO.Directory.CreateDirectory(bin);
        File.Copy("/bin/busybox", Path.Combine(bin, "busybox"));
        foreach (string applet in Tool.Run("/bin/busybox", "--list").Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (applet != "busybox")
            {
                File.CreateSymbolicLink(Path.Combine(bin, applet), "busybox");
            }
        }
        foreach (string directory in new[] { "proc", "sys", "dev", "tmp", "etc", "root" })
        {
            System.IO.Directory.CreateDirectory(Path.Combine(Directory, "rootfs", directory));
        }
        Spec = RuntimeSpecTemplate.Create(args, rootless);
    }

    public string Directory { get; }

    public string Rootfs => Path.Combine(Directory, "rootfs");

    public RuntimeSpec Spec { get; }

    /// <summary>Writes config.json from <see cref="Spec"/>.</summary>
    public BusyboxBundle Write()
    {
        File.WriteAllText(Path.Combine(Directory, "config.json"), Spec.ToJson());
        return this;
    }

    public void Dispose()
    {
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}

/// <summary>A <see cref="NestorRuntime"/> with its own state directory, whose containers are deleted on dispose.</summary>
public sealed class RuntimeUnderTest : IDisposable
{
    public RuntimeUnderTest()
    {
        StateRoot = Path.Combine(Path.GetTempPath(), $"nestor-rt-state-{Guid.NewGuid():N}");
        Runtime = new NestorRuntime(new RuntimeOptions { StateRoot = StateRoot, InitExecutable = [Nestor] });
    }

    /// <summary>The built nestor apphost (the test project references the CLI).</summary>
    public static string Nestor => Path.Combine(AppContext.BaseDirectory, "nestor");

    public string StateRoot { get; }

    public NestorRuntime Runtime { get; }

    public static string UniqueId(string prefix) => $"{prefix}-{Guid.NewGuid():N}"[..(prefix.Length + 13)];

    /// <summary>Creates, starts and waits for a container, collecting its stdout and stderr; deletes it.</summary>
    public (int Status, string Stdout, string Stderr) Run(BusyboxBundle bundle, string? id = null)
    {
        id ??= UniqueId("run");
        bundle.Write();
        var (outRead, outWrite) = ProcessCalls.CreatePipe();
        var (errRead, errWrite) = ProcessCalls.CreatePipe();
        int nullInput = MountCalls.Open("/dev/null", MountCalls.OpenFlags.ReadOnly);
        using var output = new StreamReader(new FileStream(new SafeFileHandle(outRead, true), FileAccess.Read), Encoding.UTF8);
        using var error = new StreamReader(new FileStream(new SafeFileHandle(errRead, true), FileAccess.Read), Encoding.UTF8);
        try
        {
            Runtime.Create(id, bundle.Directory, new RuntimeIo(nullInput, outWrite, errWrite));
        }
        finally
        {
            ProcessCalls.Close(outWrite);
            ProcessCalls.Close(errWrite);
            ProcessCalls.Close(nullInput);
        }
        try
        {
            var stdout = output.ReadToEndAsync();
            var stderr = error.ReadToEndAsync();
            Runtime.Start(id);
            int status = Runtime.WaitForExit(id);
            return (status, stdout.Result, stderr.Result);
        }
        finally
        {
            Runtime.Delete(id, force: true);
        }
    }

    public void Dispose()
    {
        foreach (string id in Runtime.List())
        {
            try
            {
                Runtime.Delete(id, force: true);
            }
            catch (ContainerRuntimeException)
            {
            }
        }
        try
        {
            System.IO.Directory.Delete(StateRoot, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}

/// <summary>Runs a program to completion and returns its stdout (throws on a non-zero status).</summary>
public static class Tool
{
    public static string Run(string program, params string[] arguments)
    {
        var (status, stdout, stderr) = RunWithStatus(program, arguments);
        return status == 0 ? stdout : throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} failed ({status}): {stderr}");
    }

    public static (int Status, string Stdout, string Stderr) RunWithStatus(string program, IEnumerable<string> arguments, string? workingDirectory = null)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        if (workingDirectory is not null)
        {
            start.WorkingDirectory = workingDirectory;
        }
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
