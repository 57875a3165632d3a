using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary>Debian's docker-registry (distribution 2.8) served on a free loopback port from a temporary directory,
/// optionally with htpasswd Basic authentication; killed and its directory removed on Dispose.</summary>
public sealed class RegistryServer : IDisposable
{
    private readonly Process process;

    private RegistryServer(string directory, int port, Process process, RegistryCredential? user)
    {
        Directory = directory;
        Port = port;
        this.process = process;
        User = user;
    }

    /// <summary>The temporary directory: config.yml, htpasswd and the storage root <c>data/</c>.</summary>
    public string Directory { get; }

    public int Port { get; }

    /// <summary>The user htpasswd admits, or null when the registry is open.</summary>
    public RegistryCredential? User { get; }

    /// <summary>The registry part of references to this server.</summary>
    public string Address => $"127.0.0.1:{Port}";

    /// <summary>The filesystem driver's storage root.</summary>
    public string StorageRoot => Path.Combine(Directory, "data");

    public static RegistryServer Start(RegistryCredential? user = null, (string Certificate, string Key)? tls = null)
    {
        string directory = System.IO.Directory.CreateTempSubdirectory("nestor-registry-").FullName;
        try
        {
            int port = FreePort();
            string auth = "";
            if (user is not null)
            {
                string hash = Run("python3", ["-W", "ignore", "-c",
                    "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))", user.Password]).Trim();
                Assert.StartsWith("$2", hash);
                File.WriteAllText(Path.Combine(directory, "htpasswd"), $"{user.UserName}:{hash}\n");
                auth = $"""
                    auth:
                      htpasswd:
                        realm: nestor-test
                        path: {directory}/htpasswd
                    """;
            }
            string certificate = tls is { } files ? $"""

                  tls:
                    certificate: {files.Certificate}
                    key: {files.Key}
                """ : "";
            File.WriteAllText(Path.Combine(directory, "config.yml"), $"""
                version: 0.1
                log:
                  level: error
                  accesslog:
                    disabled: true
                storage:
                  filesystem:
                    rootdirectory: {directory}/data
                  delete:
                    enabled: true
                http:
                  addr: 127.0.0.1:{port}
                  secret: nestor-test-{port}{certificate}
                {auth}
                """);
            var start = new ProcessStartInfo("/usr/bin/docker-registry", ["serve", Path.Combine(directory, "config.yml")])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            var process = Process.Start(start)!;
            process.OutputDataReceived += (_, _) => { };
            process.ErrorDataReceived += (_, _) => { };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            var server = new RegistryServer(directory, port, process, user);
            try
            {
                server.WaitUntilServing();
            }
            catch
            {
                server.Dispose();
                throw;
            }
            return server;
        }
        catch
        {
            if (System.IO.Directory.Exists(directory))
            {
                System.IO.Directory.Delete(directory, recursive: true);
            }
            throw;
        }
    }

    /// <summary>A loopback port nothing listens on (just released by the kernel).</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Runs a tool to its end; its standard output, or an assertion failure with its standard error.</summary>
    public static string Run(string file, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        var start = new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', arguments)} did not finish");
        }
        Assert.True(process.ExitCode == 0, $"{file} {string.Join(' ', arguments)} exited {process.ExitCode}: {error.Result}");
        return output.Result;
    }

    public void Dispose()
    {
        try
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                process.WaitForExit(10_000);
            }
        }
        finally
        {
            process.Dispose();
            if (System.IO.Directory.Exists(Directory))
            {
                System.IO.Directory.Delete(Directory, recursive: true);
            }
        }
    }

    private void WaitUntilServing()
    {
        // Any HTTP answer means it serves: a TLS registry answers plain HTTP with 400.
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            if (process.HasExited)
            {
                Assert.Fail($"docker-registry exited {process.ExitCode} before serving");
            }
            try
            {
                using var response = http.GetAsync($"http://{Address}/v2/").GetAwaiter().GetResult();
                return;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(50);
            }
        }
    }
}

/// <summary>One registry shared by a test class's tests (each test uses its own repositories).</summary>
public sealed class OpenRegistryFixture : IDisposable
{
    public RegistryServer Server { get; } = RegistryServer.Start();

    public void Dispose() => Server.Dispose();
}
