using System.Diagnostics;

namespace Nestor.Containers.Tests.Images;

/// <summary>A unique temporary directory removed (with any overlay mounted below it) when disposed.</summary>
public sealed class TemporaryDirectory : IDisposable
{
    public TemporaryDirectory(string purpose)
    {
        // Short: podman refuses a run root longer than 50 characters.
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"nimg-{purpose[..Math.Min(8, purpose.Length)]}-{Guid.NewGuid().ToString("N")[..12]}");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);

    public void Dispose()
    {
        // Unmount anything a test left mounted below the directory, deepest first, before deleting it.
        foreach (var line in File.ReadAllLines("/proc/self/mounts").Reverse())
        {
            var target = line.Split(' ')[1];
            if (target.StartsWith(Path + "/", StringComparison.Ordinal))
            {
                Run("umount", "-l", target);
            }
        }
        if (Directory.Exists(Path))
        {
            Directory.Delete(Path, recursive: true);
        }
    }

    /// <summary>Runs a program and returns its standard output; throws with its standard error on a non-zero exit.</summary>
    public static string Run(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} exited {process.ExitCode}: {error.Result}");
        }
        return output.Result;
    }

    /// <summary>A minimal busybox root file system: /bin/busybox (static), sh and cat links, /etc/passwd.</summary>
    public static void MakeBusyboxRoot(string root)
    {
        Directory.CreateDirectory(System.IO.Path.Combine(root, "bin"));
        Directory.CreateDirectory(System.IO.Path.Combine(root, "etc"));
        File.Copy("/bin/busybox", System.IO.Path.Combine(root, "bin", "busybox"));
        File.CreateSymbolicLink(System.IO.Path.Combine(root, "bin", "sh"), "busybox");
        File.CreateSymbolicLink(System.IO.Path.Combine(root, "bin", "cat"), "busybox");
        File.WriteAllText(System.IO.Path.Combine(root, "etc", "passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    }
}
