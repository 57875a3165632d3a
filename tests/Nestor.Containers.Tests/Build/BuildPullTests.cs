using Nestor.Containers.Images;
using Nestor.Containers.Registry;
using Nestor.Containers.Tests.Engine;
using Nestor.Containers.Tests.Registry;
using TemporaryDirectory = Nestor.Containers.Tests.Images.TemporaryDirectory;

namespace Nestor.Containers.Tests.Build;

/// <summary>FROM pulls its base from a registry (Debian's docker-registry on loopback, the registry tests' fixture)
/// when the build's store lacks it, as <c>docker build</c> does; <c>--pull</c> pulls again and so follows a tag that
/// moved, <c>--pull=never</c> refuses. The images are pushed from a second store, so the build's store has never
/// seen their names.</summary>
public sealed class BuildPullTests(BuildFixture fixture, OpenRegistryFixture registry)
    : IClassFixture<BuildFixture>, IClassFixture<OpenRegistryFixture>
{
    /// <summary>Pushes a busybox root whose /etc/marker holds <paramref name="marker"/> to <paramref name="reference"/>
    /// from a store of its own.</summary>
    private static async Task PushBase(TemporaryDirectory directory, string marker, string reference)
    {
        string rootfs = directory.Combine("rootfs-" + marker);
        EngineFixture.MakeBusyboxRoot(rootfs);
        File.WriteAllText(Path.Combine(rootfs, "etc", "marker"), marker + "\n");
        var side = ImageStore.Open(directory.Combine("side"));
        side.ImportRootFileSystem(rootfs, "side:" + marker, new ImageConfig { Cmd = ["sh"], Env = ["PATH=/bin"] });
        await new ImageTransfer(new RegistryClientOptions()).PushAsync(new ImageStoreContentStore(side), "side:" + marker, ImageReference.Parse(reference));
    }

    [Fact]
    public async Task FromPullsAMissingBaseAndPullAlwaysFollowsAMovedTag()
    {
        using var directory = new TemporaryDirectory("build-pull");
        string reference = $"{registry.Server.Address}/pull/base:v1";
        await PushBase(directory, "one", reference);
        Assert.False(fixture.Store.Contains(reference));
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"FROM {reference}\nRUN cat /etc/marker > /copied\n",
        });

        var first = fixture.Build("-t", "pulled:one", "--network", "none", context);
        Assert.True(first.Status == 0, first.ToString());
        Assert.Contains($"Trying to pull {reference}...", first.Output);
        Assert.Contains($"Writing manifest sha256:", first.Output);
        Assert.True(fixture.Store.Contains(reference)); // named as nestor image pull names it
        Assert.Equal("one\n", fixture.ReadFile(fixture.Store.Resolve("pulled:one"), "/copied"));

        // The tag moves in the registry: the default policy (missing) keeps using the local copy and pulls nothing.
        await PushBase(directory, "two", reference);
        var missing = fixture.Build("-t", "pulled:missing", "--network", "none", context);
        Assert.True(missing.Status == 0, missing.ToString());
        Assert.DoesNotContain("Trying to pull", missing.Output);
        Assert.Equal("one\n", fixture.ReadFile(fixture.Store.Resolve("pulled:missing"), "/copied"));

        // --pull (docker's bare flag, before the context) pulls again: the new base, and the RUN is not a cache hit.
        var always = fixture.Build("-t", "pulled:always", "--network", "none", "--pull", context);
        Assert.True(always.Status == 0, always.ToString());
        Assert.Contains($"Trying to pull {reference}...", always.Output);
        Assert.Equal("two\n", fixture.ReadFile(fixture.Store.Resolve("pulled:always"), "/copied"));
        Assert.Empty(fixture.Mounts());
    }

    [Fact]
    public void PullNeverRefusesAMissingBaseAndAnAbsentImageIsAnError()
    {
        string absent = $"{registry.Server.Address}/pull/absent:v1";
        string context = fixture.Context(new Dictionary<string, string> { ["Dockerfile"] = $"FROM {absent}\nRUN true\n" });

        var never = fixture.Build("-t", "never:v1", "--pull=never", context);
        Assert.Equal(1, never.Status);
        Assert.Contains($"Dockerfile:1:1: FROM {absent}", never.Error);
        Assert.Contains($"--pull=never forbids pulling {absent}", never.Error);
        Assert.DoesNotContain("Trying to pull", never.Output);

        var missing = fixture.Build("-t", "never:v1", context);
        Assert.Equal(1, missing.Status);
        Assert.Contains($"Trying to pull {absent}...", missing.Output);
        Assert.Contains($"no such image in the local store, and pulling {absent} failed", missing.Error);
        Assert.False(fixture.Store.Contains("never:v1"));

        var bad = fixture.Build("--pull=sometimes", "-t", "never:v1", context);
        Assert.NotEqual(0, bad.Status);
        Assert.Contains("--pull=sometimes: choose always, missing or never", bad.Error);
    }
}
