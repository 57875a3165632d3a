using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting.ControlApi;

namespace Nestor.Cli.Commands.Host;

/// <summary><c>nestor host top SOCKET</c>: a live view of a running host, one row per VM, from two samples of the
/// control API a given interval apart: its state, CPU share, run and ready time, exits per second and memory. On a
/// terminal the table redraws in place (ANSI escapes: cursor home, erase display, ECMA-48 §8.3.21/§8.3.39), else each
/// sample is printed as plain <c>key=value</c> lines, one per VM, for scripts and logs.</summary>
internal static class HostTopCommand
{
    // The counters the view reads (the host's names, docs/host.md). A counter the host does not have is shown as '-':
    // shared, ballooned and swapped memory come with memory overcommitment (issue 15).
    internal const string RunCycles = "run_cycles", VirtualTime = "virtual_time", CpuShare = "cpu_share", RunTime = "run_time",
        ReadyTime = "ready_time", Exits = "vm_exits", MemoryAllocated = "memory_allocated", MemorySize = "memory_size",
        MemoryShared = "memory_shared", MemoryBallooned = "memory_ballooned", MemorySwapped = "memory_swapped";

    private static readonly string[] Header = ["NAME", "STATE", "CPU", "RUN", "READY", "EXITS/S", "MEMORY", "SHARED", "BALLOONED", "SWAPPED"];

    public static Command Create()
    {
        var socket = new Argument<string>("SOCKET") { Description = "The control API socket (nestor host run --api-socket)" };
        var interval = new Option<double>("--interval") { Description = "Seconds between samples", DefaultValueFactory = _ => 1.0 };
        var count = new Option<int?>("--count") { Description = "How many views to show, then end (default: until Ctrl-C or the host ends)" };
        var command = new Command("top", "Show a running host's VMs live: state, CPU share, run and ready time, exits per second, memory")
        {
            socket, interval, count,
        };
        command.SetAction(parse => HostApiCli.Guard(() =>
        {
            double seconds = parse.GetValue(interval);
            if (!(seconds >= 0.05 && seconds <= 3600))
            {
                throw new BadInputException($"--interval {seconds.ToString(CultureInfo.InvariantCulture)} is out of range", "Give between 0.05 and 3600 seconds.");
            }
            int? views = parse.GetValue(count);
            if (views is < 1)
            {
                throw new BadInputException($"--count {views} is not a number of views", "Give --count 1 or more, or leave it out.");
            }
            using var client = new ControlApiClient(parse.GetValue(socket)!);
            return Run(client, TimeSpan.FromSeconds(seconds), views, terminal: !Console.IsOutputRedirected);
        }));
        return command;
    }

    /// <summary>One sample: every VM's document, the host's counters, and when it was taken.</summary>
    internal sealed record Sample(IReadOnlyList<VmDocument> Vms, IReadOnlyList<CounterDocument> Host, long Timestamp, DateTime Time);

    private static Sample Take(ControlApiClient client) =>
        new(client.List(), client.HostCounters(), Stopwatch.GetTimestamp(), DateTime.UtcNow);

    private static int Run(ControlApiClient client, TimeSpan interval, int? views, bool terminal)
    {
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true; // end the loop and restore the terminal, rather than be killed mid-frame
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var previous = Take(client);
            for (int shown = 0; views is null || shown < views; shown++)
            {
                if (cancel.Token.WaitHandle.WaitOne(interval))
                {
                    break;
                }
                var current = Take(client);
                if (terminal)
                {
                    // Cursor home and erase the display, then the frame: the table redraws in place.
                    Console.Out.Write("\e[H\e[2J" + Frame(previous, current, client.SocketPath));
                }
                else
                {
                    Console.Out.Write(PlainLines(previous, current));
                }
                Console.Out.Flush();
                previous = current;
            }
            return 0;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    /// <summary>The view on a terminal: a title line and the table.</summary>
    internal static string Frame(Sample previous, Sample current, string socketPath) =>
        $"nestor host top  {socketPath}  {current.Time:HH:mm:ss}  {current.Vms.Count} VMs\n\n" +
        HostApiCli.Table(Header, Rows(previous, current));

    /// <summary>The view when not on a terminal: one line per VM of the later sample, <c>key=value</c> fields.</summary>
    internal static string PlainLines(Sample previous, Sample current)
    {
        var text = new StringBuilder();
        string time = current.Time.ToString("yyyy-MM-ddTHH:mm:ss.fffZ", CultureInfo.InvariantCulture);
        foreach (var row in Rows(previous, current))
        {
            text.Append(time).Append(" vm=").Append(row[0]);
            for (int i = 1; i < Header.Length; i++)
            {
                text.Append(' ').Append(Header[i].ToLowerInvariant().Replace("/", "_per_")).Append('=').Append(row[i].Replace(" ", ""));
            }
            text.Append('\n');
        }
        return text.ToString();
    }

    private static IEnumerable<IReadOnlyList<string>> Rows(Sample previous, Sample current)
    {
        double wallSeconds = (double)(current.Timestamp - previous.Timestamp) / Stopwatch.Frequency;
        ulong? virtualNow = HostApiCli.Find(current.Host, VirtualTime)?.Value, virtualBefore = HostApiCli.Find(previous.Host, VirtualTime)?.Value;
        foreach (var vm in current.Vms)
        {
            var before = previous.Vms.FirstOrDefault(v => v.Name == vm.Name);
            yield return
            [
                vm.Name,
                vm.State,
                CpuPercent(vm, before, virtualNow - virtualBefore),
                Shown(vm, RunTime),
                Shown(vm, ReadyTime),
                PerSecond(vm, before, Exits, wallSeconds),
                HostApiCli.Find(vm.Counters, MemoryAllocated) is { } allocated ? HostApiCli.Quantity(allocated.Value, allocated.Unit) : Shown(vm, MemorySize),
                Shown(vm, MemoryShared),
                Shown(vm, MemoryBallooned),
                Shown(vm, MemorySwapped),
            ];
            // A VM with several vCPUs: a row per vCPU under its VM's (the API's vcpus array), its CPU, run and ready.
            foreach (var vcpu in vm.Vcpus ?? [])
            {
                var one = vm with { Name = $"{vm.Name}/vcpu{vcpu.Index}", Counters = vcpu.Counters, Vcpus = null };
                var oneBefore = before?.Vcpus?.FirstOrDefault(b => b.Index == vcpu.Index) is { } b ? before with { Counters = b.Counters, Vcpus = null } : null;
                yield return [one.Name, "", CpuPercent(one, oneBefore, virtualNow - virtualBefore), Shown(one, RunTime), Shown(one, ReadyTime), "", "", "", "", ""];
            }
        }
    }

    /// <summary>Percent of one host CPU in the interval: run cycles gained over the host's virtual time gained; else
    /// the host's own share since the start; else '-'.</summary>
    private static string CpuPercent(VmDocument vm, VmDocument? before, ulong? virtualElapsed)
    {
        if (before is not null && virtualElapsed is > 0 && HostApiCli.Find(vm.Counters, RunCycles) is { } now && HostApiCli.Find(before.Counters, RunCycles) is { } then)
        {
            return (100.0 * (now.Value - then.Value) / virtualElapsed.Value).ToString("0.0", CultureInfo.InvariantCulture) + "%";
        }
        return HostApiCli.Find(vm.Counters, CpuShare) is { Unit: "0.01 %" } share
            ? (share.Value / 100.0).ToString("0.0", CultureInfo.InvariantCulture) + "%"
            : "-";
    }

    private static string PerSecond(VmDocument vm, VmDocument? before, string name, double seconds)
    {
        if (before is null || seconds <= 0 || HostApiCli.Find(vm.Counters, name) is not { } now || HostApiCli.Find(before.Counters, name) is not { } then)
        {
            return "-";
        }
        double gained = now.Value >= then.Value ? now.Value - then.Value : 0;
        return (gained / seconds).ToString("0", CultureInfo.InvariantCulture);
    }

    private static string Shown(VmDocument vm, string name) =>
        HostApiCli.Find(vm.Counters, name) is { } counter ? HostApiCli.Quantity(counter.Value, counter.Unit) : "-";
}
