using System.Globalization;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary><c>nestor host run --watch</c> when stdout is not a terminal: views of plain <c>key=value</c> lines, one
/// per VM, drawn while the VMs run, whose figures move as they run.</summary>
public partial class HostReportWatchTests
{
    [GeneratedRegex(@"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z vm=(?<vm>a|b) state=(?<state>Running|Stopped) tech=native cpu=\d+\.\d% run_ms=(?<run>\d+(\.\d+)?) ready_ms=\d+(\.\d+)? memory=\d+\.\dMiB shared=\d+\.\dMiB ballooned=\d+\.\dMiB swapped=\d+\.\dMiB$")]
    private static partial Regex PlainLine();

    [Fact]
    public void Plain_views_are_drawn_while_the_vms_run()
    {
        var spec = new HostSpec(1UL << 30, 0, 1, SchedulerKind.ProportionalShare, [Vm("a", "spin"), Vm("b", "spin")]) { Clock = SlowClock, WallTimeout = TimeSpan.FromMinutes(2) };
        using var host = new VirtualMachineHost(spec, null);
        var output = new StringWriter();
        var thread = new Thread(host.Run);
        thread.Start();
        try
        {
            using (var watch = HostReportWatch.Start(host, TextWriter.Synchronized(output), TimeSpan.FromMilliseconds(50), terminal: false))
            {
                Assert.True(SpinWait.SpinUntil(() => watch.Views >= 4, TimeSpan.FromMinutes(1)), "the watch drew fewer than 4 views in a minute");
            }
        }
        finally
        {
            ((IHostControl)host).Stop("a");
            ((IHostControl)host).Stop("b");
            Assert.True(thread.Join(TimeSpan.FromMinutes(1)));
        }
        string[] lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length >= 8, $"{lines.Length} lines: {output}");
        Assert.DoesNotContain("\e[", output.ToString()); // no terminal escapes when not on a terminal
        var parsed = lines.Select(l => PlainLine().Match(l)).ToList();
        Assert.All(parsed.Zip(lines), p => Assert.True(p.First.Success, $"not a plain view line: '{p.Second}'"));
        // Each view names both VMs, in the order configured, and a's run time grows from the first view to the last.
        Assert.Equal(Enumerable.Range(0, lines.Length).Select(i => i % 2 == 0 ? "a" : "b"), parsed.Select(m => m.Groups["vm"].Value));
        double firstRun = double.Parse(parsed[0].Groups["run"].Value, CultureInfo.InvariantCulture);
        double lastRun = double.Parse(parsed[^2].Groups["run"].Value, CultureInfo.InvariantCulture);
        Assert.True(lastRun > firstRun, $"a's run time did not grow: {firstRun} ms, then {lastRun} ms");
    }

    [Fact]
    public void A_terminal_view_is_a_table_that_redraws_the_screen()
    {
        using var host = Run(SchedulerKind.ProportionalShare, 1, 5, Vm("a", "spin"));
        string table = HostReportWatch.Table(host.List(), host.HostCounters(), new DateTime(2026, 12, 1, 23, 0, 0, DateTimeKind.Utc));
        Assert.StartsWith("nestor host run  23:00:00  5 ms of virtual time  1 VMs", table);
        Assert.Contains("vm           state    tech    cpu %", table);
        Assert.Matches(@"\na +stopped +native +100\.0 +5 +0 +\d+\.\dMiB +0\.0MiB +0\.0MiB +0\.0MiB  stopped: the host's run of 5 ms", table);
    }
}
