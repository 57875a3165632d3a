using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Runtime;

/// <summary>The same bundle on Debian's crun and runc and on Nestor's runtime: the process must see the same
/// hostname, identity, working directory, environment, mount points, /dev, capabilities, no_new_privs and seccomp
/// mode (Docker's defaults from DefaultSpec).</summary>
public sealed class RuntimeComparisonTests : IDisposable
{
    private const string Probe =
        "hostname; id; pwd; env | sort; cut -d' ' -f5 /proc/self/mountinfo | grep -v '^/sys/fs/cgroup/' | sort; " +
        "ls /dev | grep -v '^core$'; grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; ulimit -n";

    private readonly RuntimeUnderTest runtime = new();

    public void Dispose() => runtime.Dispose();

    [Theory]
    [InlineData("crun")]
    [InlineData("runc")]
    public void ProcessSeesTheSameAsUnderAnInstalledRuntime(string other)
    {
        using var bundle = new BusyboxBundle(["true"]);
        var spec = DefaultSpec.Create("rootfs", ["sh", "-c", Probe], new DefaultSpecOptions
        {
            Hostname = "compare",
            Env = ["HOME=/root", "GREETING=hello"],
            Cwd = "/tmp",
            NoNewPrivileges = true,
        });
        // The host lacks CAP_SYS_RESOURCE, so an rlimit above the current hard limit cannot be set by any runtime.
        spec.Process!.Rlimits = [new SpecRlimit { Type = "RLIMIT_NOFILE", Soft = 512, Hard = 1024 }];
        File.WriteAllText(Path.Combine(bundle.Directory, "config.json"), spec.ToJson());

        string stateRoot = Path.Combine(Path.GetTempPath(), $"nestor-rt-{other}-{Guid.NewGuid():N}");
        string id = RuntimeUnderTest.UniqueId(other);
        try
        {
            var theirs = Tool.RunWithStatus(other, ["--root", stateRoot, "run", "--bundle", bundle.Directory, id]);
            Assert.True(theirs.Status == 0, theirs.Stderr);
            var ours = RunWritten(bundle);
            Assert.True(ours.Status == 0, ours.Stderr);
            Assert.Contains("compare", ours.Stdout);
            Assert.Contains("CapBnd", ours.Stdout);
            Assert.Equal(theirs.Stdout, ours.Stdout);
        }
        finally
        {
            Tool.RunWithStatus(other, ["--root", stateRoot, "delete", "--force", id]);
            if (Directory.Exists(stateRoot))
            {
                Directory.Delete(stateRoot, recursive: true);
            }
        }
    }

    /// <summary>Runs the bundle's config.json as written (not the BusyboxBundle's Spec).</summary>
    private (int Status, string Stdout, string Stderr) RunWritten(BusyboxBundle bundle)
    {
        var written = RuntimeSpec.Load(Path.Combine(bundle.Directory, "config.json"));
        bundle.Spec.Process = written.Process;
        bundle.Spec.Hostname = written.Hostname;
        bundle.Spec.Mounts = written.Mounts;
        bundle.Spec.Linux = written.Linux;
        bundle.Spec.Root = written.Root;
        bundle.Spec.OciVersion = written.OciVersion;
        return runtime.Run(bundle);
    }
}
