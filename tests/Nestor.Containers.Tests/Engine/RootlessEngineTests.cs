using System.Diagnostics;
using System.Globalization;

namespace Nestor.Containers.Tests.Engine;

/// <summary>Rootless <c>nestor container</c>: the built CLI run as the unprivileged user nestor-rootless, with its own
/// --root and --state under a directory it owns (removed after, also on failure). The overlay root is mounted by
/// Nestor's runtime inside the container's user namespace, so nothing is mounted on the host.</summary>
public sealed class RootlessEngineTests() : RootlessUserTest("nr", TimeSpan.FromSeconds(60))
{
    // A container's own process (sleep 1000) names neither the directory nor has it as its root path seen from here.
    protected override bool IsTestProcess(string commandLine) => commandLine.Contains("sleep 1000", StringComparison.Ordinal);

    /// <summary>Inside, the container's root is uid 0; /proc/self/uid_map maps it to the caller and container ids
    /// from 1 to the caller's subordinate range (/etc/subuid), user_namespaces(7).</summary>
    [Fact]
    public void RunsAsRootInsideMappedToTheCaller()
    {
        var id = Container("run", "--rm", "busybox", "id", "-u");
        Assert.True(id.Status == 0, id.ToString());
        Assert.Equal("0\n", id.Output);

        var map = Container("run", "--rm", "busybox", "cat", "/proc/self/uid_map");
        Assert.True(map.Status == 0, map.ToString());
        var lines = map.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToList();
        Assert.Equal(["0", userId.ToString(CultureInfo.InvariantCulture), "1"], lines[0]);
        var subordinate = File.ReadLines("/etc/subuid").Select(line => line.Split(':')).First(fields => fields[0] == User);
        Assert.Equal(["1", subordinate[1], subordinate[2]], lines[1]);
        AssertNothingLeft();
    }

    /// <summary>A file the container's root writes in a -v bind belongs to the caller on the host.</summary>
    [Fact]
    public void BindWritesBelongToTheCaller()
    {
        string shared = Path.Combine(root, "shared");
        Assert.Equal(0, AsUser("mkdir", shared).Status);
        var write = Container("run", "--rm", "-v", $"{shared}:/shared", "busybox", "sh", "-c", "echo hello > /shared/file");
        Assert.True(write.Status == 0, write.ToString());
        string file = Path.Combine(shared, "file");
        Assert.Equal("hello\n", File.ReadAllText(file));
        Assert.Equal(userId.ToString(CultureInfo.InvariantCulture), Run("stat", "-c", "%u", file).Output.Trim());
        AssertNothingLeft();
    }

    /// <summary>A detached container: exec runs in it, logs shows its output, stop ends it and rm removes it, with
    /// the overlay never mounted on the host.</summary>
    [Fact]
    public void DetachedLifecycle()
    {
        var started = Container("run", "-d", "busybox", "sh", "-c", "echo started; exec sleep 1000");
        Assert.True(started.Status == 0, started.ToString());
        string id = started.Output.Trim();
        try
        {
            Assert.DoesNotContain(root, File.ReadAllText("/proc/self/mountinfo"));
            var exec = Container("exec", id, "cat", "/proc/self/uid_map");
            Assert.True(exec.Status == 0, exec.ToString());
            Assert.Contains(userId.ToString(CultureInfo.InvariantCulture), exec.Output);
            var logs = Container("logs", id);
            Assert.True(logs.Status == 0, logs.ToString());
            Assert.Equal("started\n", logs.Output);
            var stop = Container("stop", "-t", "1", id);
            Assert.True(stop.Status == 0, stop.ToString());
            var remove = Container("rm", id);
            Assert.True(remove.Status == 0, remove.ToString());
            Assert.DoesNotContain(id, Container("ps", "-a", "-q", "--no-trunc").Output);
        }
        finally
        {
            Container("rm", "-f", id);
        }
        AssertNothingLeft();
    }

    /// <summary>-p through slirp4netns (an unprivileged user can make neither a veth nor a NAT rule): a busybox httpd
    /// in a rootless container answers on the host's loopback at the published port, again after stop and start, and
    /// rm leaves the port free and nothing of the user's running. -p alone asks for the slirp network.</summary>
    [Fact]
    public void PublishedPortAnswersThroughSlirp()
    {
        string token = $"rootless-{Guid.NewGuid():N}";
        int port = Network.NetworkTestSupport.FreePort();
        string published = port.ToString(CultureInfo.InvariantCulture);
        var run = Container("run", "-d", "-p", $"{published}:8080", "--name", "web", "busybox", "sh", "-c",
            $"mkdir -p /www && echo {token} > /www/index.html && exec busybox httpd -f -p 8080 -h /www");
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();
        try
        {
            Assert.Equal(token, PortForwardingEngineTests.WaitForPage($"http://127.0.0.1:{published}/")?.Trim());
            Assert.Equal(token, PortForwardingEngineTests.WaitForPage($"http://localhost:{published}/")?.Trim());
            Assert.Contains($"0.0.0.0:{published}->8080/tcp", Container("ps").Output);
            var stop = Container("stop", "-t", "2", "web");
            Assert.True(stop.Status == 0, stop.ToString());
            Assert.Null(Network.NetworkTestSupport.Curl(Network.HostProcess.RunCommand, $"http://127.0.0.1:{published}/"));
            var start = Container("start", "web");
            Assert.True(start.Status == 0, start.ToString());
            Assert.Equal(token, PortForwardingEngineTests.WaitForPage($"http://127.0.0.1:{published}/")?.Trim());
        }
        finally
        {
            Container("rm", "-f", id);
        }
        Assert.Null(Network.NetworkTestSupport.Curl(Network.HostProcess.RunCommand, $"http://127.0.0.1:{published}/"));
        Nestor.Containers.Network.PortForwarder.CheckFree(new System.Net.IPEndPoint(System.Net.IPAddress.Any, port), "tcp");
        AssertNothingLeft();
    }

    /// <summary>cp to and from a running rootless container (through /proc/PID/root, its own mount namespace) and a
    /// stopped one (its overlay mounted in a helper's user and mount namespaces), then commit, which reads the upper
    /// directory directly, and export of the stopped container: the host's mount table never shows the container's
    /// root, and no helper is left running.</summary>
    [Fact]
    public void CopyCommitAndExportMountNothingOnTheHost()
    {
        string token = $"copied-{Guid.NewGuid():N}";
        string hostFile = Path.Combine(root, "in.txt");
        Assert.Equal(0, AsUser("sh", "-c", $"echo {token} > {hostFile}").Status);
        var run = Container("run", "-d", "--name", "box", "busybox", "sh", "-c", "echo made-inside > /root/inside; echo private > /root/private; chown 33:33 /root/private; chmod 600 /root/private; exec sleep 1000");
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();
        try
        {
            var into = Container("cp", hostFile, "box:/root/");
            Assert.True(into.Status == 0, into.ToString());
            Assert.Equal(token + "\n", Container("exec", "box", "cat", "/root/in.txt").Output);
            Assert.Equal("0\n", Container("exec", "box", "stat", "-c", "%u", "/root/in.txt").Output);
            Assert.DoesNotContain(root, File.ReadAllText("/proc/self/mountinfo"));
            string outOfRunning = Path.Combine(root, "out-running.txt");
            var fromRunning = Container("cp", "box:/root/inside", outOfRunning);
            Assert.True(fromRunning.Status == 0, fromRunning.ToString());
            Assert.Equal("made-inside\n", File.ReadAllText(outOfRunning));
            Assert.Equal(userId.ToString(CultureInfo.InvariantCulture), Run("stat", "-c", "%u", outOfRunning).Output.Trim());

            var stop = Container("stop", "-t", "1", "box");
            Assert.True(stop.Status == 0, stop.ToString());
            string outOfStopped = Path.Combine(root, "out-stopped.txt");
            var fromStopped = Container("cp", "box:/root/in.txt", outOfStopped);
            Assert.True(fromStopped.Status == 0, fromStopped.ToString());
            Assert.Equal(token + "\n", File.ReadAllText(outOfStopped));
            var intoStopped = Container("cp", hostFile, "box:/etc/second.txt");
            Assert.True(intoStopped.Status == 0, intoStopped.ToString());
            // From the image's lower layer, through the overlay: busybox itself.
            string busybox = Path.Combine(root, "busybox-copy");
            Assert.Equal(0, Container("cp", "box:/bin/busybox", busybox).Status);
            Assert.Equal(File.ReadAllBytes("/bin/busybox"), File.ReadAllBytes(busybox));
            Assert.DoesNotContain(root, File.ReadAllText("/proc/self/mountinfo"));

            var commit = Container("commit", "box", "copied:v1");
            Assert.True(commit.Status == 0, commit.ToString());
            var fromImage = Container("run", "--rm", "copied:v1", "cat", "/root/inside", "/root/in.txt", "/etc/second.txt");
            Assert.True(fromImage.Status == 0, fromImage.ToString());
            Assert.Equal($"made-inside\n{token}\n{token}\n", fromImage.Output);
            // A file only the container's uid 33 may read (a subordinate id on the host) is in the layer, owned by 33.
            Assert.NotEqual(0, AsUser("cat", Path.Combine(data, "containers", id, "upper", "root", "private")).Status);
            var inspect = AsUser(EngineFixture.Nestor, "image", "inspect", "copied:v1", "--store", Path.Combine(data, "images"));
            Assert.True(inspect.Status == 0, inspect.ToString());
            string diffId;
            using (var document = System.Text.Json.JsonDocument.Parse(inspect.Output))
            {
                diffId = document.RootElement[0].GetProperty("RootFS").GetProperty("Layers").EnumerateArray().Last().GetString()!;
            }
            using (var reader = new System.Formats.Tar.TarReader(File.OpenRead(Path.Combine(data, "images", "blobs", "sha256", diffId["sha256:".Length..]))))
            {
                var entries = new Dictionary<string, System.Formats.Tar.TarEntry>();
                while (reader.GetNextEntry() is { } entry)
                {
                    entries[entry.Name.TrimStart('.', '/')] = entry;
                }
                Assert.Equal(33, entries["root/private"].Uid);
                Assert.Equal(0, entries["root/inside"].Uid);
            }
            Assert.Equal("private\n", Container("run", "--rm", "copied:v1", "cat", "/root/private").Output);

            string archive = Path.Combine(root, "box.tar");
            var export = Container("export", "-o", archive, "box");
            Assert.True(export.Status == 0, export.ToString());
            Assert.Contains("etc/second.txt", Run("tar", "-tf", archive).Output);
        }
        finally
        {
            Container("rm", "-f", id);
        }
        AssertNothingLeft();
    }

    /// <summary>rm removes what the container's other users made in its upper directory (owned by subordinate ids,
    /// in a directory the user may not enter), as podman unshare rm would, in a user namespace mapping them.</summary>
    [Fact]
    public void RemoveDeletesFilesOfSubordinateIds()
    {
        var run = Container("run", "--name", "owners", "busybox", "sh", "-c",
            "mkdir -p /srv/d/e && echo x > /srv/d/e/f && chown -R 33:33 /srv/d && chmod 700 /srv/d /srv/d/e");
        Assert.True(run.Status == 0, run.ToString());
        string id = Container("inspect", "-f", "{{.Id}}", "owners").Output.Trim();
        string upper = Path.Combine(data, "containers", id, "upper", "srv", "d");
        var subordinate = File.ReadLines("/etc/subuid").Select(line => line.Split(':')).First(fields => fields[0] == User);
        Assert.Equal((uint.Parse(subordinate[1], CultureInfo.InvariantCulture) + 32).ToString(CultureInfo.InvariantCulture),
            Run("stat", "-c", "%u", upper).Output.Trim());
        Assert.NotEqual(0, AsUser("rm", "-rf", upper).Status); // the user alone cannot
        var remove = Container("rm", "owners");
        Assert.True(remove.Status == 0, remove.ToString());
        Assert.False(Directory.Exists(Path.Combine(data, "containers", id)));
        Assert.Empty(Container("ps", "-a", "-q").Output.Trim());
        AssertNothingLeft();
    }

    /// <summary>A --rm container whose files belong to subordinate ids leaves nothing behind either.</summary>
    [Fact]
    public void RemoveOnExitDeletesFilesOfSubordinateIds()
    {
        var run = Container("run", "--rm", "busybox", "sh", "-c", "mkdir /d && echo x > /d/f && chown -R 100:100 /d && chmod 700 /d");
        Assert.True(run.Status == 0, run.ToString());
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (Directory.Exists(Path.Combine(data, "containers")) && Directory.EnumerateDirectories(Path.Combine(data, "containers")).Any() && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(100);
        }
        Assert.Empty(Directory.Exists(Path.Combine(data, "containers")) ? Directory.EnumerateDirectories(Path.Combine(data, "containers")) : []);
        AssertNothingLeft();
    }

    /// <summary>Cgroup limits are refused at once with status 125 and advice: there is no cgroup to limit.</summary>
    [Fact]
    public void LimitsAreRefused()
    {
        var refused = Container("run", "--rm", "--memory", "16m", "busybox", "true");
        Assert.Equal(125, refused.Status);
        Assert.Contains("--memory", refused.Error);
        Assert.Contains("rootless", refused.Error);
        Assert.Empty(Container("ps", "-a", "-q").Output.Trim());
    }

    /// <summary>crun and runc would not mount the overlay root inside: refused with 125 and the reason.</summary>
    [Fact]
    public void OtherRuntimesAreRefused()
    {
        var refused = Container("run", "--rm", "--runtime", "crun", "busybox", "true");
        Assert.Equal(125, refused.Status);
        Assert.Contains("Nestor's runtime", refused.Error);
    }
}
