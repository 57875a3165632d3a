using System.Diagnostics;
using Nestor.Containers.Images;
using Nestor.Containers.Tests.Engine;
using Nestor.Host;
using Xunit.Abstractions;

namespace Nestor.Containers.Tests.Images;

public class BootstrapTests
{
    /// <summary>busybox from busybox-static: the binary with one link per applet, root and nobody in passwd and group,
    /// a sticky world-writable /tmp, PATH and Cmd sh.</summary>
    [Fact]
    public void BusyboxImage()
    {
        using var directory = new TemporaryDirectory("bootstrap");
        var store = ImageStore.Open(directory.Combine("store"));
        var image = ImageBootstrap.Busybox(store, "busybox:boot");
        Assert.Equal(["sh"], image.Config.Cmd);
        Assert.Equal([ImageBootstrap.DefaultPath], image.Config.Env);
        string root = store.LayerDirectory(image.LayerDiffIds[0]);
        var applets = TemporaryDirectory.Run("/bin/busybox", "--list").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(applets.Length > 100);
        foreach (var applet in applets.Where(a => a != "busybox"))
        {
            Assert.Equal("busybox", new FileInfo(Path.Combine(root, "bin", applet)).LinkTarget);
        }
        Assert.Contains("nobody:x:65534:65534:", File.ReadAllText(Path.Combine(root, "etc", "passwd")));
        Assert.StartsWith("root:x:0:0:", File.ReadAllText(Path.Combine(root, "etc", "passwd")));
        Assert.Contains("nobody:x:65534:", File.ReadAllText(Path.Combine(root, "etc", "group")));
        Assert.Equal(0x3ffu, FileSystemCalls.LStat(Path.Combine(root, "tmp")).Mode & 0xfff);
        Assert.Equal(File.ReadAllBytes("/bin/busybox"), File.ReadAllBytes(Path.Combine(root, "bin", "busybox")));
        Assert.Equal("nestor image bootstrap busybox:boot", store.ReadConfiguration(image).History![0].CreatedBy);
    }

    /// <summary>The Debian mirror comes from apt's configuration.</summary>
    [Fact]
    public void DebianMirrorIsAptsMirror()
    {
        string mirror = ImageBootstrap.DebianMirror();
        Assert.StartsWith("http", mirror);
        string apt = string.Join('\n', Directory.EnumerateFiles("/etc/apt/sources.list.d", "*.sources").Select(File.ReadAllText)
            .Append(File.Exists("/etc/apt/sources.list") ? File.ReadAllText("/etc/apt/sources.list") : ""));
        Assert.Contains(mirror, apt);
    }
}

/// <summary>One real <c>debootstrap --variant=minbase bookworm</c> for every test that needs Debian (the tests of the
/// <see cref="DebianCollection"/>): made into <c>debian:bookworm</c> in a private engine's image store
/// (<see cref="EngineFixture"/>: its own data and state, removed with every container after, also on failure). The
/// downloaded .debs are kept in <see cref="PackageCache"/> (debootstrap's --cache-dir) for the next run; the
/// bootstrap itself, unpacking and configuring every package, runs each time.</summary>
public sealed class DebianFixture : IDisposable
{
    /// <summary>Where debootstrap keeps the packages it downloaded, as apt keeps its own in /var/cache/apt.</summary>
    public const string PackageCache = "/var/cache/nestor/debootstrap";

    public DebianFixture()
    {
        Engine = new EngineFixture();
        try
        {
            Store = ImageStore.Open(Engine.Paths.Images);
            var clock = Stopwatch.StartNew();
            var log = new StringWriter();
            try
            {
                Image = ImageBootstrap.Debian(Store, "bookworm", progress: log, cacheDirectory: PackageCache);
            }
            catch (ImageStoreException exception)
            {
                throw new InvalidOperationException(exception.Message + "\n" + log, exception);
            }
            BootstrapTime = clock.Elapsed;
        }
        catch
        {
            Engine.Dispose();
            throw;
        }
    }

    public EngineFixture Engine { get; }
    public ImageStore Store { get; }
    public StoredImage Image { get; }
    public TimeSpan BootstrapTime { get; }

    public void Dispose() => Engine.Dispose();
}

/// <summary>The tests that share <see cref="DebianFixture"/>'s bootstrap; they run one after the other.</summary>
[CollectionDefinition(Name)]
public sealed class DebianCollection : ICollectionFixture<DebianFixture>
{
    public const string Name = "Debian";
}

[Collection(DebianCollection.Name)]
public sealed class DebianBootstrapTests(DebianFixture debian, ITestOutputHelper output)
{
    /// <summary>debian:bookworm from debootstrap --variant=minbase: a root with dpkg's database, bash and apt, and
    /// Debian's os-release, without apt's downloaded packages. Reports the time it took.</summary>
    [Fact]
    public void DebianImage()
    {
        output.WriteLine($"debootstrap bookworm and import: {debian.BootstrapTime.TotalSeconds:F0} s, {debian.Image.Size / 1_000_000} MB");
        var image = debian.Image;
        Assert.Equal(["debian:bookworm"], image.References);
        Assert.Equal(["bash"], image.Config.Cmd);
        Assert.Equal([ImageBootstrap.DefaultPath], image.Config.Env);
        string root = debian.Store.LayerDirectory(image.LayerDiffIds[0]);
        Assert.Contains("VERSION_CODENAME=bookworm", File.ReadAllText(Path.Combine(root, "etc", "os-release")));
        Assert.True(File.Exists(Path.Combine(root, "usr", "bin", "apt-get")));
        Assert.True(File.Exists(Path.Combine(root, "bin", "bash")) || File.Exists(Path.Combine(root, "usr", "bin", "bash")));
        string dpkg = File.ReadAllText(Path.Combine(root, "var", "lib", "dpkg", "status")).Split("\n\n")
            .Single(stanza => stanza.StartsWith("Package: dpkg\n", StringComparison.Ordinal));
        Assert.Contains("\nStatus: install ok installed\n", dpkg + "\n");
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(root, "var", "cache", "apt", "archives"), "*.deb"));
        Assert.NotEmpty(Directory.EnumerateFiles(DebianFixture.PackageCache, "*.deb"));
        Assert.Equal($"debootstrap --variant=minbase bookworm {ImageBootstrap.DebianMirror()}", debian.Store.ReadConfiguration(image).History![0].Comment);
    }
}
