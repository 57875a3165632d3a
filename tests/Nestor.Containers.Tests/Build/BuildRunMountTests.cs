using System.Diagnostics;
using Nestor.Containers.Tests.Engine;

namespace Nestor.Containers.Tests.Build;

/// <summary><c>RUN --mount=type=cache</c> (a directory kept between builds, never in a layer, removed by prune) and
/// <c>type=bind</c> from the context (read-only by default, .dockerignore honoured, its contents part of the step's
/// cache key, writes of <c>rw</c> discarded), in real builds.</summary>
public sealed class BuildRunMountTests(BuildFixture fixture) : IClassFixture<BuildFixture>
{
    [Fact]
    public void CacheMountsPersistAndBindMountsFollowTheContext()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {EngineFixture.ImageName}
                RUN --mount=type=cache,target=/var/cache/app echo run >> /var/cache/app/log && wc -l < /var/cache/app/log > /count
                RUN --mount=type=bind,source=data,target=/data cat /data/one.txt > /seen && ! test -e /data/secret.txt && ! touch /data/x
                RUN --mount=type=bind,source=data,target=/scratch,rw echo scribble > /scratch/one.txt && cat /scratch/one.txt > /scribbled
                """,
            ["data/one.txt"] = "one\n",
            ["data/secret.txt"] = "secret\n",
            [".dockerignore"] = "data/secret.txt\n",
        });
        var first = fixture.Build("-t", "mounts:v1", "--network", "none", context);
        Assert.True(first.Status == 0, first.ToString());
        var image = fixture.Store.Resolve("mounts:v1");
        Assert.Equal("1\n", fixture.ReadFile(image, "/count"));
        Assert.Equal("one\n", fixture.ReadFile(image, "/seen"));
        Assert.Equal("scribble\n", fixture.ReadFile(image, "/scribbled"));
        Assert.Equal("one\n", File.ReadAllText(Path.Combine(context, "data", "one.txt"))); // rw wrote to a copy
        foreach (string diffId in image.LayerDiffIds.Skip(fixture.Engine.Image.LayerDiffIds.Count))
        {
            string layer = fixture.Store.LayerDirectory(diffId);
            Assert.False(Directory.Exists(Path.Combine(layer, "var", "cache")), "a cache mount point in a layer");
            Assert.False(Directory.Exists(Path.Combine(layer, "data")), "a bind mount point in a layer");
            Assert.False(Directory.Exists(Path.Combine(layer, "scratch")), "a bind mount point in a layer");
        }

        // --no-cache runs the step again on the same cache directory: the log has two lines now.
        var again = fixture.Build("-t", "mounts:v2", "--network", "none", "--no-cache", context);
        Assert.True(again.Status == 0, again.ToString());
        Assert.Equal("2\n", fixture.ReadFile(fixture.Store.Resolve("mounts:v2"), "/count"));

        // A changed bound file re-runs the step that binds it (and not the cache step before it).
        File.WriteAllText(Path.Combine(context, "data", "one.txt"), "changed\n");
        var changed = fixture.Build("-t", "mounts:v3", "--network", "none", context);
        Assert.True(changed.Status == 0, changed.ToString());
        Assert.Equal(1, changed.Output.Split('\n').Count(line => line == "--> CACHED"));
        Assert.Equal("changed\n", fixture.ReadFile(fixture.Store.Resolve("mounts:v3"), "/seen"));

        // Prune with no rule removes the cache mounts too: the count starts again.
        var prune = RunNestor("build", "prune", "--root", fixture.Engine.Data, "--state", fixture.Engine.State);
        Assert.True(prune.Status == 0, prune.ToString());
        var fresh = fixture.Build("-t", "mounts:v4", "--network", "none", context);
        Assert.True(fresh.Status == 0, fresh.ToString());
        Assert.Equal("1\n", fixture.ReadFile(fixture.Store.Resolve("mounts:v4"), "/count"));
        Assert.Empty(fixture.Mounts());
    }

    [Theory]
    [InlineData("RUN --mount=type=tmpfs,target=/t true", "only type=cache and type=bind")]
    [InlineData("RUN --mount=type=cache true", "no target")]
    [InlineData("RUN --mount=type=bind,source=absent,target=/a true", "absent")]
    [InlineData("RUN --mount=type=bind,from=other,target=/a true", "'from=other' is not supported")]
    public void UnsupportedOrBadMountsAreErrorsWithTheLine(string run, string expected)
    {
        string context = fixture.Context(new Dictionary<string, string> { ["Dockerfile"] = $"FROM {EngineFixture.ImageName}\n{run}\n" });
        var build = fixture.Build("-t", "badmount:v1", "--network", "none", context);
        Assert.Equal(1, build.Status);
        Assert.Contains("Dockerfile:2", build.Error);
        Assert.Contains(expected, build.Error);
    }

    private static CommandResult RunNestor(params string[] arguments)
    {
        var start = new ProcessStartInfo(EngineFixture.Nestor) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string word in arguments)
        {
            start.ArgumentList.Add(word);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(5)), "nestor did not end");
        return new CommandResult(process.ExitCode, output.Result, error.Result);
    }
}
