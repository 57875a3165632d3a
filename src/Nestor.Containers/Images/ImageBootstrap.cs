using System.Diagnostics;
using Nestor.Host;

namespace Nestor.Containers.Images;

/// <summary>Base images made on this machine, with no registry: <c>busybox</c> from Debian's busybox-static and
/// <c>debian:SUITE</c> from debootstrap (as Docker's official images are made: a root file system tarball imported with
/// a config).</summary>
public static class ImageBootstrap
{
    /// <summary>The PATH of Docker's official images.</summary>
    public const string DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>Makes <c>busybox:TAG</c> from a static busybox (default <c>/bin/busybox</c>): the binary in /bin with a
    /// symbolic link per applet (from <c>busybox --list</c>), /etc/passwd and /etc/group with root and nobody, /tmp
    /// (mode 1777), /root, the mount points /proc, /sys and /dev, PATH and <c>Cmd ["sh"]</c>.</summary>
    public static StoredImage Busybox(ImageStore store, string reference = "busybox:latest", string busybox = "/bin/busybox")
    {
        if (!File.Exists(busybox))
        {
            throw new ImageStoreException($"{busybox} does not exist: install Debian's busybox-static (apt-get install busybox-static)");
        }
        string root = Path.Combine(store.Layout.TemporaryDirectory, "bootstrap-" + Guid.NewGuid().ToString("N"));
        try
        {
            foreach (var directory in new[] { "bin", "etc", "root", "proc", "sys", "dev", "tmp", "var", "usr/bin", "home" })
            {
                Directory.CreateDirectory(Path.Combine(root, directory));
            }
            File.Copy(busybox, Path.Combine(root, "bin", "busybox"));
            FileSystemCalls.Chmod(Path.Combine(root, "bin", "busybox"), 0x1ed);
            foreach (var applet in RunForOutput(busybox, "--list").Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (applet != "busybox" && !applet.Contains('/'))
                {
                    File.CreateSymbolicLink(Path.Combine(root, "bin", applet), "busybox");
                }
            }
            File.WriteAllText(Path.Combine(root, "etc", "passwd"),
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
            File.WriteAllText(Path.Combine(root, "etc", "group"), "root:x:0:\nnobody:x:65534:\n");
            FileSystemCalls.Chmod(Path.Combine(root, "tmp"), 0x3ff); // 1777: sticky, everyone writes
            FileSystemCalls.Chmod(Path.Combine(root, "root"), 0x1c0);
            var config = new ImageConfig { Env = [DefaultPath], Cmd = ["sh"] };
            return store.ImportRootFileSystem(root, reference, config, comment: "nestor image bootstrap busybox from " + busybox,
                createdBy: "nestor image bootstrap " + reference);
        }
        finally
        {
            if (Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    /// <summary>Makes <c>debian:SUITE</c> with <c>debootstrap --variant=minbase</c> from the Debian mirror apt uses here
    /// (<see cref="DebianMirror"/>); needs root (debootstrap makes device nodes and chroots). Takes minutes.
    /// <paramref name="cacheDirectory"/>, if given, is debootstrap's <c>--cache-dir</c>: the downloaded .debs are kept
    /// there for the next bootstrap (debootstrap(8)), as apt keeps its own in /var/cache/apt/archives; each bootstrap
    /// still checks them against the mirror's Release file and unpacks and configures every package.</summary>
    public static StoredImage Debian(ImageStore store, string suite = "bookworm", string? reference = null, string? mirror = null,
        TextWriter? progress = null, string? cacheDirectory = null)
    {
        if (!Environment.IsPrivilegedProcess)
        {
            throw new ImageStoreException("bootstrap of a Debian image needs root (debootstrap chroots and makes device nodes): run it as root and load the image into the rootless store with 'nestor image save' and 'load'");
        }
        mirror ??= DebianMirror();
        reference ??= "debian:" + suite;
        string root = Path.Combine(store.Layout.TemporaryDirectory, "debootstrap-" + Guid.NewGuid().ToString("N"));
        try
        {
            var start = new ProcessStartInfo("debootstrap") { RedirectStandardOutput = true, RedirectStandardError = true };
            start.ArgumentList.Add("--variant=minbase");
            if (cacheDirectory is not null)
            {
                // debootstrap(8): --cache-dir takes an absolute path that exists.
                Directory.CreateDirectory(cacheDirectory);
                start.ArgumentList.Add("--cache-dir=" + Path.GetFullPath(cacheDirectory));
            }
            foreach (var argument in new[] { suite, root, mirror })
            {
                start.ArgumentList.Add(argument);
            }
            using (var process = Process.Start(start) ?? throw new ImageStoreException("debootstrap could not be started: install Debian's debootstrap"))
            {
                var error = process.StandardError.ReadToEndAsync();
                string? line;
                while ((line = process.StandardOutput.ReadLine()) is not null)
                {
                    progress?.WriteLine(line);
                }
                process.WaitForExit();
                if (process.ExitCode != 0)
                {
                    string log = Path.Combine(root, "debootstrap", "debootstrap.log");
                    throw new ImageStoreException($"debootstrap --variant=minbase {suite} from {mirror} failed (exit {process.ExitCode}): {error.Result.Trim()}{(File.Exists(log) ? " (see " + log + ")" : "")}");
                }
            }
            // What Docker's debian images leave out: downloaded packages and apt's lists (apt-get update restores them).
            foreach (var cache in new[] { "var/cache/apt/archives", "var/lib/apt/lists" })
            {
                string directory = Path.Combine(root, cache);
                if (Directory.Exists(directory))
                {
                    foreach (var file in Directory.EnumerateFiles(directory))
                    {
                        File.Delete(file);
                    }
                }
            }
            var config = new ImageConfig { Env = [DefaultPath], Cmd = ["bash"] };
            return store.ImportRootFileSystem(root, reference, config, comment: $"debootstrap --variant=minbase {suite} {mirror}",
                createdBy: "nestor image bootstrap " + reference);
        }
        finally
        {
            if (Directory.Exists(root))
            {
                Directory.Delete(root, recursive: true);
            }
        }
    }

    /// <summary>The first Debian mirror apt is configured with: a <c>URIs:</c> field of /etc/apt/sources.list.d/*.sources
    /// (deb822) or a <c>deb URI suite</c> line of /etc/apt/sources.list; security and update archives are skipped.</summary>
    public static string DebianMirror()
    {
        var candidates = new List<string>();
        if (Directory.Exists("/etc/apt/sources.list.d"))
        {
            foreach (var file in Directory.EnumerateFiles("/etc/apt/sources.list.d", "*.sources").Order(StringComparer.Ordinal))
            {
                candidates.AddRange(File.ReadAllLines(file).Select(l => l.Trim())
                    .Where(l => l.StartsWith("URIs:", StringComparison.OrdinalIgnoreCase))
                    .SelectMany(l => l[5..].Split(' ', StringSplitOptions.RemoveEmptyEntries)));
            }
        }
        if (File.Exists("/etc/apt/sources.list"))
        {
            candidates.AddRange(File.ReadAllLines("/etc/apt/sources.list").Select(l => l.Trim())
                .Where(l => l.StartsWith("deb ", StringComparison.Ordinal))
                .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).First(p => !p.StartsWith('['))));
        }
        return candidates.FirstOrDefault(c => !c.Contains("security", StringComparison.Ordinal))
            ?? throw new ImageStoreException("no Debian mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources: give one with --mirror");
    }

    private static string RunForOutput(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return process.ExitCode == 0 ? output : throw new ImageStoreException($"{program} {string.Join(' ', arguments)} exited {process.ExitCode}");
    }
}
