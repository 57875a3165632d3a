using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using Nestor.Containers.Images;
using Nestor.Containers.Tests.Engine;

namespace Nestor.Containers.Tests.Build;

/// <summary>Rootless <c>nestor build</c>: the built CLI run by the unprivileged user nestor-rootless (65536
/// subordinate ids in /etc/subuid and /etc/subgid, made by scripts/install-prerequisites) with its store under a
/// directory it owns. Nothing is mounted on the host; files container root writes belong to the user, and other
/// owners (a RUN's chown, COPY --chown) are recorded in the layers as the container sees them. Everything the test
/// made (processes of the user, the directory) is removed after, also on failure.</summary>
public sealed class RootlessBuildTests() : RootlessUserTest("nb", TimeSpan.FromMinutes(5))
{
    private string? userWithoutRange;

    /// <summary>WORKDIR, COPY (into the workdir, --chown to a subordinate id, through a link the state has), RUN with
    /// chown, all as the user: the layers record root, 33 and 100/101 as owners, the image runs rootless, and a
    /// rebuild runs no step.</summary>
    [Fact]
    public void BuildsAsAnUnprivilegedUserWithTheContainersOwners()
    {
        string context = Path.Combine(root, "ctx");
        Directory.CreateDirectory(context);
        File.WriteAllText(Path.Combine(context, "Dockerfile"), """
            FROM busybox
            WORKDIR /app
            COPY hello.txt ./
            COPY --chown=33:33 owned.txt /srv/
            RUN mkdir -p /data && echo made > /data/f && chown 100:101 /data/f && id -u > /data/uid && mkdir -p /usr/real && ln -s usr/real /lnk
            COPY hello.txt /lnk/
            CMD ["cat", "/app/hello.txt"]
            """);
        File.WriteAllText(Path.Combine(context, "hello.txt"), "hello\n");
        File.WriteAllText(Path.Combine(context, "owned.txt"), "owned\n");
        Assert.Equal(0, Run("chown", "-R", User, context).Status);

        var build = Build("-t", "rootless-built:v1", "--network", "none", context);
        Assert.True(build.Status == 0, build.ToString());
        AssertNothingLeft();

        var store = ImageStore.Open(Path.Combine(data, "images"));
        var image = store.Resolve("rootless-built:v1");
        var owners = LayerOwners(store, image);
        Assert.Equal((0, 0), owners["app/hello.txt"]);
        Assert.Equal((33, 33), owners["srv/owned.txt"]);
        Assert.Equal((100, 101), owners["data/f"]);
        Assert.Equal((0, 0), owners["data/uid"]);
        // COPY into /lnk/ followed the link in the state's layers: the file is in usr/real, the link stays a link.
        Assert.Contains("usr/real/hello.txt", owners.Keys);
        Assert.DoesNotContain("lnk/hello.txt", owners.Keys);

        var run = AsUser(EngineFixture.Nestor, "container", "--root", data, "--state", state, "run", "--rm", "rootless-built:v1");
        Assert.True(run.Status == 0, run.ToString());
        Assert.Equal("hello\n", run.Output);
        // The owners are the layers' (above): a rootless store unpacks layers without owners (docs/containers.md,
        // "Limits of this version"), so the container itself sees its files as root's.
        var seen = AsUser(EngineFixture.Nestor, "container", "--root", data, "--state", state, "run", "--rm", "rootless-built:v1",
            "sh", "-c", "cat /srv/owned.txt /data/f /data/uid /lnk/hello.txt && pwd && test -L /lnk");
        Assert.True(seen.Status == 0, seen.ToString());
        Assert.Equal("owned\nmade\n0\nhello\n/app\n", seen.Output);

        var again = Build("-t", "rootless-built:v2", "--network", "none", context);
        Assert.True(again.Status == 0, again.ToString());
        Assert.Equal(6, again.Output.Split('\n').Count(line => line == "--> CACHED"));
        Assert.Equal(image.Id, store.Resolve("rootless-built:v2").Id);
        AssertNothingLeft();
    }

    /// <summary>A user without subordinate ids is refused at once, with the file and the line to add.</summary>
    [Fact]
    public void AUserWithoutSubordinateIdsIsToldWhatToAdd()
    {
        string name = "nestor-nosub" + Guid.NewGuid().ToString("N")[..4];
        // A system user: useradd gives ordinary users a subordinate range (login.defs SUB_UID_COUNT), not system ones.
        var add = Run("useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name);
        Assert.True(add.Status == 0, add.ToString());
        userWithoutRange = name;
        Assert.DoesNotContain(File.ReadAllLines("/etc/subuid"), line => line.StartsWith(name + ":", StringComparison.Ordinal));
        string own = Path.Combine(root, "nosub");
        Directory.CreateDirectory(Path.Combine(own, "ctx"));
        File.WriteAllText(Path.Combine(own, "ctx", "Dockerfile"), "FROM busybox\nRUN true\n");
        Assert.Equal(0, Run("chown", "-R", name, own).Status);
        var refused = Run("runuser", "-u", name, "--", EngineFixture.Nestor, "build", "--root", Path.Combine(own, "d"),
            "--state", Path.Combine(own, "s"), "--progress", "plain", "-t", "x:v1", Path.Combine(own, "ctx"));
        Assert.Equal(1, refused.Status);
        Assert.Contains("/etc/subuid has no range for " + name, refused.Error);
        Assert.Contains($"'{name}:100000:65536'", refused.Error);
    }

    /// <summary>The owners of the paths in the image's layer tars, the topmost layer's for a path in several.</summary>
    private static Dictionary<string, (int Uid, int Gid)> LayerOwners(ImageStore store, StoredImage image)
    {
        var owners = new Dictionary<string, (int, int)>(StringComparer.Ordinal);
        foreach (var layer in store.ReadManifest(image.ManifestDigest).Layers)
        {
            using var stream = File.OpenRead(store.Layout.BlobPath(layer.Digest));
            using var reader = new TarReader(stream);
            while (reader.GetNextEntry() is { } entry)
            {
                owners[entry.Name.TrimStart('.', '/').TrimEnd('/')] = (entry.Uid, entry.Gid);
            }
        }
        return owners;
    }

    private CommandResult Build(params string[] arguments) =>
        AsUser([EngineFixture.Nestor, "build", "--root", data, "--state", state, "--progress", "plain", .. arguments]);

    protected override void RemoveMore()
    {
        if (userWithoutRange is { } name)
        {
            Run("userdel", name);
        }
    }
}
