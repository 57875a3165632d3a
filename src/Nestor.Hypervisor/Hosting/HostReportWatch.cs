using System.Globalization;
using System.Text;
using Nestor.Hypervisor.Engines;

namespace Nestor.Hypervisor.Hosting;

/// <summary><c>nestor host run --watch</c>: the report's table, redrawn every interval (wall-clock) while the VMs run,
/// from what the host's control interface gives (<see cref="IHostControl.List"/>, taken under the host's lock, so each
/// view is one consistent moment). On a terminal each view clears the screen and draws the table (ANSI cursor home and
/// erase display, ECMA-48 §8.3.21 and §8.3.39), as <c>nestor host top</c> does; otherwise each view is one
/// <c>key=value</c> line per VM, for scripts and logs.</summary>
public sealed class HostReportWatch : IDisposable
{
    private readonly IHostControl host;
    private readonly TextWriter output;
    private readonly TimeSpan interval;
    private readonly bool terminal;
    private readonly ManualResetEventSlim stop = new(false);
    private readonly Thread thread;

    private HostReportWatch(IHostControl host, TextWriter output, TimeSpan interval, bool terminal)
    {
        this.host = host;
        this.output = output;
        this.interval = interval;
        this.terminal = terminal;
        thread = new Thread(Loop) { Name = "host report watch", IsBackground = true };
    }

    /// <summary>Starts drawing a view of <paramref name="host"/> to <paramref name="output"/> every
    /// <paramref name="interval"/> until disposed.</summary>
    public static HostReportWatch Start(IHostControl host, TextWriter output, TimeSpan interval, bool terminal)
    {
        if (!(interval > TimeSpan.Zero))
        {
            throw new ArgumentOutOfRangeException(nameof(interval), "a watch needs a positive interval");
        }
        var watch = new HostReportWatch(host, output, interval, terminal);
        watch.thread.Start();
        return watch;
    }

    /// <summary>Views drawn so far.</summary>
    public int Views { get; private set; }

    private void Loop()
    {
        while (!stop.Wait(interval))
        {
            string view = terminal ? "\e[H\e[2J" + Table(host.List(), host.HostCounters(), DateTime.UtcNow) : PlainLines(host.List(), DateTime.UtcNow);
            output.Write(view); // one write: the VMs' serial lines (whole lines too) do not cut into it
            output.Flush();
            Views++;
        }
    }

    /// <summary>A view for a terminal: a title line and one row per VM.</summary>
    public static string Table(IReadOnlyList<HostedVmInfo> vms, IReadOnlyList<EngineCounter> hostCounters, DateTime time)
    {
        var c = CultureInfo.InvariantCulture;
        ulong ms = Counter(hostCounters, "virtual_time_ms") ?? 0;
        var text = new StringBuilder();
        text.Append(c, $"nestor host run  {time:HH:mm:ss}  {ms:N0} ms of virtual time  {vms.Count} VMs");
        if (Counter(hostCounters, "memory_state") is { } state && Counter(hostCounters, "memory_free") is { } free)
        {
            // The free-memory state (docs/overcommit.md, "Reclamation on one host").
            text.Append(c, $"  memory {((Nestor.Hypervisor.Memory.Reclamation.MemoryState)state).ToString().ToLowerInvariant()}, {free / (1024.0 * 1024):0.0} MiB free");
        }
        text.Append("\n\n");
        text.Append(c, $"{"vm",-12} {"state",-8} {"tech",-6} {"cpu %",6} {"run ms",10} {"ready ms",10} {"memory",10} {"shared",9} {"balloon",9} {"swapped",9}  outcome\n");
        foreach (var vm in vms)
        {
            text.Append(c, $"{vm.Name,-12} {vm.State.ToString().ToLowerInvariant(),-8} {vm.Technique,-6} {Share(vm),6} {Millis(vm, "run_time"),10} {Millis(vm, "ready_time"),10} {Memory(vm),10} " +
                           $"{Mib(vm, "memory_shared"),9} {Mib(vm, "memory_ballooned"),9} {Mib(vm, "memory_swapped"),9}  {vm.Outcome ?? "-"}\n");
            for (int i = 0; i < vm.VcpuCounters.Count; i++)
            {
                // A VM with several vCPUs: a row per vCPU under its VM's.
                var one = vm with { Name = $"  {vm.Name}/vcpu{i}", Counters = vm.VcpuCounters[i] };
                text.Append(c, $"{one.Name,-12} {"",-8} {"",-6} {Share(one),6} {Millis(one, "run_time"),10} {Millis(one, "ready_time"),10}\n");
            }
        }
        return text.ToString();
    }

    /// <summary>A view when not on a terminal: one line per VM, <c>key=value</c> fields without spaces.</summary>
    public static string PlainLines(IReadOnlyList<HostedVmInfo> vms, DateTime time)
    {
        var text = new StringBuilder();
        string stamp = time.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);
        foreach (var vm in vms)
        {
            text.Append(CultureInfo.InvariantCulture,
                $"{stamp} vm={vm.Name} state={vm.State} tech={vm.Technique} cpu={Share(vm)}% run_ms={Millis(vm, "run_time")} ready_ms={Millis(vm, "ready_time")} memory={Memory(vm)} " +
                $"shared={Mib(vm, "memory_shared")} ballooned={Mib(vm, "memory_ballooned")} swapped={Mib(vm, "memory_swapped")}\n");
        }
        return text.ToString();
    }

    // The VM's part of one host CPU since the host started (the host's cpu_share counter, in 0.01 %).
    private static string Share(HostedVmInfo vm) =>
        ((Counter(vm.Counters, "cpu_share") ?? 0) / 100.0).ToString("0.0", CultureInfo.InvariantCulture);

    private static string Millis(HostedVmInfo vm, string name) =>
        ((Counter(vm.Counters, name) ?? 0) / 1000.0).ToString("0.###", CultureInfo.InvariantCulture);

    private static string Memory(HostedVmInfo vm) =>
        ((Counter(vm.Counters, "memory_allocated") ?? 0) / (1024.0 * 1024)).ToString("0.0", CultureInfo.InvariantCulture) + "MiB";

    private static string Mib(HostedVmInfo vm, string name) =>
        ((Counter(vm.Counters, name) ?? 0) / (1024.0 * 1024)).ToString("0.0", CultureInfo.InvariantCulture) + "MiB";

    private static ulong? Counter(IReadOnlyList<EngineCounter> counters, string name)
    {
        foreach (var counter in counters)
        {
            if (counter.Name == name)
            {
                return counter.Value;
            }
        }
        return null;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        stop.Set();
        thread.Join();
        stop.Dispose();
    }
}
