using System.Globalization;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Containers.Tests.Security;

/// <summary>A process started by <c>exec</c> in a running default container is confined as the container's own
/// processes are: it is in the init's control groups (so the memory and pids limits hold for it) and under the
/// container's seccomp filter. Compared on Nestor's runtime (<c>nestor oci exec</c>) and on Debian's crun and runc,
/// which both join the cgroups and load the filter in exec.</summary>
public sealed class ExecConfinementTests
{
    public static IEnumerable<object[]> Runtimes => BusyboxBundle.Runtimes;

    private const long PidsLimit = 12;

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void AnExecdProcessSharesTheInitsCgroupsAndSeccompFilter(string runtime)
    {
        string cgroup = "/nestor-exec-" + Guid.NewGuid().ToString("N")[..12];
        WithRunningContainer(runtime, new DefaultSpecOptions { Memory = 16L << 20, PidsLimit = PidsLimit, CgroupsPath = cgroup }, [], Exec =>
        {
            // The init's groups as the exec'd process sees them, through the same cgroup namespace.
            var views = Exec("cat /proc/self/cgroup; echo ---; cat /proc/1/cgroup; grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?");
            string[] halves = views.Stdout.Split("---\n");
            Assert.True(halves.Length == 2, views.Output);
            string init = string.Join('\n', halves[1].Split('\n').TakeWhile(line => !line.StartsWith("Seccomp:", StringComparison.Ordinal)));
            Assert.Equal(init + "\n", halves[0]);
            Assert.Contains(":memory:/\n", halves[0]); // the container's own memory group is its namespace's root
            // Filtered (mode 2), and unshare(2) refused by the filter: the kernel itself lets any process make a user
            // namespace, Docker's profile allows unshare only with CAP_SYS_ADMIN.
            Assert.Contains("Seccomp:\t2\n", views.Stdout);
            Assert.Contains("unshare=1", views.Stdout);
            Assert.Contains("Operation not permitted", views.Stderr);

            // The memory limit: a 64 MiB buffer in a 16 MiB group is killed by its OOM killer (128 + SIGKILL).
            var hog = Exec("dd if=/dev/zero of=/dev/null bs=64M count=1; echo dd=$?");
            Assert.True(hog.Stdout.Contains("dd=137", StringComparison.Ordinal), hog.Output);

            // The pids limit: a fork bomb in the exec'd shell stops short of it (the init and the exec'd shell count,
            // and under Nestor's runtime its relaying child outside the pid namespace too).
            var bomb = Exec("sh -c 'i=0; while [ $i -lt 40 ]; do sleep 20 & i=$((i+1)); done'; set -- /proc/[0-9]*; echo pids=$#");
            Assert.True(bomb.Output.Contains("can't fork", StringComparison.Ordinal), bomb.Output);
            string count = bomb.Stdout.Split('\n').First(line => line.StartsWith("pids=", StringComparison.Ordinal))[5..];
            Assert.InRange(int.Parse(count, CultureInfo.InvariantCulture), PidsLimit - 4, PidsLimit);
        }, cgroup);
    }

    [Theory]
    [MemberData(nameof(Runtimes))]
    public void WithNoNewPrivilegesTheFilterIsInstalledAfterTheSwitchToANonRootUser(string runtime)
    {
        // no_new_privs lets an unprivileged process install a filter: the order where the uid changes first, and the
        // filter must still be in place for the program.
        // runc and Nestor's runtime take the exec'd process's user and no_new_privs from the container's process;
        // crun's exec starts from its own defaults (root, no no_new_privs) and is told.
        string[] asTheContainer = runtime == "crun" ? ["--user", "1000:1000", "--no-new-privs"] : [];
        WithRunningContainer(runtime, new DefaultSpecOptions { NoNewPrivileges = true, Uid = 1000, Gid = 1000 }, asTheContainer, Exec =>
        {
            var views = Exec("id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; unshare -U true; echo unshare=$?");
            Assert.True(views.Stdout.StartsWith("1000\nNoNewPrivs:\t1\nSeccomp:\t2\n", StringComparison.Ordinal), views.Output);
            Assert.Contains("unshare=1", views.Stdout);
            Assert.Contains("Operation not permitted", views.Stderr);
        });
    }

    /// <summary>Creates and starts a default container running <c>sleep</c> with <paramref name="runtime"/>, runs
    /// <paramref name="test"/> with a function that execs <c>sh -c SCRIPT</c> in it (with <paramref name="execOptions"/>),
    /// then deletes it.</summary>
    private static void WithRunningContainer(string runtime, DefaultSpecOptions options, string[] execOptions, Action<Func<string, RunResult>> test, string? cgroup = null)
    {
        using var bundle = new BusyboxBundle();
        var spec = DefaultSpec.Create("rootfs", ["sleep", "120"], options);
        File.WriteAllText(Path.Combine(bundle.Directory, "config.json"), spec.ToJson());
        string id = "nestor-exec-" + Guid.NewGuid().ToString("N")[..12];
        var (file, prefix) = runtime == "nestor" ? (BusyboxBundle.Nestor, new[] { "oci" }) : (runtime, Array.Empty<string>());
        string stateRoot = Path.Combine(Path.GetTempPath(), $"nestor-exec-state-{Guid.NewGuid():N}");
        string[] root = ["--root", stateRoot];
        try
        {
            // create hands its standard streams to the container's process, which keeps them open: /dev/null, so
            // that nothing waits for their end.
            string errors = Path.Combine(bundle.Directory, "create.err");
            var created = BusyboxBundle.Run("/bin/sh",
                ["-c", $"exec \"$0\" \"$@\" </dev/null >/dev/null 2>{errors}", file, .. prefix, .. root, "create", "--bundle", bundle.Directory, id], 60);
            Assert.True(created.ExitCode == 0, File.ReadAllText(errors));
            var started = BusyboxBundle.Run(file, [.. prefix, .. root, "start", id], 60);
            Assert.True(started.ExitCode == 0, started.Output);
            test(script => BusyboxBundle.Run(file, [.. prefix, .. root, "exec", .. execOptions, id, "/bin/sh", "-c", script], 60));
        }
        finally
        {
            BusyboxBundle.Run(file, [.. prefix, .. root, "delete", "--force", id], 60);
            if (Directory.Exists(stateRoot))
            {
                Directory.Delete(stateRoot, recursive: true);
            }
            foreach (string hierarchy in cgroup is null ? [] : Directory.GetDirectories("/sys/fs/cgroup"))
            {
                string directory = Path.Combine(hierarchy, cgroup!.TrimStart('/'));
                try
                {
                    if (Directory.Exists(directory))
                    {
                        Directory.Delete(directory);
                    }
                }
                catch (IOException)
                {
                    // still emptying; the runtime's delete removes it
                }
            }
        }
    }
}
