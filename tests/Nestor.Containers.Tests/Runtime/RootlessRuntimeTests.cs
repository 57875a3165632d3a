using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>Rootless containers: <c>nestor oci run</c> executed by the unprivileged user nestor-rootless (uid 1001,
/// subordinate ids 100000:65536), with the one-id map (written by the runtime itself) and with its subordinate ids
/// (through newuidmap/newgidmap).</summary>
public sealed class RootlessRuntimeTests : IDisposable
{
    private const string User = "nestor-rootless";
    private readonly string stateRoot = Path.Combine(Path.GetTempPath(), $"nestor-rt-rootless-{Guid.NewGuid():N}");

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
    public void RootInsideIsTheCallerOutside()
    {
        uint uid = UserId();
        using var bundle = new BusyboxBundle(["sh", "-c", "id -u; id -g; cat /proc/self/uid_map; touch /made-inside"], rootless: true);
        bundle.Spec.Root!.Readonly = false;
        bundle.Spec.Linux!.UidMappings = [new SpecIdMapping { ContainerID = 0, HostID = uid, Size = 1 }];
        bundle.Spec.Linux.GidMappings = [new SpecIdMapping { ContainerID = 0, HostID = uid, Size = 1 }];
        var (status, stdout, stderr) = Run(bundle);
        Assert.True(status == 0, stderr);
        var lines = NestorRuntimeTests.Lines(stdout);
        Assert.Equal(["0", "0"], lines[..2]);
        Assert.Equal($"0 {uid} 1", string.Join(' ', lines[2].Split(' ', StringSplitOptions.RemoveEmptyEntries)));
        Assert.Equal(uid.ToString(System.Globalization.CultureInfo.InvariantCulture), Tool.Run("stat", "-c", "%u", Path.Combine(bundle.Rootfs, "made-inside")).Trim());
    }

    [Fact]
    public void SubordinateIdsMapTheOtherUsers()
    {
        uint uid = UserId();
        var (start, count) = Subordinate("/etc/subuid");
        using var bundle = new BusyboxBundle(["sh", "-c", "id -u; cat /proc/self/uid_map | wc -l; touch /data/made-inside"], rootless: true);
        Directory.CreateDirectory(Path.Combine(bundle.Rootfs, "data"));
        Tool.Run("chmod", "1777", Path.Combine(bundle.Rootfs, "data"));
        bundle.Spec.Root!.Readonly = false;
        const uint containerUser = 1000;
        bundle.Spec.Process!.User = new SpecUser { Uid = containerUser, Gid = containerUser };
        bundle.Spec.Linux!.UidMappings = [new() { ContainerID = 0, HostID = uid, Size = 1 }, new() { ContainerID = 1, HostID = start, Size = count }];
        bundle.Spec.Linux.GidMappings = [new() { ContainerID = 0, HostID = uid, Size = 1 }, new() { ContainerID = 1, HostID = Subordinate("/etc/subgid").Start, Size = Subordinate("/etc/subgid").Count }];
        var (status, stdout, stderr) = Run(bundle);
        Assert.True(status == 0, stderr);
        Assert.Equal(["1000", "2"], NestorRuntimeTests.Lines(stdout));
        long expectedOwner = start + containerUser - 1;
        Assert.Equal(expectedOwner.ToString(System.Globalization.CultureInfo.InvariantCulture), Tool.Run("stat", "-c", "%u", Path.Combine(bundle.Rootfs, "data", "made-inside")).Trim());
    }

    private (int Status, string Stdout, string Stderr) Run(BusyboxBundle bundle)
    {
        bundle.Write();
        Tool.Run("chown", "-R", $"{User}:{User}", bundle.Directory);
        return AsUser("oci", "--root", stateRoot, "run", "--bundle", bundle.Directory, RuntimeUnderTest.UniqueId("rootless"));
    }

    private static (int Status, string Stdout, string Stderr) AsUser(params string[] arguments) =>
        Tool.RunWithStatus("runuser", ["-u", User, "--", RuntimeUnderTest.Nestor, .. arguments], workingDirectory: "/");

    private static uint UserId() => uint.Parse(Tool.Run("id", "-u", User).Trim(), System.Globalization.CultureInfo.InvariantCulture);

    private static (uint Start, uint Count) Subordinate(string file)
    {
        string line = File.ReadLines(file).First(l => l.StartsWith(User + ":", StringComparison.Ordinal));
        string[] fields = line.Split(':');
        return (uint.Parse(fields[1], System.Globalization.CultureInfo.InvariantCulture), uint.Parse(fields[2], System.Globalization.CultureInfo.InvariantCulture));
    }
}
