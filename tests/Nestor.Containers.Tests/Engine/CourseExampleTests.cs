using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Nestor.Containers.Network;
using Nestor.Containers.Tests.Images;
using Nestor.Containers.Tests.Network;
using Xunit.Abstractions;

namespace Nestor.Containers.Tests.Engine;

/// <summary>The course's example, end to end with the real <c>nestor</c> command: an image made the Docker way without
/// a Dockerfile from Debian's apache2 package (a container that installs it, then <c>commit --change</c>), run with
/// <c>-p PORT:80 -dit --name my-app</c>, and Apache's Debian default page fetched from the host with curl. PORT is a
/// free high port rather than 80 (the machine is shared); 80:80 is the same path. The containers and the image store
/// are the <see cref="DebianFixture"/>'s private ones, removed after, also on failure; a container's removal releases
/// its ports.</summary>
[Collection(DebianCollection.Name)]
public sealed class CourseExampleTests(DebianFixture debian, ITestOutputHelper output)
{
    private EngineFixture Engine => debian.Engine;

    [Fact]
    public void Apache2ImageServesItsDefaultPageOnThePublishedPort()
    {
        var total = Stopwatch.StartNew();
        output.WriteLine($"bootstrap debian:bookworm (shared fixture): {debian.BootstrapTime.TotalMinutes:F1} min");

        // docker run --network host --name build debian:bookworm sh -c 'apt-get update && apt-get install …'
        var clock = Stopwatch.StartNew();
        var build = Engine.Container(["run", "--network", "host", "--name", "build", "debian:bookworm", "sh", "-c",
            "apt-get update && apt-get install -y --no-install-recommends apache2"], stdin: null, timeout: TimeSpan.FromMinutes(20));
        Assert.True(build.Status == 0, build.ToString());
        output.WriteLine($"apt-get update and install apache2 in a container: {clock.Elapsed.TotalMinutes:F1} min");
        Assert.Contains("Setting up apache2 ", build.Output);

        // docker commit --change 'CMD […]' --change 'EXPOSE 80' build my-apache2
        clock.Restart();
        var commit = Engine.Container("commit", "--change", """CMD ["apache2ctl","-D","FOREGROUND"]""", "--change", "EXPOSE 80",
            "-m", "apache2 from Debian", "-a", "Nestor's tests", "build", "my-apache2");
        Assert.True(commit.Status == 0, commit.ToString());
        output.WriteLine($"commit: {clock.Elapsed.TotalSeconds:F0} s");
        var image = debian.Store.Resolve("my-apache2");
        Assert.Equal(commit.Output.Trim(), image.Id);
        Assert.Equal(["apache2ctl", "-D", "FOREGROUND"], image.Config.Cmd);
        Assert.Equal(["80/tcp"], image.Config.ExposedPorts!.Keys);
        Assert.Equal(debian.Image.LayerDiffIds, image.LayerDiffIds.Take(debian.Image.LayerDiffIds.Count));
        Assert.Equal(debian.Image.LayerDiffIds.Count + 1, image.LayerDiffIds.Count);
        // The committed layer holds what apt installed: the page Apache serves is Debian's file from the package.
        string page = Path.Combine(debian.Store.LayerDirectory(image.LayerDiffIds[^1]), "var", "www", "html", "index.html");
        Assert.True(File.Exists(page), "the committed layer has no /var/www/html/index.html");
        string expected = File.ReadAllText(page);
        Assert.Contains("Apache2 Debian Default Page", expected);

        Assert.Equal(0, Engine.Container("rm", "build").Status);

        // docker run -p PORT:80 -dit --name my-app my-apache2, then curl http://localhost:PORT
        int port = NetworkTestSupport.FreePort();
        string published = port.ToString(CultureInfo.InvariantCulture);
        clock.Restart();
        var run = Engine.Container("run", "-p", $"{published}:80", "-dit", "--name", "my-app", "my-apache2");
        Assert.True(run.Status == 0, run.ToString());
        foreach (string host in new[] { "localhost", "127.0.0.1" })
        {
            string? body = WaitForPage($"http://{host}:{published}/", TimeSpan.FromSeconds(60));
            Assert.True(body == expected, $"http://{host}:{published}/ gave {(body is null ? "nothing" : body.Length + " characters unlike the package's page")}; logs: {Engine.Container("logs", "my-app")}");
        }
        output.WriteLine($"run -p {published}:80 until the page answers: {clock.Elapsed.TotalSeconds:F1} s");

        using (var inspect = JsonDocument.Parse(Engine.Container("inspect", "my-app").Output))
        {
            var container = inspect.RootElement[0];
            Assert.True(container.GetProperty("State").GetProperty("Running").GetBoolean());
            Assert.Equal(["apache2ctl", "-D", "FOREGROUND"], container.GetProperty("Config").GetProperty("Cmd").EnumerateArray().Select(word => word.GetString()));
        }
        var processes = Engine.Container("top", "my-app");
        Assert.True(processes.Status == 0, processes.ToString());
        Assert.Contains("apache2", processes.Output);

        var stop = Engine.Container("stop", "-t", "3", "my-app");
        Assert.True(stop.Status == 0, stop.ToString());
        Assert.Null(NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{published}/"));
        Assert.Equal(0, Engine.Container("rm", "my-app").Status);
        PortForwarder.CheckFree(new System.Net.IPEndPoint(System.Net.IPAddress.Any, port), "tcp");
        output.WriteLine($"the course's example after the bootstrap: {total.Elapsed.TotalMinutes:F1} min");
    }

    /// <summary>curl until the page answers (Apache takes a moment to start) or <paramref name="limit"/> passes.</summary>
    private static string? WaitForPage(string url, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            string? body = NetworkTestSupport.Curl(HostProcess.RunCommand, url);
            if (body is not null || DateTime.UtcNow > deadline)
            {
                return body;
            }
            Thread.Sleep(250);
        }
    }
}

/// <summary><c>commit --change</c>, <c>-m</c> and <c>-a</c> through the real command on a busybox container: each
/// instruction lands in the new image's config and a container of that image runs by it.</summary>
public sealed class CommitChangeTests(EngineFixture engine) : IClassFixture<EngineFixture>
{
    [Fact]
    public void ChangesMessageAndAuthorMakeTheNewImagesConfig()
    {
        var made = engine.Container("run", "--name", "source", EngineFixture.ImageName, "sh", "-c", "mkdir -p /srv/app && echo from-layer > /srv/app/file");
        Assert.True(made.Status == 0, made.ToString());
        var commit = engine.Container("commit",
            "--change", "CMD [\"cat file; echo $GREETING; id -u; pwd\"]",
            "-c", "ENTRYPOINT [\"/bin/sh\", \"-c\"]",
            "--change", "ENV GREETING=\"hello there\" OTHER=x",
            "--change", "env LEGACY value with spaces",
            "--change", "EXPOSE 80 53/udp",
            "--change", "LABEL course=virtualization \"quoted key\"=yes",
            "--change", "WORKDIR /srv",
            "--change", "WORKDIR app",
            "--change", "USER nobody",
            "--change", "VOLUME [\"/data\"]",
            "-m", "made by the test", "-a", "A. Author <a@example.org>", "source", "changed:v1");
        Assert.True(commit.Status == 0, commit.ToString());

        var store = Nestor.Containers.Images.ImageStore.Open(engine.Paths.Images);
        var image = store.Resolve("changed:v1");
        Assert.Equal(commit.Output.Trim(), image.Id);
        Assert.Equal(["cat file; echo $GREETING; id -u; pwd"], image.Config.Cmd);
        Assert.Equal(["/bin/sh", "-c"], image.Config.Entrypoint);
        Assert.Contains("GREETING=hello there", image.Config.Env!);
        Assert.Contains("OTHER=x", image.Config.Env!);
        Assert.Contains("LEGACY=value with spaces", image.Config.Env!);
        Assert.Contains("PATH=/bin", image.Config.Env!); // the container's own environment stays
        Assert.Equal(["53/udp", "80/tcp"], image.Config.ExposedPorts!.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("virtualization", image.Config.Labels!["course"]);
        Assert.Equal("yes", image.Config.Labels!["quoted key"]);
        Assert.Equal("/srv/app", image.Config.WorkingDir);
        Assert.Equal("nobody", image.Config.User);
        Assert.Equal(["/data"], image.Config.Volumes!.Keys);
        var configuration = store.ReadConfiguration(image);
        Assert.Equal("A. Author <a@example.org>", configuration.Author);
        var entry = configuration.History![^1];
        Assert.Equal("made by the test", entry.Comment);
        Assert.Equal("A. Author <a@example.org>", entry.Author);
        Assert.Equal("sh -c mkdir -p /srv/app && echo from-layer > /srv/app/file", entry.CreatedBy);

        // The image runs by its new config: entrypoint sh -c with the Cmd, in WORKDIR, as USER, with ENV.
        var run = engine.Container("run", "--rm", "changed:v1");
        Assert.True(run.Status == 0, run.ToString());
        Assert.Equal("from-layer\nhello there\n65534\n/srv/app\n", run.Output);

        // The shell form: run by /bin/sh -c (the Dockerfile reference's "Shell and exec form").
        var shell = engine.Container("commit", "--change", "CMD cat /srv/app/file", "source", "changed:shell");
        Assert.True(shell.Status == 0, shell.ToString());
        Assert.Equal(["/bin/sh", "-c", "cat /srv/app/file"], store.Resolve("changed:shell").Config.Cmd);
        var shellRun = engine.Container("run", "--rm", "changed:shell");
        Assert.True(shellRun.Status == 0, shellRun.ToString());
        Assert.Equal("from-layer\n", shellRun.Output);
    }

    [Theory]
    [InlineData("RUN echo no", "RUN")]
    [InlineData("CMD", "needs arguments")]
    [InlineData("EXPOSE 80/tcpx", "bad port")]
    [InlineData("EXPOSE 70000", "bad port")]
    [InlineData("LABEL novalue", "KEY=VALUE")]
    [InlineData("ENV \"unclosed", "not closed")]
    public void BadChangesAreRefusedBeforeAnImageIsMade(string change, string reason)
    {
        string name = $"bad-{Guid.NewGuid():N}"[..12];
        Assert.Equal(0, engine.Container("create", "--name", name, EngineFixture.ImageName, "true").Status);
        int before = Nestor.Containers.Images.ImageStore.Open(engine.Paths.Images).List().Count;
        var commit = engine.Container("commit", "--change", change, name, "refused:v1");
        Assert.Equal(125, commit.Status);
        Assert.Contains(reason, commit.Error);
        Assert.Equal(before, Nestor.Containers.Images.ImageStore.Open(engine.Paths.Images).List().Count);
        Assert.Equal(0, engine.Container("rm", name).Status);
    }
}
