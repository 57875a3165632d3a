using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Hosting;

/// <summary>One VM's line of a consolidation experiment.</summary>
/// <param name="Experiment">Which experiment.</param>
/// <param name="Scheduler">share or credit.</param>
/// <param name="Vm">The VM's name.</param>
/// <param name="Cpu">Its controls.</param>
/// <param name="CpuPercent">The share of one host CPU it got, measured (run cycles over the host's virtual time).</param>
/// <param name="ExpectedPercent">What its controls entitle it to, computed from them (null for a latency VM).</param>
/// <param name="MeanLatencyMilliseconds">Its mean wake-up latency (latency-sensitive VMs).</param>
/// <param name="MaximumLatencyMilliseconds">Its longest wake-up latency.</param>
/// <param name="Migrations">Times the credit scheduler's load balancing moved it to another host CPU's run queue.</param>
public sealed record ConsolidationRow(string Experiment, string Scheduler, string Vm, CpuControls Cpu, double CpuPercent, double? ExpectedPercent,
    double? MeanLatencyMilliseconds, double? MaximumLatencyMilliseconds, long Migrations = 0);

/// <summary>One experiment's result: its rows and Jain's fairness index over the VMs' CPU shares normalised by their
/// entitlement (R. Jain, D. Chiu, W. Hawe, DEC-TR-301, 1984: (Σx)² / (n·Σx²), 1 when every VM got exactly what it
/// should).</summary>
/// <param name="HostCpus">The host CPUs it ran on (CPU % is of one of them, so the rows add up to 100 × this).</param>
public sealed record ConsolidationExperiment(string Name, string Scheduler, IReadOnlyList<ConsolidationRow> Rows, double? JainIndex, int HostCpus = 1);

/// <summary><c>nestor bench consolidate</c>: the course's server-consolidation experiment ("four VMs, each gets 40%
/// CPU: most of the time no problem, only in high-load situations VMs get less") and the fairness, reservation, limit
/// and latency measurements around it, each a host run of fixed virtual length with CPU-bound (<c>builtin:spin</c>)
/// and latency-sensitive (<c>builtin:ticker</c>) guests on one host CPU, and the credit scheduler's load balancing
/// across two.</summary>
public static class ConsolidationBench
{
    /// <summary>Runs every experiment; <paramref name="durationMilliseconds"/> of virtual time each, at
    /// <paramref name="clock"/>.</summary>
    public static IReadOnlyList<ConsolidationExperiment> Run(HostClock clock, double durationMilliseconds)
    {
        var normal = new CpuControls(1000, 0, null);
        var forty = new CpuControls(1000, 0, 40);
        var weight = new CpuControls(CreditScheduler.DefaultWeight, 0, null);
        var results = new List<ConsolidationExperiment>
        {
            Experiment("4 x 40% limit, all busy", SchedulerKind.ProportionalShare, clock, durationMilliseconds,
                [.. Enumerable.Range(1, 4).Select(i => Spin($"vm{i}", forty))]),
            Experiment("4 x 40% limit, two busy", SchedulerKind.ProportionalShare, clock, durationMilliseconds,
                [Spin("vm1", forty), Spin("vm2", forty), Ticker("vm3", forty), Ticker("vm4", forty)]),
            Experiment("equal shares", SchedulerKind.ProportionalShare, clock, durationMilliseconds,
                [.. Enumerable.Range(1, 4).Select(i => Spin($"vm{i}", normal))]),
            Experiment("shares 1:2:3:4", SchedulerKind.ProportionalShare, clock, durationMilliseconds,
                [.. Enumerable.Range(1, 4).Select(i => Spin($"vm{i}", new CpuControls(1000 * i, 0, null)))]),
            Experiment("reservation 50% at 1 share", SchedulerKind.ProportionalShare, clock, durationMilliseconds,
                [Spin("reserved", new CpuControls(1, 50, null)), Spin("vm2", normal), Spin("vm3", normal), Spin("vm4", normal)]),
            Experiment("latency next to 3 busy", SchedulerKind.ProportionalShare, clock, durationMilliseconds,
                [Ticker("ticker", normal), Spin("vm2", normal), Spin("vm3", normal), Spin("vm4", normal)]),
            Experiment("equal weights", SchedulerKind.Credit, clock, durationMilliseconds,
                [.. Enumerable.Range(1, 4).Select(i => Spin($"vm{i}", weight))]),
            Experiment("weights 1:2:3:4", SchedulerKind.Credit, clock, durationMilliseconds,
                [.. Enumerable.Range(1, 4).Select(i => Spin($"vm{i}", new CpuControls(CreditScheduler.DefaultWeight * i, 0, null)))]),
            Experiment("4 x 40% cap, two busy", SchedulerKind.Credit, clock, durationMilliseconds,
                [Spin("vm1", weight with { LimitPercent = 40 }), Spin("vm2", weight with { LimitPercent = 40 }), Ticker("vm3", weight with { LimitPercent = 40 }), Ticker("vm4", weight with { LimitPercent = 40 })]),
            Experiment("latency next to 3 busy", SchedulerKind.Credit, clock, durationMilliseconds,
                [Ticker("ticker", weight), Spin("vm2", weight), Spin("vm3", weight), Spin("vm4", weight)]),
            // Per-CPU run queues: placed round-robin, vm2 would have CPU 1 to itself and vm1 and vm3 half of CPU 0 each;
            // stealing UNDER vCPUs instead of running an OVER one evens it out to two thirds of a CPU each.
            Experiment("3 busy on 2 CPUs", SchedulerKind.Credit, clock, durationMilliseconds,
                [.. Enumerable.Range(1, 3).Select(i => Spin($"vm{i}", weight))], hostCpus: 2),
        };
        return results;
    }

    private static HostedVmSpec Spin(string name, CpuControls cpu) => Spec(name, "spin", cpu);

    // A ticker that keeps ticking for the whole experiment.
    private static HostedVmSpec Ticker(string name, CpuControls cpu) => Spec(name, "ticker", cpu);

    private static HostedVmSpec Spec(string name, string kernel, CpuControls cpu) =>
        new(name, WorkloadGuests.Get(kernel)!, "", new SimOptions(), new MemoryControls(16UL << 20, 16UL << 20, 160), cpu);

    private static ConsolidationExperiment Experiment(string name, SchedulerKind kind, HostClock clock, double duration, HostedVmSpec[] vms, int hostCpus = 1)
    {
        var spec = new HostSpec(1UL << 30, 0, hostCpus, kind, vms) { Clock = clock, DurationMilliseconds = duration };
        using var host = new VirtualMachineHost(spec, console: null);
        host.Run();
        var busy = host.Vms.Where(v => v.Spec.Kernel.Name.Contains("spin", StringComparison.Ordinal)).ToList();
        var entitlement = Entitlements(busy.Select(v => v.Spec.Cpu).ToList(), hostCpus);
        var rows = new List<ConsolidationRow>();
        var normalised = new List<double>();
        foreach (var vm in host.Vms)
        {
            var v = vm.Vcpu;
            double percent = 100.0 * v.RunCycles / Math.Max(1, host.Now);
            int index = busy.IndexOf(vm);
            double? expected = index >= 0 ? entitlement[index] : null;
            if (expected is { } e && e > 0)
            {
                normalised.Add(percent / e);
            }
            rows.Add(new ConsolidationRow(name, host.Scheduler.Name, vm.Name, v.Controls, percent, expected,
                v.Wakeups > 0 ? clock.Milliseconds(v.WakeLatencyCycles) / v.Wakeups : null,
                v.Wakeups > 0 ? clock.Milliseconds(v.MaximumWakeLatencyCycles) : null, v.Migrations));
        }
        double? jain = normalised.Count > 1 ? Math.Pow(normalised.Sum(), 2) / (normalised.Count * normalised.Sum(x => x * x)) : null;
        return new ConsolidationExperiment(name, host.Scheduler.Name, rows, jain, hostCpus);
    }

    /// <summary>What each busy one-vCPU VM is entitled to, in percent of one CPU, by its controls (the latency VMs'
    /// small use left out): reservations first, then the rest of <paramref name="hostCpus"/> × 100% in proportion to
    /// shares, no VM above its limit or above one whole CPU (it has one vCPU), the excess redistributed
    /// (water-filling).</summary>
    public static double[] Entitlements(IReadOnlyList<CpuControls> controls, int hostCpus = 1)
    {
        int n = controls.Count;
        var share = new double[n];
        var fixedAt = new bool[n];
        double left = 100.0 * hostCpus;
        for (int i = 0; i < n; i++)
        {
            share[i] = controls[i].ReservationPercent;
            left -= share[i];
        }
        while (left > 1e-9)
        {
            double weights = Enumerable.Range(0, n).Where(i => !fixedAt[i]).Sum(i => (double)controls[i].Shares);
            if (weights <= 0)
            {
                break;
            }
            double given = 0;
            bool capped = false;
            for (int i = 0; i < n && !capped; i++)
            {
                if (fixedAt[i])
                {
                    continue;
                }
                double want = share[i] + left * controls[i].Shares / weights;
                // A reservation above the share-based amount keeps the reservation (it is a floor).
                double limit = Math.Min(controls[i].LimitPercent ?? 100, 100);
                if (want >= limit)
                {
                    given += limit - share[i];
                    share[i] = limit;
                    fixedAt[i] = true;
                    capped = true;
                }
            }
            if (capped)
            {
                left -= given;
                continue;
            }
            for (int i = 0; i < n; i++)
            {
                if (!fixedAt[i])
                {
                    share[i] += left * controls[i].Shares / weights;
                }
            }
            left = 0;
        }
        return share;
    }
}
