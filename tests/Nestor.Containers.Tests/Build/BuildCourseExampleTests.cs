using System.Diagnostics;
using System.Globalization;
using Nestor.Containers.Tests.Images;
using Nestor.Containers.Tests.Network;
using Xunit.Abstractions;

namespace Nestor.Containers.Tests.Build;

/// <summary>The course's example with a Dockerfile, as docs/containers.md ("nestor build") writes it: Debian's
/// apache2 installed by apt in a RUN (on the build's default bridge network, DNS by the host's resolv.conf), built
/// with <c>nestor build -t my-apache2 .</c>, run with <c>-p PORT:80 -dit</c>, its default page fetched with curl,
/// then stopped and removed leaving no container and no mount; a rebuild with nothing changed runs no step.</summary>
[Collection(DebianCollection.Name)]
public sealed class BuildCourseExampleTests(DebianFixture debian, ITestOutputHelper output)
{
    public const string Dockerfile = """
        FROM debian:bookworm
        RUN apt-get update && apt-get install -y --no-install-recommends apache2 && rm -rf /var/lib/apt/lists/*
        EXPOSE 80
        CMD ["apache2ctl", "-D", "FOREGROUND"]
        """;

    [Fact]
    public void Apache2BuiltFromADockerfileServesItsDefaultPage()
    {
        var engine = debian.Engine;
        string context = Path.Combine(engine.Root, "apache-context");
        Directory.CreateDirectory(context);
        File.WriteAllText(Path.Combine(context, "Dockerfile"), Dockerfile);

        var clock = Stopwatch.StartNew();
        var build = BuildFixture.Build(engine, "-t", "my-apache2", context);
        Assert.True(build.Status == 0, build.ToString());
        output.WriteLine($"nestor build -t my-apache2 . (apt-get update and install): {clock.Elapsed.TotalMinutes:F1} min");
        Assert.Contains("Setting up apache2 ", build.Output);
        var image = debian.Store.Resolve("my-apache2");
        Assert.Equal(["apache2ctl", "-D", "FOREGROUND"], image.Config.Cmd);
        Assert.Equal(["80/tcp"], image.Config.ExposedPorts!.Keys);
        Assert.Equal(debian.Image.LayerDiffIds.Count + 1, image.LayerDiffIds.Count);
        string page = Path.Combine(debian.Store.LayerDirectory(image.LayerDiffIds[^1]), "var", "www", "html", "index.html");
        string expected = File.ReadAllText(page);
        Assert.Contains("Apache2 Debian Default Page", expected);

        clock.Restart();
        var again = BuildFixture.Build(engine, "-t", "my-apache2", context);
        var cached = clock.Elapsed;
        Assert.True(again.Status == 0, again.ToString());
        Assert.Equal(3, again.Output.Split("--> CACHED").Length - 1);
        Assert.Equal(image.Id, debian.Store.Resolve("my-apache2").Id);
        output.WriteLine($"cached rebuild (JIT build of nestor, start-up included): {cached.TotalSeconds:F2} s");

        int port = NetworkTestSupport.FreePort();
        string published = port.ToString(CultureInfo.InvariantCulture);
        var run = engine.Container("run", "-p", $"{published}:80", "-dit", "--name", "my-app-built", "my-apache2");
        Assert.True(run.Status == 0, run.ToString());
        try
        {
            string? body = null;
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            while (body is null && DateTime.UtcNow < deadline)
            {
                body = NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://localhost:{published}/");
                Thread.Sleep(body is null ? 250 : 0);
            }
            Assert.True(body == expected, $"http://localhost:{published}/ gave {(body is null ? "nothing" : body.Length + " characters unlike the package's page")}");
        }
        finally
        {
            Assert.Equal(0, engine.Container("stop", "-t", "3", "my-app-built").Status);
            Assert.Equal(0, engine.Container("rm", "my-app-built").Status);
        }
        Assert.DoesNotContain(engine.ContainerIds(), id => File.ReadAllText(Path.Combine(engine.Paths.Containers, id, "container.json")).Contains("my-app-built"));
        Assert.DoesNotContain(File.ReadAllLines("/proc/self/mountinfo"), line => line.Contains(engine.Data + "/containers", StringComparison.Ordinal));
    }
}
