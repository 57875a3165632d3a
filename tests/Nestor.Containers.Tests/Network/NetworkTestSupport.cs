using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Nestor.Host;

namespace Nestor.Containers.Tests.Network;

/// <summary>A process standing in for a container: started in a network namespace of its own (<c>unshare --net</c>,
/// optionally inside a user namespace for the rootless tests, run by <paramref name="prefix"/> as another user), and
/// killed at the end.</summary>
internal sealed class NamespaceProcess : IDisposable
{
    private readonly Process _process;

    public NamespaceProcess(string[] command, string[]? unshareOptions = null, string[]? prefix = null)
    {
        var start = new ProcessStartInfo((prefix ?? []).Concat(["unshare"]).First()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in (prefix ?? []).Concat(["unshare"]).Skip(1).Concat(unshareOptions ?? ["--net"]).Concat(["--"]).Concat(command))
        {
            start.ArgumentList.Add(argument);
        }
        _process = Process.Start(start)!;
        // unshare execs the command once the namespaces exist: the pid is the command's, and the namespace is
        // ready when it differs from ours.
        string own = NetworkCalls.NetworkNamespaceOf(Environment.ProcessId);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{string.Join(' ', command)} ended at once: {_process.StandardError.ReadToEnd()}");
            }
            string? current = null;
            try
            {
                current = NetworkCalls.NetworkNamespaceOf(Pid);
            }
            catch (IOException)
            {
            }
            if (current is not null && current != own && ReadComm() != "unshare")
            {
                break;
            }
            if (DateTime.UtcNow > deadline)
            {
                Dispose();
                throw new TimeoutException("the namespace process did not start");
            }
            Thread.Sleep(10);
        }
    }

    public int Pid => _process.Id;

    /// <summary>Runs a command in this process's network namespace (nsenter).</summary>
    public ProcessOutcome Run(params string[] command) =>
        HostProcess.Run("nsenter", [$"--net=/proc/{Pid}/ns/net", "--", .. command]);

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }
        _process.WaitForExit();
        _process.Dispose();
    }

    private string ReadComm()
    {
        try
        {
            return File.ReadAllText($"/proc/{Pid}/comm").Trim();
        }
        catch (IOException)
        {
            return "";
        }
    }
}

/// <summary>A "remote client": a network namespace joined to the host by a veth pair of its own (not the bridge), so
/// that its traffic to the host's address comes in from outside and passes prerouting, where DNAT happens.</summary>
internal sealed class ClientNamespace : IDisposable
{
    private readonly string _hostEnd;

    public ClientNamespace()
    {
        string tag = NetworkTestSupport.Tag();
        _hostEnd = $"nch{tag}";
        string clientEnd = $"ncc{tag}";
        var (second, third) = NetworkTestSupport.RandomSubnet();
        HostAddress = $"10.{second + 50}.{third}.1";
        string clientAddress = $"10.{second + 50}.{third}.2";
        Process = new NamespaceProcess(["sleep", "600"]);
        try
        {
            HostProcess.Check("ip", "link", "add", _hostEnd, "type", "veth", "peer", "name", clientEnd);
            HostProcess.Check("ip", "link", "set", clientEnd, "netns", Process.Pid.ToString());
            HostProcess.Check("ip", "address", "add", $"{HostAddress}/24", "dev", _hostEnd);
            HostProcess.Check("ip", "link", "set", _hostEnd, "up");
            Assert.Equal(0, Process.Run("ip", "address", "add", $"{clientAddress}/24", "dev", clientEnd).ExitCode);
            Assert.Equal(0, Process.Run("ip", "link", "set", clientEnd, "up").ExitCode);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The host's address on the client's link: what the client connects to.</summary>
    public string HostAddress { get; }

    public NamespaceProcess Process { get; }

    public ProcessOutcome Run(string[] command) => Process.Run(command);

    public void Dispose()
    {
        HostProcess.Run("ip", "link", "delete", _hostEnd);
        Process.Dispose();
    }
}

internal static class NetworkTestSupport
{
    /// <summary>A short random hexadecimal tag for unique interface, table and directory names.</summary>
    public static string Tag() => Guid.NewGuid().ToString("N")[..6];

    /// <summary>A random /24 in 10.100.0.0–10.149.255.0 (clear of the engine's 10.77 and podman's 10.88), so that
    /// test classes running at once do not share a subnet.</summary>
    public static (int Second, int Third) RandomSubnet() => (Random.Shared.Next(100, 150), Random.Shared.Next(0, 256));

    /// <summary>A TCP port free on every address now.</summary>
    public static int FreePort()
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Any, 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    /// <summary>A directory with an index.html holding <paramref name="token"/>, readable by every user.</summary>
    public static string WebRoot(string token)
    {
        string directory = Directory.CreateTempSubdirectory("nestor-web-").FullName;
        File.WriteAllText(Path.Combine(directory, "index.html"), token + "\n");
        HostProcess.Check("chmod", "-R", "a+rX", directory);
        return directory;
    }

    /// <summary>curl with short time limits; the body, or null when the request failed.</summary>
    public static string? Curl(Func<string[], ProcessOutcome> run, string url)
    {
        var outcome = run(["curl", "--silent", "--max-time", "5", "--connect-timeout", "3", url]);
        return outcome.ExitCode == 0 ? outcome.Output : null;
    }
}
