using System.Diagnostics;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Security;

/// <summary>What a container run printed and how it ended.</summary>
public sealed record RunResult(int ExitCode, string Stdout, string Stderr)
{
    public string Output => Stdout + Stderr;
}

/// <summary>An OCI bundle in a fresh temporary directory whose rootfs is the static /bin/busybox with its applets as
/// symbolic links; run with an installed runtime (crun, runc). Removed on dispose, with any container left behind.</summary>
public sealed class BusyboxBundle : IDisposable
{
    private readonly List<(string Runtime, string Id)> _containers = [];

    public BusyboxBundle()
    {
        Directory = Path.Combine(Path.GetTempPath(), "nestor-sec-" + Guid.NewGuid().ToString("N")[..12]);
        Rootfs = Path.Combine(Directory, "rootfs");
        foreach (string sub in new[] { "bin", "proc", "sys", "dev", "tmp", "etc", "mnt", "root" })
        {
            System.IO.Directory.CreateDirectory(Path.Combine(Rootfs, sub));
        }
        File.Copy("/bin/busybox", Path.Combine(Rootfs, "bin", "busybox"));
        var applets = Run("/bin/busybox", "--list").Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        foreach (string applet in applets.Where(a => a != "busybox"))
        {
            File.CreateSymbolicLink(Path.Combine(Rootfs, "bin", applet), "busybox");
        }
        File.WriteAllText(Path.Combine(Rootfs, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n");
        File.WriteAllText(Path.Combine(Rootfs, "etc", "group"), "root:x:0:\nuser:x:1000:\n");
        // Readable by the rootless test user too.
        Run("chmod", "755", Directory);
    }

    public string Directory { get; }
    public string Rootfs { get; }

    /// <summary>The runtimes the tests compare: Nestor's own (the built apphost, <c>nestor oci</c>, runc's command
    /// line) and the installed crun and runc.</summary>
    public static IEnumerable<object[]> Runtimes => new[] { "nestor", "crun", "runc" }.Select(r => new object[] { r });

    /// <summary>The runtimes whose container sees its own cgroup at /sys/fs/cgroup: all three (Nestor's since
    /// RootFileSystem.CaptureControlGroups reads the container's directories before the cgroup namespace hides them).</summary>
    public static IEnumerable<object[]> RuntimesSeeingTheirOwnCgroup => new[] { "nestor", "crun", "runc" }.Select(r => new object[] { r });

    /// <summary>The built nestor apphost (the test project references the CLI).</summary>
    public static string Nestor => Path.Combine(AppContext.BaseDirectory, "nestor");

    // nestor's runtime has runc's command line under "nestor oci".
    private static (string File, string[] Prefix) Command(string runtime) =>
        runtime == "nestor" ? (Nestor, ["oci"]) : (runtime, []);

    /// <summary>Writes <paramref name="spec"/> as the bundle's config.json and runs it to the end with
    /// <paramref name="runtime"/> (<c>crun</c> or <c>runc</c>) under a unique id.</summary>
    public RunResult RunContainer(string runtime, RuntimeSpec spec, int timeoutSeconds = 60)
    {
        File.WriteAllText(Path.Combine(Directory, "config.json"), spec.ToJson());
        string id = "nestor-sec-" + Guid.NewGuid().ToString("N")[..12];
        _containers.Add((runtime, id));
        try
        {
            var (file, prefix) = Command(runtime);
            return Run(file, [.. prefix, "run", "--bundle", Directory, id], timeoutSeconds);
        }
        finally
        {
            Delete(runtime, id);
            _containers.Remove((runtime, id));
        }
    }

    /// <summary>A default spec running <c>sh -c script</c>.</summary>
    public static RuntimeSpec Shell(string script, DefaultSpecOptions? options = null) =>
        DefaultSpec.Create("rootfs", ["/bin/sh", "-c", script], options);

    private static void Delete(string runtime, string id)
    {
        var (file, prefix) = Command(runtime);
        Run(file, [.. prefix, "delete", "--force", id], 60);
    }

    public static RunResult Run(string file, params string[] arguments) => Run(file, arguments, 60);

    public static RunResult Run(string file, IReadOnlyList<string> arguments, int timeoutSeconds)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = Process.Start(start)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeoutSeconds * 1000))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            throw new TimeoutException($"{file} {string.Join(' ', arguments)} did not finish in {timeoutSeconds} s: {stdout.Result}{stderr.Result}");
        }
        return new RunResult(process.ExitCode, stdout.Result, stderr.Result);
    }

    public void Dispose()
    {
        foreach (var (runtime, id) in _containers.ToList())
        {
            Delete(runtime, id);
        }
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
            // a mount left inside by a failed runtime; the temporary directory goes with the machine
        }
    }
}
