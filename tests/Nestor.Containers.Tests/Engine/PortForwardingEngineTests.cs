using System.Globalization;
using System.Net;
using System.Text.Json;
using Nestor.Containers.Network;
using Nestor.Containers.Tests.Network;

namespace Nestor.Containers.Tests.Engine;

/// <summary><c>-p HOSTPORT:CONTAINERPORT</c> through the engine as root in bridge mode (the default): a busybox httpd
/// in a container answers on the host's loopback at the published port (the docker-proxy-style forwarder) and the
/// bridge's nftables DNAT map holds the port while the container runs; <c>stop</c> withdraws both, <c>start</c>
/// publishes the port again, <c>rm</c> leaves the port free.</summary>
public sealed class PortForwardingEngineTests(EngineFixture engine) : IClassFixture<EngineFixture>
{
    /// <summary>The image the course would make: busybox with a page in /www, committed with busybox httpd as its
    /// command.</summary>
    private string WebImage(string token)
    {
        string name = $"web-{Guid.NewGuid():N}"[..12];
        var made = engine.Container("run", "--name", name, "--network", "none", EngineFixture.ImageName, "sh", "-c",
            $"mkdir /www && echo {token} > /www/index.html");
        Assert.True(made.Status == 0, made.ToString());
        string image = $"{name}:web";
        var commit = engine.Container("commit", "--change", """CMD ["busybox","httpd","-f","-p","8080","-h","/www"]""",
            "--change", "EXPOSE 8080", name, image);
        Assert.True(commit.Status == 0, commit.ToString());
        Assert.Equal(0, engine.Container("rm", name).Status);
        return image;
    }

    [Fact]
    public void PublishedPortAnswersOnTheHostAndAgainAfterStopAndStart()
    {
        string token = $"page-{Guid.NewGuid():N}";
        string image = WebImage(token);
        int port = NetworkTestSupport.FreePort();
        string published = port.ToString(CultureInfo.InvariantCulture);
        var run = engine.Container("run", "-d", "-p", $"{published}:8080", "--name", "web", image);
        Assert.True(run.Status == 0, run.ToString());
        string id = run.Output.Trim();

        Assert.Equal(token, WaitForPage($"http://127.0.0.1:{published}/")?.Trim());
        Assert.Equal(token, WaitForPage($"http://localhost:{published}/")?.Trim());
        string address = ContainerAddress("web");
        Assert.StartsWith("10.77.", address);
        Assert.Contains($"tcp . {published} : {address} . 8080", FirewallTable());
        Assert.Contains($"0.0.0.0:{published}->8080/tcp", engine.Container("ps").Output);

        var stop = engine.Container("stop", "-t", "2", "web");
        Assert.True(stop.Status == 0, stop.ToString());
        Assert.Null(NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{published}/"));
        Assert.DoesNotContain($"tcp . {published} :", FirewallTable());

        var start = engine.Container("start", "web");
        Assert.True(start.Status == 0, start.ToString());
        Assert.Equal(token, WaitForPage($"http://127.0.0.1:{published}/")?.Trim());
        Assert.Contains($"tcp . {published} : {ContainerAddress("web")} . 8080", FirewallTable());

        Assert.Equal(0, engine.Container("rm", "-f", id).Status);
        Assert.Null(NetworkTestSupport.Curl(HostProcess.RunCommand, $"http://127.0.0.1:{published}/"));
        Assert.DoesNotContain($"tcp . {published} :", FirewallTable());
        PortForwarder.CheckFree(new IPEndPoint(IPAddress.Any, port), "tcp");
    }

    /// <summary>A host port another process holds is refused at start with Docker's status 125, and nothing is left.</summary>
    [Fact]
    public void PortInUseIsRefused()
    {
        using var holder = new System.Net.Sockets.TcpListener(IPAddress.Any, 0);
        holder.Start();
        string taken = ((IPEndPoint)holder.LocalEndpoint).Port.ToString(CultureInfo.InvariantCulture);
        var run = engine.Container("run", "-d", "-p", $"{taken}:8080", EngineFixture.ImageName, "sleep", "1000");
        Assert.Equal(125, run.Status);
        Assert.Contains(taken, run.Error);
        Assert.DoesNotContain($"tcp . {taken} :", FirewallTable());
        foreach (string id in engine.Container("ps", "-q", "--no-trunc").Output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            Assert.NotEqual("running", engine.Container("inspect", "-f", "{{.State.Status}}", id).Output.Trim());
        }
    }

    private string ContainerAddress(string container)
    {
        using var inspect = JsonDocument.Parse(engine.Container("inspect", container).Output);
        return inspect.RootElement[0].GetProperty("NetworkSettings").GetProperty("IPAddress").GetString()!;
    }

    private static string FirewallTable() => HostProcess.Run("nft", "list", "table", "ip", "nestor").Output;

    /// <summary>curl until the page answers (httpd takes a moment) or 30 s pass.</summary>
    internal static string? WaitForPage(string url, Func<string[], ProcessOutcome>? run = null)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            string? body = NetworkTestSupport.Curl(run ?? HostProcess.RunCommand, url);
            if (body is not null || DateTime.UtcNow > deadline)
            {
                return body;
            }
            Thread.Sleep(200);
        }
    }
}
