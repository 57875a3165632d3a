using Nestor.Containers.Build;
using Nestor.Containers.Tests.Engine;

namespace Nestor.Containers.Tests.Build;

/// <summary><c>nestor build prune</c>: the age rule (<c>--filter until=</c>), the size rule (<c>--keep-storage</c>,
/// least recently used first) and no rule (everything); blobs only the removed entries kept are deleted, what a named
/// image uses is not, and a pruned step runs again.</summary>
public sealed class BuildPruneTests(BuildFixture fixture) : IClassFixture<BuildFixture>
{
    private string[] CacheEntries() => Directory.Exists(fixture.Store.BuildCacheDirectory)
        ? Directory.GetFiles(fixture.Store.BuildCacheDirectory) : [];

    /// <summary>Builds <paramref name="context"/> as <paramref name="tag"/>, then removes the name so that only the
    /// cache keeps its states; returns the top layer's blob digest.</summary>
    private string BuildCacheOnly(string context, string tag)
    {
        var build = fixture.Build("-t", tag, "--network", "none", context);
        Assert.True(build.Status == 0, build.ToString());
        var store = fixture.Store;
        var image = store.Resolve(tag);
        string top = store.ReadManifest(image.ManifestDigest).Layers[^1].Digest;
        store.Remove(tag, force: false);
        Assert.True(store.Layout.HasBlob(top)); // the cache still holds it
        return top;
    }

    /// <summary><c>nestor build prune --root DATA --state STATE ARGS…</c> on the fixture's store.</summary>
    private CommandResult Prune(params string[] arguments)
    {
        var start = new System.Diagnostics.ProcessStartInfo(EngineFixture.Nestor) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string word in new[] { "build", "prune", "--root", fixture.Engine.Data, "--state", fixture.Engine.State }.Concat(arguments))
        {
            start.ArgumentList.Add(word);
        }
        using var process = System.Diagnostics.Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(5)), "nestor build prune did not end");
        return new CommandResult(process.ExitCode, output.Result, error.Result);
    }

    [Fact]
    public void AgeSizeAndNoRuleRemoveWhatTheySayAndNothingNamed()
    {
        // Random bytes do not compress: the big layer is about 300 kB on disk however it is stored.
        string big = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"FROM {EngineFixture.ImageName}\nRUN head -c 300000 /dev/urandom > /big\n",
        });
        string small = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"FROM {EngineFixture.ImageName}\nRUN echo small > /small\n",
        });
        string bigLayer = BuildCacheOnly(big, "big:v1");
        var oldEntries = CacheEntries();
        foreach (string entry in oldEntries)
        {
            File.SetLastWriteTimeUtc(entry, DateTime.UtcNow - TimeSpan.FromHours(2));
        }
        string smallLayer = BuildCacheOnly(small, "small:v1");
        int total = CacheEntries().Length;
        Assert.True(total > oldEntries.Length);

        // Nothing is as old as 3h, and everything fits in 1 GiB: nothing goes.
        var none = Prune("--filter", "until=3h", "--keep-storage", "1gb");
        Assert.True(none.Status == 0, none.ToString());
        Assert.Contains("Deleted build cache entries: 0 ", none.Output);
        Assert.Contains("Total reclaimed space: 0B", none.Output);
        Assert.Equal(total, CacheEntries().Length);

        // The age rule: the big build's entries (2 h unused) go with its layer; the small one's stay.
        var aged = Prune("--filter", "until=1h");
        Assert.True(aged.Status == 0, aged.ToString());
        Assert.Contains($"Deleted build cache entries: {oldEntries.Length} (kept {total - oldEntries.Length},", aged.Output);
        Assert.False(fixture.Store.Layout.HasBlob(bigLayer));
        Assert.True(fixture.Store.Layout.HasBlob(smallLayer));
        long reclaimed = ReclaimedBytes(aged.Output);
        Assert.True(reclaimed >= 300_000, aged.Output); // the random bytes, measured on disk
        Assert.True(fixture.Store.Layout.HasBlob(fixture.Engine.Image.ManifestDigest)); // the named base is untouched

        // The pruned step runs again (no cache hit), and the entries' bytes are the cache's alone again.
        var rebuilt = fixture.Build("-t", "big:v2", "--network", "none", big);
        Assert.True(rebuilt.Status == 0, rebuilt.ToString());
        Assert.DoesNotContain("--> CACHED", rebuilt.Output);
        string bigAgain = fixture.Store.ReadManifest(fixture.Store.Resolve("big:v2").ManifestDigest).Layers[^1].Digest;
        fixture.Store.Remove("big:v2", force: false);

        // The size rule, least recently used first: one byte under what the cache holds, the small build (the older
        // now) goes and the big one stays; under 50 kB the big one goes too.
        long held = new BuildCache(fixture.Store).CacheOnlyBytes();
        Assert.True(held >= 300_000, held.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var lru = Prune("--keep-storage", (held - 1).ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(lru.Status == 0, lru.ToString());
        Assert.False(fixture.Store.Layout.HasBlob(smallLayer));
        Assert.True(fixture.Store.Layout.HasBlob(bigAgain));
        var tight = Prune("--keep-storage", "50kb");
        Assert.True(tight.Status == 0, tight.ToString());
        Assert.False(fixture.Store.Layout.HasBlob(bigAgain));
        Assert.Contains("(kept 0, holding 0B)", tight.Output);

        // No rule: everything.
        BuildCacheOnly(small, "small:v2");
        Assert.NotEmpty(CacheEntries());
        var all = Prune();
        Assert.True(all.Status == 0, all.ToString());
        Assert.Empty(CacheEntries());
        Assert.True(fixture.Store.Layout.HasBlob(fixture.Engine.Image.ManifestDigest));

        var bad = Prune("--keep-storage", "lots");
        Assert.NotEqual(0, bad.Status);
        Assert.Contains("'lots' is not a size", bad.Error);
        var badFilter = Prune("--filter", "label=x");
        Assert.NotEqual(0, badFilter.Status);
        Assert.Contains("until=DURATION", badFilter.Error);
    }

    private static long ReclaimedBytes(string output)
    {
        string line = output.Split('\n').First(l => l.StartsWith("Total reclaimed space: ", StringComparison.Ordinal));
        string size = line["Total reclaimed space: ".Length..].Trim();
        int unitStart = size.Length;
        while (unitStart > 0 && char.IsAsciiLetter(size[unitStart - 1]))
        {
            unitStart--;
        }
        double value = double.Parse(size[..unitStart], System.Globalization.CultureInfo.InvariantCulture);
        return (long)(value * size[unitStart..] switch { "B" => 1, "kB" => 1e3, "MB" => 1e6, "GB" => 1e9, _ => 1e12 });
    }
}
