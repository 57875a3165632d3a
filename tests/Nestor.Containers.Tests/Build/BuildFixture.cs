using System.Diagnostics;
using Nestor.Containers.Images;
using Nestor.Containers.Tests.Engine;

namespace Nestor.Containers.Tests.Build;

/// <summary>A private engine (<see cref="EngineFixture"/>: its own data and state directories and a busybox image)
/// and the real <c>nestor build</c> command pointed at it; contexts are written into temporary directories.</summary>
public sealed class BuildFixture : IDisposable
{
    public EngineFixture Engine { get; } = new();

    public ImageStore Store => ImageStore.Open(Engine.Paths.Images);

    /// <summary>Writes a context of <paramref name="files"/> (path → text; "Dockerfile" among them) under a new
    /// directory of the fixture and returns it.</summary>
    public string Context(IReadOnlyDictionary<string, string> files)
    {
        string directory = Path.Combine(Engine.Root, "ctx-" + Guid.NewGuid().ToString("N")[..8]);
        foreach (var (path, text) in files)
        {
            string full = Path.Combine(directory, path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            File.WriteAllText(full, text);
        }
        Directory.CreateDirectory(directory);
        return directory;
    }

    /// <summary>Runs <c>nestor build --root DATA --state STATE --progress plain ARGS…</c>.</summary>
    public CommandResult Build(params string[] arguments) => Build(Engine, arguments);

    /// <summary>As <see cref="Build(string[])"/> on the directories of <paramref name="engine"/>.</summary>
    public static CommandResult Build(EngineFixture engine, params string[] arguments)
    {
        var start = new ProcessStartInfo(EngineFixture.Nestor) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string word in new[] { "build", "--root", engine.Data, "--state", engine.State, "--progress", "plain" }.Concat(arguments))
        {
            start.ArgumentList.Add(word);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(20)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"nestor build {string.Join(' ', arguments)} did not end");
        }
        return new CommandResult(process.ExitCode, output.Result, error.Result);
    }

    /// <summary>A file of <paramref name="image"/> as its container would see it: from the topmost layer that has it.</summary>
    public string? ReadFile(StoredImage image, string path)
    {
        var store = Store;
        foreach (string diffId in image.LayerDiffIds.Reverse())
        {
            string full = Path.Combine(store.LayerDirectory(diffId), path.TrimStart('/'));
            if (File.Exists(full))
            {
                return File.ReadAllText(full);
            }
        }
        return null;
    }

    /// <summary>The mounts below the fixture's directory (a build must leave none).</summary>
    public IReadOnlyList<string> Mounts() =>
        [.. File.ReadAllLines("/proc/self/mountinfo").Select(line => Nestor.Host.MountInfo.Unescape(line.Split(' ')[4]))
            .Where(target => target.StartsWith(Engine.Root + "/", StringComparison.Ordinal))];

    public void Dispose() => Engine.Dispose();
}
