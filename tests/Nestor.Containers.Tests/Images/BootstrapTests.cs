using System.Diagnostics;
using Nestor.Containers.Images;
using Nestor.Host;

namespace Nestor.Containers.Tests.Images;

/// <summary>A test that runs only when NESTOR_TEST_DEBOOTSTRAP=1: debootstrap downloads a Debian base system from the
/// mirror and takes minutes, too long for every run.</summary>
public sealed class DebootstrapFactAttribute : FactAttribute
{
    public DebootstrapFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("NESTOR_TEST_DEBOOTSTRAP") != "1")
        {
            Skip = "set NESTOR_TEST_DEBOOTSTRAP=1 to run debootstrap (minutes, downloads from the Debian mirror)";
        }
    }
}

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

    /// <summary>debian:bookworm from debootstrap --variant=minbase: a root with dpkg's database, bash and apt, and
    /// Debian's os-release. Reports the time it took.</summary>
    [DebootstrapFact]
    public void DebianImage()
    {
        using var directory = new TemporaryDirectory("debian");
        var store = ImageStore.Open(directory.Combine("store"));
        var clock = Stopwatch.StartNew();
        var image = ImageBootstrap.Debian(store, "bookworm");
        Console.WriteLine($"debootstrap bookworm and import: {clock.Elapsed.TotalSeconds:F0} s, {image.Size / 1_000_000} MB");
        Assert.Equal(["debian:bookworm"], image.References);
        Assert.Equal(["bash"], image.Config.Cmd);
        string root = store.LayerDirectory(image.LayerDiffIds[0]);
        Assert.Contains("bookworm", File.ReadAllText(Path.Combine(root, "etc", "os-release")));
        Assert.True(File.Exists(Path.Combine(root, "usr", "bin", "apt-get")));
        Assert.True(File.Exists(Path.Combine(root, "var", "lib", "dpkg", "status")));
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(root, "var", "cache", "apt", "archives"), "*.deb"));
    }
}
