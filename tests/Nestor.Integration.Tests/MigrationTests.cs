using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Migration;

namespace Nestor.Integration.Tests;

/// <summary>Live migration between two real <c>nestor</c> processes over loopback TCP (docs/migration.md), as QEMU's
/// migration tests do it: NestorOS's <c>migtouch</c> increments one byte in every page of a 4 MiB area over and over
/// and checks, in the guest, that no page is stale or behind its neighbour; migrated mid-run, under every technique,
/// its RESULT lines equal an unmigrated run's. The fault tests make the migration fail (a refusing destination, one
/// killed mid-way, a connection cut by a proxy, a destination that fails to restore after the VM was stopped) and
/// check that the source VM runs on and ends with its normal RESULT lines, and that the commands say what happened.
/// Every child process is killed when its test ends, passed or failed.</summary>
public sealed class MigrationTests : IDisposable
{
    // 1,024 pages, 240 rounds, integer work after every 8 pages: about 260 million instructions, some 18 s on sim on an
    // idle machine. The guest must still run when `nestor migrate` reaches the API socket: with 80 rounds (6 s) a
    // loaded CI machine once started that command only after the guest had ended.
    private const string Workload = "migtouch 1024 240 8";
    private const string Memory = "24M";
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(240);
    private static readonly Lazy<string[]> Unmigrated = new(() =>
    {
        var run = NestorProcess.Run(Limit, "host", "run", "--vm", $"w=builtin:nestoros,cmdline={Workload},memory={Memory}");
        Assert.True(run.ExitCode == 0, run.ToString());
        return ResultLines(run.Stdout);
    });

    private readonly List<Child> children = [];

    public void Dispose()
    {
        foreach (var child in children)
        {
            child.Dispose();
        }
    }

    [Theory]
    [InlineData("native", null)]
    [InlineData("hw", "nested")]
    [InlineData("hw", "shadow")]
    [InlineData("trap", null)]
    [InlineData("bt", null)]
    [InlineData("pv", null)]
    public void Migtouch_migrated_mid_run_prints_what_an_unmigrated_run_prints(string technique, string? mmu)
    {
        var (source, destination, socket, address) = StartPair(technique, mmu);
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", address);
        Assert.True(migrate.ExitCode == 0, migrate + Dump(source, destination));
        Assert.Matches(@"round +0: +[\d,]+ pages", migrate.Stdout);
        Assert.Matches(@"downtime \d+\.\d ms", migrate.Stdout);
        Assert.Contains($"migrated to {address}", migrate.Stderr);

        Assert.True(source.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.True(destination.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.Contains($"migrated to {address}", source.Stdout);
        Assert.DoesNotContain("RESULT migtouch", source.Stdout); // it ran on there
        Assert.Equal(Unmigrated.Value, ResultLines(destination.Stdout));
        Assert.Contains("stale=0 behind=0 wrong=0", destination.Stdout);
    }

    // Post-copy (Hines and Gopalan, VEE'09) and hybrid: the link is slowed to 2 MiB/s (8 MiB/s for hybrid's pre-copy
    // round), so that the guest runs on the destination for seconds while pages are still at the source: its checker
    // and RESULT lines must be an unmigrated run's all the same, and a guest that ends before its last pages were
    // needed still lets them arrive (the source ends completed, not cut).
    [Theory]
    [InlineData("hw", "nested", "postcopy")]
    [InlineData("hw", "shadow", "postcopy")]
    [InlineData("trap", null, "postcopy")]
    [InlineData("bt", null, "postcopy")]
    [InlineData("pv", null, "postcopy")]
    [InlineData("hw", "nested", "hybrid")]
    public void Migtouch_migrated_by_post_copy_mid_run_prints_what_an_unmigrated_run_prints(string technique, string? mmu, string mode)
    {
        var (source, destination, socket, address) = StartPair(technique, mmu);
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", address, "--mode", mode, "--max-bandwidth", mode == "hybrid" ? "8M" : "2M");
        Assert.True(migrate.ExitCode == 0, migrate + Dump(source, destination));
        Assert.Contains("if either side fails (killed, connection cut) in that time, the VM is lost", migrate.Stderr);
        var post = Regex.Match(migrate.Stdout, @"post-copy: ([\d,]+) pages after the switch-over in [\d.]+ ms: ([\d,]+) pushed, ([\d,]+) demanded, ([\d,]+) pre-paged \(window 8\); ([\d,]+) demand faults");
        Assert.True(post.Success, migrate.Stdout);
        long Count(int group) => long.Parse(post.Groups[group].Value.Replace(",", ""), System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(Count(1), Count(2) + Count(3) + Count(4)); // every page after the switch-over went once
        Assert.True(Count(1) < (24 << 20) / 4096, "all-zero pages are not sent"); // 6,144 pages of RAM
        // Whether the guest faults before the push reaches a page depends on how soon its vCPU runs on this loaded
        // machine: PostCopyProtocolTests checks the demand path deterministically; here the pages must add up.
        Assert.True(Count(5) >= Count(3), "a demanded page was a fault's");
        Assert.Contains($"migrated to {address} by {mode}", migrate.Stderr);

        Assert.True(source.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.True(destination.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.Contains("runs here by post-copy", destination.Stderr);
        Assert.Matches(@"post-copy of VM 'w' complete: [\d,]+ pages", destination.Stderr);
        Assert.DoesNotContain("RESULT migtouch", source.Stdout);
        Assert.Equal(Unmigrated.Value, ResultLines(destination.Stdout));
        Assert.Contains("stale=0 behind=0 wrong=0", destination.Stdout);
    }

    [Fact]
    public void Post_copy_of_a_native_vm_is_refused_saying_why_and_the_vm_runs_on()
    {
        var (source, destination, socket, address) = StartPair("native", null);
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", address, "--mode", "postcopy");
        Assert.NotEqual(0, migrate.ExitCode);
        Assert.Contains("post-copy needs the VMM's P2M", migrate.Stderr);
        AssertRanOn(source, destination);
    }

    [Fact]
    public void The_source_killed_mid_post_copy_ends_the_destination_vm_saying_how_many_pages_never_arrived()
    {
        var (source, destination, socket, address) = StartPair("hw", "nested");
        // At 256 KiB/s the 22 MiB take a minute and a half: the source dies with most of them still there.
        var migrate = StartNestor("migrate", "--api", socket, "w", address, "--mode", "postcopy", "--max-bandwidth", "256K");
        Assert.True(destination.WaitFor(() => destination.Stderr.Contains("runs here by post-copy"), Limit), Dump(source, destination));
        Thread.Sleep(1000);
        source.Kill();
        Assert.NotEqual(0, destination.WaitForExit(Limit));
        Assert.Matches(@"post-copy source lost: [\d,]+ pages never arrived", destination.Stdout + destination.Stderr);
        Assert.Contains("VM 'w' is lost", destination.Stderr);
        Assert.DoesNotContain("RESULT migtouch", destination.Stdout); // it did not run on with pages missing
        Assert.NotEqual(0, migrate.WaitForExit(Limit));
    }

    [Fact]
    public void A_connection_cut_before_the_switch_over_of_a_hybrid_migration_leaves_the_source_vm_running()
    {
        var (source, destination, socket, address) = StartPair("hw", "nested");
        using var proxy = new CuttingProxy(MigrationSettings.ParseAddress(address, "test"), cutAfterBytes: 3 << 20);
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", proxy.Address, "--mode", "hybrid", "--max-bandwidth", "8M");
        Assert.True(migrate.ExitCode == 1, migrate + Dump(source, destination));
        Assert.Contains("the VM runs on here", migrate.Stderr);
        Assert.Equal(120, destination.WaitForExit(Limit));
        AssertRanOn(source, destination);
    }

    [Fact]
    public void A_destination_that_refuses_a_newer_stream_leaves_the_source_vm_running()
    {
        var (source, destination, socket, address) = StartPair("native", null);
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", address, "--stream-version", "2");
        Assert.Equal(1, migrate.ExitCode);
        Assert.Contains("the destination refused the migration: the migration stream's format version is 2, newer than this Nestor reads (1)", migrate.Stderr);
        Assert.Contains("the VM runs on here", migrate.Stderr);
        Assert.Equal(120, destination.WaitForExit(Limit));
        Assert.Contains("newer than this Nestor reads", destination.Stderr);
        AssertRanOn(source, destination);
    }

    [Fact]
    public void A_destination_killed_mid_way_leaves_the_source_vm_running()
    {
        var (source, destination, socket, address) = StartPair("hw", "nested");
        // At 2 MiB/s round 0 alone takes seconds: the destination is killed while it receives it.
        var migrate = StartNestor("migrate", "--api", socket, "w", address, "--max-bandwidth", "2M");
        Assert.True(destination.WaitFor(() => destination.Stderr.Contains("receiving VM"), Limit), Dump(source, destination));
        Thread.Sleep(500);
        destination.Kill();
        Assert.Equal(1, migrate.WaitForExit(Limit));
        Assert.Matches("the migration failed, and the VM runs on here: .*(broke|cut|ended before its end marker|closed)", migrate.Stderr);
        AssertRanOn(source, destination);
    }

    [Fact]
    public void A_connection_cut_mid_way_leaves_the_source_vm_running_and_the_destination_says_so()
    {
        var (source, destination, socket, address) = StartPair("native", null);
        using var proxy = new CuttingProxy(MigrationSettings.ParseAddress(address, "test"), cutAfterBytes: 3 << 20);
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", proxy.Address, "--max-bandwidth", "8M");
        Assert.True(migrate.ExitCode == 1, migrate + Dump(source, destination));
        Assert.Contains("the VM runs on here", migrate.Stderr);
        Assert.Equal(120, destination.WaitForExit(Limit));
        Assert.Matches("the migration stream (was cut inside section 'PAGE'|ended before its end marker)", destination.Stderr);
        AssertRanOn(source, destination);
    }

    [Fact]
    public void A_destination_that_fails_after_the_vm_stopped_hands_it_back_and_it_runs_on_exactly()
    {
        // A destination that takes the whole stream, the stop-and-copy included, then says it cannot restore it: the
        // source VM was stopped, and must run on from where it stopped, restored into a fresh engine.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        string address = $"tcp:127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";
        long pages = 0;
        var fake = new Thread(() =>
        {
            using var client = listener.AcceptTcpClient();
            var stream = client.GetStream();
            MigrationStream.ReadHeader(stream);
            MigrationStream.WriteSection(stream, MigrationStream.Accept, []);
            while (true)
            {
                var (tag, payload) = MigrationStream.ReadSection(stream);
                if (tag == MigrationStream.Page)
                {
                    pages += BitConverter.ToInt32(payload, 4);
                }
                if (tag == MigrationStream.Done)
                {
                    break;
                }
            }
            MigrationStream.WriteSection(stream, MigrationStream.Failed, "the test's destination does not restore VMs"u8);
        })
        { IsBackground = true };
        fake.Start();
        string socket = NestorProcess.TempPath(".sock");
        var source = StartNestor("host", "run", "--vm", $"w=builtin:nestoros,cmdline={Workload},memory={Memory},technique=hw", "--api-socket", socket, "--timeout", "200");
        Assert.True(source.WaitFor(() => source.Stdout.Contains("migtouch: started"), Limit), source.ToString());
        var migrate = NestorProcess.Run(Limit, "migrate", "--api", socket, "w", address);
        Assert.True(fake.Join(Limit));
        Assert.True(pages > 0);
        Assert.Equal(1, migrate.ExitCode);
        Assert.Contains("the destination failed to resume the VM: the test's destination does not restore VMs", migrate.Stderr);
        Assert.Matches(@"stopped at [\d,]+ instructions", migrate.Stdout);
        Assert.True(source.WaitForExit(Limit) == 0, source.ToString());
        Assert.Equal(Unmigrated.Value, ResultLines(source.Stdout));
    }

    private (Child Source, Child Destination, string Socket, string Address) StartPair(string technique, string? mmu)
    {
        var destination = StartNestor("host", "run", "--incoming", "tcp:127.0.0.1:0", "--timeout", "200");
        Assert.True(destination.WaitFor(() => destination.Stderr.Contains("waiting for a migrated VM on"), Limit), destination.ToString());
        string address = Regex.Match(destination.Stderr, @"waiting for a migrated VM on (tcp:\S+)").Groups[1].Value;
        string socket = NestorProcess.TempPath(".sock");
        string vm = $"w=builtin:nestoros,cmdline={Workload},memory={Memory},technique={technique}" + (mmu is null ? "" : $",mmu={mmu}");
        var source = StartNestor("host", "run", "--vm", vm, "--api-socket", socket, "--timeout", "200");
        Assert.True(source.WaitFor(() => source.Stdout.Contains("migtouch: started"), Limit), source.ToString());
        return (source, destination, socket, address);
    }

    // The source VM ran to its end there, as if no migration had been tried.
    private static void AssertRanOn(Child source, Child destination)
    {
        Assert.True(source.WaitForExit(Limit) == 0, Dump(source, destination));
        Assert.Equal(Unmigrated.Value, ResultLines(source.Stdout));
        Assert.DoesNotContain("migrated to", source.Stdout);
    }

    private static string[] ResultLines(string output) =>
        [.. output.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("[w] RESULT ", StringComparison.Ordinal))];

    private static string Dump(Child source, Child destination) => $"\n=== source\n{source}\n=== destination\n{destination}";

    private Child StartNestor(params string[] args)
    {
        var child = new Child(args);
        children.Add(child);
        return child;
    }

    /// <summary>A <c>nestor</c> process whose output is read as it comes; killed when disposed.</summary>
    internal sealed class Child : IDisposable
    {
        private readonly Process process;
        private readonly StringBuilder stdout = new(), stderr = new();
        private readonly string command;

        public Child(string[] args)
        {
            command = "nestor " + string.Join(' ', args);
            var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            info.ArgumentList.Add("exec");
            info.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "nestor.dll"));
            foreach (var a in args)
            {
                info.ArgumentList.Add(a);
            }
            process = new Process { StartInfo = info };
            process.OutputDataReceived += (_, e) => Append(stdout, e.Data);
            process.ErrorDataReceived += (_, e) => Append(stderr, e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        private static void Append(StringBuilder to, string? line)
        {
            if (line is not null)
            {
                lock (to)
                {
                    to.Append(line).Append('\n');
                }
            }
        }

        public string Stdout
        {
            get
            {
                lock (stdout)
                {
                    return stdout.ToString();
                }
            }
        }

        public string Stderr
        {
            get
            {
                lock (stderr)
                {
                    return stderr.ToString();
                }
            }
        }

        public bool WaitFor(Func<bool> condition, TimeSpan limit)
        {
            var clock = Stopwatch.StartNew();
            while (!condition())
            {
                if (clock.Elapsed > limit || process.HasExited && !condition())
                {
                    return condition();
                }
                Thread.Sleep(50);
            }
            return true;
        }

        public int WaitForExit(TimeSpan limit)
        {
            if (!process.WaitForExit(limit))
            {
                Kill();
                Assert.Fail($"{command} did not end within {limit.TotalSeconds} s\n{this}");
            }
            process.WaitForExit(); // the output's last lines
            return process.ExitCode;
        }

        public void Kill()
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
                // It has ended already.
            }
        }

        public override string ToString() => $"{command}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";

        public void Dispose()
        {
            Kill();
            process.Dispose();
        }
    }

    /// <summary>A TCP proxy that forwards one connection to <paramref name="target"/> and cuts it (both ways, with a
    /// reset) once <paramref name="cutAfterBytes"/> have gone through toward the target: a network that fails mid-way.</summary>
    internal sealed class CuttingProxy : IDisposable
    {
        private readonly TcpListener listener = new(IPAddress.Loopback, 0);
        private readonly Task forwarding;

        public CuttingProxy(IPEndPoint target, long cutAfterBytes)
        {
            listener.Start();
            Address = $"tcp:127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}";
            forwarding = Task.Run(async () =>
            {
                using var inbound = await listener.AcceptTcpClientAsync();
                using var outbound = new TcpClient();
                await outbound.ConnectAsync(target);
                var back = outbound.GetStream().CopyToAsync(inbound.GetStream());
                var buffer = new byte[65536];
                long forwarded = 0;
                var from = inbound.GetStream();
                var to = outbound.GetStream();
                while (forwarded < cutAfterBytes)
                {
                    int n = await from.ReadAsync(buffer);
                    if (n == 0)
                    {
                        break;
                    }
                    await to.WriteAsync(buffer.AsMemory(0, n));
                    forwarded += n;
                }
                inbound.Client.LingerState = new LingerOption(true, 0);
                outbound.Client.LingerState = new LingerOption(true, 0);
                inbound.Close();
                outbound.Close();
                try
                {
                    await back;
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException)
                {
                    // Cut.
                }
            });
        }

        public string Address { get; }

        public void Dispose()
        {
            listener.Stop();
            try
            {
                forwarding.Wait(TimeSpan.FromSeconds(5));
            }
            catch (AggregateException)
            {
                // The forwarding ends with the cut.
            }
            listener.Dispose();
        }
    }
}
