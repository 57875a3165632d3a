using Nestor.Containers.Runtime;

namespace Nestor.Containers.Tests.Runtime;

/// <summary><see cref="RuntimeAnnotations.RootOverlay"/>: Nestor's runtime, run by the unprivileged user
/// nestor-rootless, mounts the overlay root inside the container's user and mount namespaces; the host never sees the
/// mount, and the container's writes land in the upper directory, not in the lower one.</summary>
public sealed class RootOverlayRuntimeTests : IDisposable
{
    private const string User = "nestor-rootless";
    private readonly string stateRoot = Path.Combine(Path.GetTempPath(), $"nestor-rt-overlay-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(stateRoot))
        {
            foreach (string directory in Directory.GetDirectories(stateRoot))
            {
                AsUser("oci", "--root", stateRoot, "delete", "--force", Path.GetFileName(directory));
            }
            Directory.Delete(stateRoot, recursive: true);
        }
    }

    [Fact]
    public void OverlayRootIsMountedInsideTheContainer()
    {
        using var bundle = new BusyboxBundle(["sh", "-c", "echo written > /written; cat /written; grep -c ' / / .* overlay ' /proc/self/mountinfo"], rootless: true);
        uint uid = uint.Parse(Tool.Run("id", "-u", User).Trim(), System.Globalization.CultureInfo.InvariantCulture);
        string merged = Path.Combine(bundle.Directory, "merged");
        string upper = Path.Combine(bundle.Directory, "upper");
        string work = Path.Combine(bundle.Directory, "work");
        foreach (string directory in new[] { merged, upper, work })
        {
            Directory.CreateDirectory(directory);
        }
        bundle.Spec.Root!.Path = "merged";
        bundle.Spec.Root.Readonly = false;
        bundle.Spec.Linux!.UidMappings = [new() { ContainerID = 0, HostID = uid, Size = 1 }];
        bundle.Spec.Linux.GidMappings = [new() { ContainerID = 0, HostID = uid, Size = 1 }];
        bundle.Spec.Annotations = new() { [RuntimeAnnotations.RootOverlay] = $"lowerdir={bundle.Rootfs},upperdir={upper},workdir={work},userxattr" };
        bundle.Write();
        Tool.Run("chown", "-R", $"{User}:{User}", bundle.Directory);

        var (status, stdout, stderr) = AsUser("oci", "--root", stateRoot, "run", "--bundle", bundle.Directory, RuntimeUnderTest.UniqueId("overlay"));

        Assert.True(status == 0, stderr);
        Assert.Equal(["written", "1"], NestorRuntimeTests.Lines(stdout));
        Assert.True(File.Exists(Path.Combine(upper, "written")));
        Assert.False(File.Exists(Path.Combine(bundle.Rootfs, "written")));
        Assert.Empty(Directory.GetFileSystemEntries(merged));
        Assert.DoesNotContain(merged, File.ReadAllText("/proc/self/mountinfo"));
    }

    private static (int Status, string Stdout, string Stderr) AsUser(params string[] arguments) =>
        Tool.RunWithStatus("runuser", ["-u", User, "--", RuntimeUnderTest.Nestor, .. arguments], workingDirectory: "/");
}
