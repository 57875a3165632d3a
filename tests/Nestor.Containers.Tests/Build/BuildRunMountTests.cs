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

    /// <summary><c>type=tmpfs</c>: a tmpfs at the target with the size limit, in no layer.</summary>
    [Fact]
    public void TmpfsMountsAreTmpfsOfTheirSizeAndLeaveNothing()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {EngineFixture.ImageName}
                RUN --mount=type=tmpfs,target=/work/tmp,size=1m grep ' /work/tmp ' /proc/mounts | cut -d' ' -f3 > /fstype && echo small > /work/tmp/a && ! dd if=/dev/zero of=/work/tmp/big bs=1024 count=2048 2>/dev/null && ls /work/tmp > /listed
                """,
        });
        var build = fixture.Build("-t", "tmpfs:v1", "--network", "none", context);
        Assert.True(build.Status == 0, build.ToString());
        var image = fixture.Store.Resolve("tmpfs:v1");
        Assert.Equal("tmpfs\n", fixture.ReadFile(image, "/fstype"));
        Assert.Equal("a\nbig\n", fixture.ReadFile(image, "/listed")); // dd hit the 1 MiB limit: ENOSPC, status != 0
        foreach (string diffId in image.LayerDiffIds.Skip(fixture.Engine.Image.LayerDiffIds.Count))
        {
            Assert.False(Path.Exists(Path.Combine(fixture.Store.LayerDirectory(diffId), "work")), "a tmpfs mount point in a layer");
        }
        Assert.Empty(fixture.Mounts());
    }

    /// <summary><c>type=secret</c>: the file given by <c>--secret</c> is read-only at /run/secrets/ID (mode 0400) or
    /// its target while the step runs, and its bytes are nowhere in the store afterwards (layers, configs,
    /// history, cache entries) nor is its mount point; a changed secret does not re-run the step (BuildKit keys no
    /// secret); an optional secret not given is simply absent; a required one is an error with the line.</summary>
    [Fact]
    public void SecretsAreMountedForTheStepAndStoredNowhere()
    {
        const string Secret = "nestor-secret-4f1c9a7e";
        string secrets = Path.Combine(fixture.Engine.Root, "secrets-" + Guid.NewGuid().ToString("N")[..6]);
        Directory.CreateDirectory(secrets);
        string secretFile = Path.Combine(secrets, "token");
        File.WriteAllText(secretFile, Secret + "\n");
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {EngineFixture.ImageName}
                RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /length && stat -c %a /run/secrets/tok > /mode && ! sh -c 'echo x > /run/secrets/tok' 2>/dev/null
                RUN --mount=type=secret,id=tok,target=/etc/app/key,mode=0440 grep -c nestor-secret /etc/app/key > /found && stat -c %a /etc/app/key > /mode2
                RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo none > /absent
                """,
        });
        var build = fixture.Build("-t", "secret:v1", "--network", "none", "--secret", $"id=tok,src={secretFile}", context);
        Assert.True(build.Status == 0, build.ToString());
        var image = fixture.Store.Resolve("secret:v1");
        Assert.Equal($"{Secret.Length + 1}\n", fixture.ReadFile(image, "/length"));
        Assert.Equal("400\n", fixture.ReadFile(image, "/mode"));
        Assert.Equal("1\n", fixture.ReadFile(image, "/found"));
        Assert.Equal("440\n", fixture.ReadFile(image, "/mode2"));
        Assert.Equal("none\n", fixture.ReadFile(image, "/absent"));
        foreach (string diffId in image.LayerDiffIds.Skip(fixture.Engine.Image.LayerDiffIds.Count))
        {
            string layer = fixture.Store.LayerDirectory(diffId);
            Assert.False(Path.Exists(Path.Combine(layer, "run", "secrets")), "a secret's mount point in a layer");
            Assert.False(Path.Exists(Path.Combine(layer, "etc", "app")), "a secret's mount point in a layer");
        }
        var history = fixture.Store.ReadConfiguration(image).History ?? [];
        Assert.Contains(history, entry => entry.CreatedBy?.Contains("/run/secrets/tok", StringComparison.Ordinal) == true);
        AssertNowhere(Secret, fixture.Engine.Data, fixture.Engine.State);

        // The secret's content is no part of a step's cache key: another value reuses every step.
        File.WriteAllText(secretFile, "another-value\n");
        var again = fixture.Build("-t", "secret:v2", "--network", "none", "--secret", $"id=tok,src={secretFile}", context);
        Assert.True(again.Status == 0, again.ToString());
        Assert.Equal(3, again.Output.Split('\n').Count(line => line == "--> CACHED"));

        string required = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"FROM {EngineFixture.ImageName}\nRUN --mount=type=secret,id=npmrc,required=true true\n",
        });
        var refused = fixture.Build("-t", "secret:v3", "--network", "none", required);
        Assert.Equal(1, refused.Status);
        Assert.Contains("Dockerfile:2", refused.Error);
        Assert.Contains("--secret id=npmrc,src=FILE", refused.Error);
        Assert.Empty(fixture.Mounts());
    }

    /// <summary><c>type=ssh</c>: without <c>--ssh</c> the step is refused, naming the flag; with it the agent
    /// socket is at /run/buildkit/ssh_agent.0 and SSH_AUTH_SOCK names it.</summary>
    [Fact]
    public void SshMountsNeedAnAgentSocketAndForwardIt()
    {
        string context = fixture.Context(new Dictionary<string, string>
        {
            ["Dockerfile"] = $"""
                FROM {EngineFixture.ImageName}
                RUN --mount=type=ssh test -S "$SSH_AUTH_SOCK" && echo "$SSH_AUTH_SOCK" > /agent
                """,
        });
        var refused = fixture.Build("-t", "ssh:v1", "--network", "none", context);
        Assert.Equal(1, refused.Status);
        Assert.Contains("Dockerfile:2", refused.Error);
        Assert.Contains("--ssh default=$SSH_AUTH_SOCK", refused.Error);

        string socketPath = Path.Combine(fixture.Engine.Root, "agent.sock");
        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        listener.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(socketPath));
        listener.Listen(1);
        var build = fixture.Build("-t", "ssh:v1", "--network", "none", "--ssh", "default=" + socketPath, context);
        Assert.True(build.Status == 0, build.ToString());
        Assert.Equal("/run/buildkit/ssh_agent.0\n", fixture.ReadFile(fixture.Store.Resolve("ssh:v1"), "/agent"));
        Assert.Empty(fixture.Mounts());
    }

    /// <summary>No file under <paramref name="roots"/> holds <paramref name="text"/>.</summary>
    private static void AssertNowhere(string text, params string[] roots)
    {
        byte[] needle = System.Text.Encoding.UTF8.GetBytes(text);
        foreach (string root in roots)
        {
            foreach (string file in Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories))
            {
                var info = new FileInfo(file);
                if (info.LinkTarget is not null || !IsRegular(file))
                {
                    continue;
                }
                Assert.False(File.ReadAllBytes(file).AsSpan().IndexOf(needle) >= 0, $"the secret is in {file}");
            }
        }
    }

    private static bool IsRegular(string path) =>
        Nestor.Host.FileSystemCalls.TryLStat(path) is { } status && (status.Mode & 0xf000) == 0x8000;

    [Theory]
    [InlineData("RUN --mount=type=npm,target=/t true", "type=cache, bind, tmpfs, secret and ssh")]
    [InlineData("RUN --mount=type=tmpfs,target=/t,size=lots true", "size=lots is not a size")]
    [InlineData("RUN --mount=type=secret true", "needs id= or target=")]
    [InlineData("RUN --mount=type=secret,id=a,mode=999 true", "mode=999 is not an octal mode")]
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
