using System.Diagnostics;
using System.Net.Sockets;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Hosting.ControlApi;

namespace Nestor.Hypervisor.Tests.Hosting.ControlApi;

/// <summary>The control API's HTTP server as a hostile or careless client meets it: malformed and oversized requests,
/// slow and idle connections, too many connections, keep-alive and pipelining; and its socket's life (mode, a live or
/// stale socket at the path, removal). Requests here are written byte by byte on a raw connection.</summary>
public class ControlApiProtocolTests
{
    [Theory]
    [InlineData("GARBAGE\r\n\r\n")]
    [InlineData("GET /\r\n\r\n")]
    [InlineData("GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n")]
    [InlineData("GET relative HTTP/1.1\r\nHost: x\r\n\r\n")]
    [InlineData("G(T / HTTP/1.1\r\nHost: x\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\nHost: x\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\nX-Next: y\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello")]
    [InlineData("GET / HTTP/1.1\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost : x\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0001b\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n")]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")]
    [InlineData("PUT /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")]
    [InlineData("PUT /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")]
    [InlineData("GET / HTTPS/1.1\r\nHost: x\r\n\r\n")]
    public void A_malformed_request_is_answered_400_with_a_fault_and_the_connection_closed(string request)
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        using (var raw = api.Raw())
        {
            raw.Send(request);
            var (status, head, body) = raw.ReadResponse();
            Assert.True(status == 400, $"{request}: {head}");
            Assert.NotEmpty(ControlApiHarness.FaultOf(body));
            Assert.Contains("Connection: close", head);
            Assert.True(raw.ClosedByServer());
        }
        Assert.Equal(1, api.Server.RequestsRefused);
        Assert.Equal(0, api.Spinning.Calls.GetValueOrDefault("SetCpu"));
        Assert.Equal(200, api.Send("GET", "/vms").Status); // and the server serves the next client
    }

    [Theory]
    [InlineData("PUT /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nContent-Length: 51201\r\n\r\n", 413)]
    [InlineData("PUT /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 413)]
    [InlineData("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505)]
    [InlineData("GET / HTTP/1.1\r\nHost: x\r\nExpect: a-miracle\r\n\r\n", 417)]
    public void An_oversized_or_unsupported_request_gets_its_status_before_any_body_is_read(string request, int expected)
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        using var raw = api.Raw();
        raw.Send(request); // no body follows: the answer must not wait for one
        var (status, head, body) = raw.ReadResponse();
        Assert.True(status == expected, head);
        Assert.NotEmpty(ControlApiHarness.FaultOf(body));
        Assert.True(raw.ClosedByServer());
    }

    [Fact]
    public void A_head_larger_than_the_limit_or_with_too_many_fields_is_431()
    {
        var options = new ControlApiOptions();
        using var api = ControlApiHarness.OverSpinningVms(running: false, options);
        using (var raw = api.Raw())
        {
            raw.Send("GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + new string('a', options.MaxHeadBytes));
            Assert.Equal(431, raw.ReadResponse().Status);
            Assert.True(raw.ClosedByServer());
        }
        using (var raw = api.Raw())
        {
            raw.Send("GET / HTTP/1.1\r\nHost: x\r\n" + string.Concat(Enumerable.Range(0, options.MaxHeaderCount).Select(i => $"X-{i}: y\r\n")) + "\r\n");
            Assert.Equal(431, raw.ReadResponse().Status);
        }
        // The limit is the limit: a head of exactly the largest field count is served.
        using (var raw = api.Raw())
        {
            raw.Send("GET / HTTP/1.1\r\nHost: x\r\n" + string.Concat(Enumerable.Range(0, options.MaxHeaderCount - 1).Select(i => $"X-{i}: y\r\n")) + "\r\n");
            Assert.Equal(200, raw.ReadResponse().Status);
        }
    }

    [Fact]
    public void A_body_of_exactly_the_limit_is_read_and_judged_by_its_content()
    {
        var options = new ControlApiOptions();
        using var api = ControlApiHarness.OverSpinningVms(running: false, options);
        string json = """{"shares":7}""";
        string body = json + new string(' ', options.MaxBodyBytes - json.Length); // JSON allows trailing whitespace
        var answer = api.Send("PUT", "/vms/alpha/cpu", body);
        Assert.True(answer.Status == 204, answer.Body);
        Assert.Equal(7, api.Host.Get("alpha").Cpu.Shares);
        Assert.Equal(413, api.Send("PUT", "/vms/alpha/cpu", body + " ").Status);
    }

    [Fact]
    public void A_slow_request_is_answered_408_and_an_idle_connection_is_closed()
    {
        var options = new ControlApiOptions { RequestTimeout = TimeSpan.FromMilliseconds(300), IdleTimeout = TimeSpan.FromMilliseconds(300) };
        using var api = ControlApiHarness.OverSpinningVms(running: false, options);
        using (var raw = api.Raw())
        {
            raw.Send("GET / HTTP/1.1\r\n"); // and nothing more
            var watch = Stopwatch.StartNew();
            Assert.Equal(408, raw.ReadResponse().Status);
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"408 after {watch.Elapsed}");
            Assert.True(raw.ClosedByServer());
        }
        using (var raw = api.Raw())
        {
            raw.Send("PUT /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"sh"); // a body that never ends
            Assert.Equal(408, raw.ReadResponse().Status);
        }
        using (var raw = api.Raw())
        {
            var watch = Stopwatch.StartNew();
            Assert.True(raw.ClosedByServer()); // sent nothing: closed after the idle timeout
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"closed after {watch.Elapsed}");
        }
        WaitUntil(() => api.Server.OpenConnections == 0);
    }

    [Fact]
    public void Keep_alive_serves_requests_in_turn_and_pipelined_and_connection_close_ends_it()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        using (var raw = api.Raw())
        {
            raw.Send("GET /vms/alpha HTTP/1.1\r\nHost: x\r\n\r\n");
            Assert.Equal(200, raw.ReadResponse().Status);
            raw.Send("PATCH /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"shares\":42}");
            Assert.Equal(204, raw.ReadResponse().Status);
            // Two requests in one write: both answered, in order.
            raw.Send("GET /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
            var first = raw.ReadResponse();
            Assert.Equal(200, first.Status);
            Assert.Contains("\"shares\":42", first.Body);
            Assert.Equal(404, raw.ReadResponse().Status); // a 404 does not end the connection
            raw.Send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            var last = raw.ReadResponse();
            Assert.Equal(200, last.Status);
            Assert.Contains("Connection: close", last.Head);
            Assert.True(raw.ClosedByServer());
        }
        using (var raw = api.Raw())
        {
            raw.Send("GET / HTTP/1.0\r\n\r\n"); // HTTP/1.0: no Host needed, closed after the answer
            Assert.Equal(200, raw.ReadResponse().Status);
            Assert.True(raw.ClosedByServer());
        }
        using (var raw = api.Raw())
        {
            raw.Send("PATCH /vms/alpha/cpu HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 12\r\n\r\n");
            Assert.Equal(100, raw.ReadResponse().Status);
            raw.Send("{\"shares\":9}");
            Assert.Equal(204, raw.ReadResponse().Status);
        }
        Assert.Equal(9, api.Host.Get("alpha").Cpu.Shares);
    }

    [Fact]
    public void Connections_beyond_the_cap_are_refused_503_until_one_closes()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false, new ControlApiOptions { MaxConnections = 2 });
        using var first = api.Raw();
        using var second = api.Raw();
        WaitUntil(() => api.Server.OpenConnections == 2);
        using (var third = api.Raw())
        {
            var (status, _, body) = third.ReadResponse();
            Assert.Equal(503, status);
            Assert.Contains("at most 2 connections", ControlApiHarness.FaultOf(body));
            Assert.True(third.ClosedByServer());
        }
        Assert.Equal(1, api.Server.ConnectionsRefused);
        first.Dispose();
        WaitUntil(() => api.Server.OpenConnections < 2);
        using var fourth = api.Raw();
        fourth.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        Assert.Equal(200, fourth.ReadResponse().Status);
    }

    [Fact]
    public void The_socket_is_its_owners_only_refused_when_live_and_removed_on_dispose_with_its_connections()
    {
        var api = ControlApiHarness.OverSpinningVms(running: false);
        try
        {
            Assert.Equal(0x180u, Nestor.Host.FileSystemCalls.LStat(api.SocketPath).Mode & 0xFFF); // 0600
            var live = Assert.Throws<BadInputException>(() => ControlApiServer.Start(api.SocketPath, api.Host));
            Assert.Contains("another process serves", live.Message);
            using var kept = api.Raw();
            kept.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            Assert.Equal(200, kept.ReadResponse().Status);
            WaitUntil(() => api.Server.OpenConnections == 1); // the probe of the refused Start has gone

            api.Server.Dispose();
            Assert.False(File.Exists(api.SocketPath));
            Assert.Equal(0, api.Server.OpenConnections); // its thread ended
            Assert.True(kept.ClosedByServer());
        }
        finally
        {
            api.Dispose();
        }
    }

    [Fact]
    public async Task A_stale_socket_is_replaced_and_a_file_that_is_not_a_socket_is_left_alone()
    {
        var directory = Directory.CreateTempSubdirectory("nestor-api-");
        using var host = new Nestor.Tests.Shared.SpinningVmHost(["alpha"], running: false);
        try
        {
            string stale = Path.Combine(directory.FullName, "stale.sock");
            ControlApiHarness.MakeStaleSocket(stale);
            Assert.True(File.Exists(stale));
            using (var server = ControlApiServer.Start(stale, host))
            using (var client = ControlApiHarness.NewClient(stale))
            {
                Assert.Equal(System.Net.HttpStatusCode.OK, (await client.GetAsync("/vms")).StatusCode);
            }
            Assert.False(File.Exists(stale));
            Assert.Empty(directory.GetFiles()); // nor the name the socket was bound under

            string regular = Path.Combine(directory.FullName, "notes.txt");
            File.WriteAllText(regular, "keep me");
            var refused = Assert.Throws<BadInputException>(() => ControlApiServer.Start(regular, host));
            Assert.Contains("is not a socket", refused.Message);
            Assert.Equal("keep me", File.ReadAllText(regular));

            var missing = Assert.Throws<BadInputException>(() => ControlApiServer.Start(Path.Combine(directory.FullName, "no", "such", "dir.sock"), host));
            Assert.Contains("cannot create the control API socket", missing.Message);
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    [Fact]
    public void A_host_that_throws_is_a_500_counted_and_the_server_goes_on()
    {
        using var api = new ControlApiHarness(new FailingOnceHost());
        var failed = api.Send("GET", "/vms");
        Assert.Equal(500, failed.Status);
        Assert.Contains("the host failed", ControlApiHarness.FaultOf(failed.Body));
        Assert.Equal(1, api.Server.InternalErrors);
        Assert.Equal(200, api.Send("GET", "/vms").Status);
    }

    [Fact]
    public void The_client_reports_a_missing_socket_a_dead_one_and_the_hosts_refusals()
    {
        using var api = ControlApiHarness.OverSpinningVms(running: false);
        using (var client = new ControlApiClient(api.SocketPath))
        {
            Assert.Equal(["alpha", "beta"], client.List().Select(v => v.Name));
            client.Resume("alpha");
            Assert.Equal(HostedVmState.Running, api.Host.Get("alpha").State);
            client.Pause("alpha");
            client.ChangeCpu("alpha", shares: 77, limit: 30);
            Assert.Equal(new CpuControls(77, 0, 30), api.Host.Get("alpha").Cpu);
            client.ChangeCpu("alpha", removeLimit: true);
            Assert.Equal(new CpuControls(77, 0, null), api.Host.Get("alpha").Cpu);
            var conflict = Assert.Throws<ControlApiRefusedException>(() => client.Pause("alpha"));
            Assert.Equal(409, conflict.Status);
            Assert.Contains("only a running VM can be paused", conflict.Message);
            Assert.Equal(404, Assert.Throws<ControlApiRefusedException>(() => client.Get("nobody")).Status);
        }
        using (var missing = new ControlApiClient(api.SocketPath + ".missing"))
        {
            Assert.Contains("there is no control API socket", Assert.Throws<BadInputException>(() => missing.List()).Message);
        }
        string path = api.SocketPath;
        api.Server.Dispose();
        ControlApiHarness.MakeStaleSocket(path);
        using (var stale = new ControlApiClient(path))
        {
            Assert.Contains("connection refused", Assert.Throws<BadInputException>(() => stale.List()).Message);
        }
    }

    private static void WaitUntil(Func<bool> condition)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), "the condition did not come within 10 s");
            Thread.Sleep(10);
        }
    }

    /// <summary>A host whose first List throws, as a bug in a host would.</summary>
    private sealed class FailingOnceHost : IHostControl
    {
        private int calls;

        public IReadOnlyList<HostedVmInfo> List() =>
            Interlocked.Increment(ref calls) == 1 ? throw new NullReferenceException("a bug") : [];

        public HostedVmInfo Get(string name) => throw new BadInputException(name);
        public void Pause(string name) { }
        public void Resume(string name) { }
        public void Stop(string name) { }
        public void SetCpu(string name, CpuControls controls) { }
        public IReadOnlyList<EngineCounter> HostCounters() => [];
    }
}
