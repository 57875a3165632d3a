using Nestor.Containers.Chroot;
using Nestor.Containers.Runtime.Spec;
using Nestor.Containers.Tests.Network;

namespace Nestor.Containers.Tests.Chroot;

/// <summary>A busybox root file system with the escape program in it, and a file outside it ("the host's secret")
/// that nothing inside should be able to read. Made once for the class, removed after it.</summary>
public sealed class ChrootEscapeFixture : IDisposable
{
    /// <summary>The classic chroot escape (chroot(2), NOTES): chroot into a subdirectory without entering it, so
    /// that the working directory is outside the process's root; ".." is only stopped at the root, so enough of them
    /// climb to the real "/"; chroot(".") there makes it the root again. Then it reads the file given.</summary>
    private const string EscapeSource = """
        #include <errno.h>
        #include <fcntl.h>
        #include <stdio.h>
        #include <string.h>
        #include <sys/stat.h>
        #include <unistd.h>

        int main(int argc, char **argv) {
            if (argc < 2) { fprintf(stderr, "usage: escape FILE\n"); return 2; }
            if (mkdir("/escape-sub", 0755) != 0 && errno != EEXIST) { printf("mkdir failed: %s\n", strerror(errno)); return 3; }
            if (chroot("/escape-sub") != 0) { printf("chroot(sub) failed: %s\n", strerror(errno)); return 3; }
            printf("chroot(sub) ok\n");
            for (int i = 0; i < 256; i++) chdir("..");
            if (chroot(".") != 0) { printf("chroot(.) failed: %s\n", strerror(errno)); return 3; }
            printf("chroot(.) ok\n");
            int fd = open(argv[1], O_RDONLY);
            if (fd < 0) { printf("not reachable: %s: %s\n", argv[1], strerror(errno)); return 1; }
            char text[256];
            ssize_t length = read(fd, text, sizeof text - 1);
            text[length > 0 ? length : 0] = 0;
            printf("escaped: %s\n", text);
            return 0;
        }
        """;

    public ChrootEscapeFixture()
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("nestor-chroot-").FullName;
        try
        {
            RootFileSystem = Path.Combine(Directory, "rootfs");
            foreach (string directory in new[] { "bin", "dev", "proc" })
            {
                System.IO.Directory.CreateDirectory(Path.Combine(RootFileSystem, directory));
            }
            File.Copy("/bin/busybox", Path.Combine(RootFileSystem, "bin", "busybox"));
            foreach (string applet in new[] { "sh", "cat", "ls" })
            {
                File.CreateSymbolicLink(Path.Combine(RootFileSystem, "bin", applet), "busybox");
            }
            string source = Path.Combine(Directory, "escape.c");
            File.WriteAllText(source, EscapeSource);
            HostProcess.Check("gcc", "-static", "-O1", "-o", Path.Combine(RootFileSystem, "escape"), source);
            Secret = $"host-secret-{Guid.NewGuid():N}";
            SecretPath = Path.Combine(Directory, "secret");
            File.WriteAllText(SecretPath, Secret);
            // World-traversable and readable, so that only the root, not the permissions, decides who sees it.
            HostProcess.Check("chmod", "755", Directory);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string Directory { get; }
    public string RootFileSystem { get; }
    public string SecretPath { get; } = "";
    public string Secret { get; } = "";

    /// <summary>Removes the subdirectory the escape program makes, so that each test starts from the same tree.</summary>
    public void RemoveEscapeDirectory()
    {
        string made = Path.Combine(RootFileSystem, "escape-sub");
        if (System.IO.Directory.Exists(made))
        {
            System.IO.Directory.Delete(made, recursive: true);
        }
    }

    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
}

/// <summary>issue 12, "chroot and its escape": a plain chroot is left by a root process with chdir(".."); a container
/// that made its root with pivot_root(2) in a mount namespace of its own is not.</summary>
public class ChrootEscapeTests(ChrootEscapeFixture fixture) : IClassFixture<ChrootEscapeFixture>
{
    /// <summary>The runtimes the container half runs on; Nestor's own runtime is added here when it lands
    /// (<c>nestor oci run</c>).</summary>
    public static TheoryData<string> Runtimes => new() { "crun", "runc" };

    [Fact]
    public void ChrootMakesTheDirectoryTheRoot()
    {
        var listing = HostProcess.Run(HostProcess.Nestor, "chroot", fixture.RootFileSystem, "ls", "-a", "/");
        Assert.Equal(0, listing.ExitCode);
        Assert.Equal(["bin", "dev", "escape", "proc"], listing.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Except([".", ".."]).Order());
        // Without the trick, the host's file is out of sight.
        var read = HostProcess.Run(HostProcess.Nestor, "chroot", fixture.RootFileSystem, "cat", fixture.SecretPath);
        Assert.NotEqual(0, read.ExitCode);
        Assert.DoesNotContain(fixture.Secret, read.Output);
    }

    [Fact]
    public void PlainChrootIsEscapedWithChdirDotDot()
    {
        try
        {
            var escape = HostProcess.Run(HostProcess.Nestor, "chroot", fixture.RootFileSystem, "/escape", fixture.SecretPath);
            Assert.True(escape.ExitCode == 0, escape.ToString());
            Assert.Contains("chroot(sub) ok", escape.Output);
            Assert.Contains($"escaped: {fixture.Secret}", escape.Output);
        }
        finally
        {
            fixture.RemoveEscapeDirectory();
        }
    }

    /// <summary>The same program as root inside a container, with CAP_SYS_CHROOT granted so that both of its chroot
    /// calls succeed: the ".."s stop at the container's root, because pivot_root(2) made the bundle's rootfs the root
    /// mount of the container's mount namespace and the old root was unmounted — the host's tree is not in the
    /// namespace at all, so there is nothing above to climb to.</summary>
    [Theory]
    [MemberData(nameof(Runtimes))]
    public void PivotRootContainerIsNotEscaped(string runtime)
    {
        string bundle = Path.Combine(fixture.Directory, $"bundle-{runtime}");
        string id = $"nestor-escape-{runtime}-{Guid.NewGuid():N}"[..40];
        Directory.CreateDirectory(bundle);
        try
        {
            WriteBundle(bundle, fixture.RootFileSystem, ["/escape", fixture.SecretPath]);
            var outcome = runtime == "nestor"
                ? HostProcess.Run(HostProcess.Nestor, "oci", "run", "--bundle", bundle, id)
                : HostProcess.Run(runtime, "run", "--bundle", bundle, id);
            Assert.True(outcome.Output.Contains("chroot(sub) ok"), outcome.ToString());
            Assert.Contains("chroot(.) ok", outcome.Output);
            Assert.Contains($"not reachable: {fixture.SecretPath}", outcome.Output);
            Assert.DoesNotContain(fixture.Secret, outcome.Output);
            Assert.Equal(1, outcome.ExitCode);
        }
        finally
        {
            if (runtime != "nestor")
            {
                HostProcess.Run(runtime, "delete", "--force", id);
            }
            Directory.Delete(bundle, recursive: true);
            fixture.RemoveEscapeDirectory();
        }
    }

    [Fact]
    public void UnprivilegedUserIsRefusedWithAdvice()
    {
        var outcome = HostProcess.Run("runuser", "-u", "nestor-rootless", "--", HostProcess.Nestor, "chroot", fixture.RootFileSystem, "/bin/sh", "-c", "true");
        Assert.Equal(ChrootJail.ChrootFailedStatus, outcome.ExitCode);
        Assert.Contains("CAP_SYS_CHROOT", outcome.Errors);
        Assert.Contains("Run it as root", outcome.Errors);
    }

    [Fact]
    public void MissingCommandIsStatus127AndMissingDirectory125()
    {
        var command = HostProcess.Run(HostProcess.Nestor, "chroot", fixture.RootFileSystem, "no-such-command");
        Assert.Equal(ChrootJail.NotFoundStatus, command.ExitCode);
        Assert.Contains("no-such-command: not found", command.Errors);
        var directory = HostProcess.Run(HostProcess.Nestor, "chroot", Path.Combine(fixture.Directory, "absent"), "sh");
        Assert.Equal(ChrootJail.ChrootFailedStatus, directory.ExitCode);
        Assert.Contains("no such directory", directory.Errors);
    }

    /// <summary>A minimal runtime-spec bundle: the five namespaces of a default container (mount, pid, ipc, uts,
    /// network), /proc, a /dev tmpfs, the rootfs writable (the program makes its subdirectory), CAP_SYS_CHROOT.</summary>
    private static void WriteBundle(string bundle, string rootFileSystem, List<string> arguments)
    {
        List<string> capabilities = ["CAP_SYS_CHROOT"];
        var spec = new RuntimeSpec
        {
            // Debian's crun 1.8.1 refuses 1.2.0 ("unknown version specified"); both runtimes take 1.0.2.
            OciVersion = "1.0.2",
            Root = new SpecRoot { Path = rootFileSystem, Readonly = false },
            Process = new SpecProcess
            {
                Terminal = false,
                Args = arguments,
                Env = ["PATH=/bin"],
                Capabilities = new SpecCapabilities { Bounding = capabilities, Effective = capabilities, Permitted = capabilities },
                NoNewPrivileges = true,
            },
            Hostname = "escape",
            Mounts =
            [
                new SpecMount { Destination = "/proc", Type = "proc", Source = "proc" },
                new SpecMount { Destination = "/dev", Type = "tmpfs", Source = "tmpfs", Options = ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            ],
            Linux = new SpecLinux
            {
                Namespaces = [new() { Type = "mount" }, new() { Type = "pid" }, new() { Type = "ipc" }, new() { Type = "uts" }, new() { Type = "network" }],
            },
        };
        File.WriteAllText(Path.Combine(bundle, "config.json"), spec.ToJson());
    }
}
