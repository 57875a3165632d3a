using System.Diagnostics;
using Nestor.Hypervisor.Devices.Virtio.Balloon;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>What <see cref="IdleTaxBench"/> runs: two NestorOS VMs with equal shares on one host that has
/// <see cref="AvailablePages"/> for them, fewer than their max together.</summary>
/// <param name="IdleWorkload">The idle VM's command line: it touches memory once, then computes in a few pages.</param>
/// <param name="ActiveWorkload">The active VM's: it touches a large buffer over and over.</param>
/// <param name="MemoryBytes">Each VM's RAM (its max).</param>
/// <param name="MinBytes">Each VM's min.</param>
/// <param name="AvailablePages">Pages the host can give the two VMs together.</param>
/// <param name="SamplePeriodMilliseconds">The sampling (and policy) period in virtual milliseconds.</param>
/// <param name="DurationMilliseconds">How long the host runs, in virtual milliseconds.</param>
/// <param name="SamplesPerPeriod">n of the sampler.</param>
public sealed record IdleTaxBenchSetup(string IdleWorkload, string ActiveWorkload, ulong MemoryBytes, ulong MinBytes, long AvailablePages,
    double SamplePeriodMilliseconds, double DurationMilliseconds, int SamplesPerPeriod = ActiveMemorySampler.DefaultSamplesPerPeriod)
{
    /// <summary>The defaults of <c>nestor bench overcommit idletax</c>: 32 MiB VMs (min 4 MiB) on 40 MiB; the idle VM
    /// touches 24 MiB and then computes, the active one runs <c>memtouch 20 rand</c> twelve times (NestorOS takes a
    /// command line of up to 250 characters).</summary>
    public static IdleTaxBenchSetup Default => new("memtouch 24 seq ; steal 4000000000",
        string.Join(" ; ", Enumerable.Repeat("memtouch 20 rand", 12)), 32UL << 20, 4UL << 20, 10240, 1, 32);
}

/// <summary>One VM at the end of an <see cref="IdleTaxBench"/> run.</summary>
/// <param name="ActiveFraction">The sampler's estimate f (the largest of its three averages).</param>
/// <param name="LastSample">The last period's t / n.</param>
/// <param name="TargetPages">The policy's target.</param>
/// <param name="FormulaPages">The formula's allocation for the same f: equal ρ = S / (P(f + k(1 − f))) for both VMs,
/// P within [min, max], summing to the available pages (solved in closed form, not by the policy's steps).</param>
/// <param name="HeldPages">Guest pages with a host frame (what the VM holds).</param>
/// <param name="BalloonActual">Pages the guest's balloon driver says it holds.</param>
/// <param name="BalloonTarget">The balloon target the host set: max − target.</param>
/// <param name="Programs">RESULT lines of its programs (init's own aside): the work it finished in the run.</param>
/// <param name="GuestCyclesPerProgram">The mean <c>total_cycles</c> its programs measured for themselves (0: none).</param>
/// <param name="Outcome">How its run ended.</param>
public sealed record IdleTaxVmResult(string Name, double ActiveFraction, double LastSample, long TargetPages, long FormulaPages, long HeldPages,
    long PeakHeldPages, uint BalloonTarget, uint BalloonActual, long PagesInflated, long PagesDeflated, long SampledFaults, long Periods,
    int Programs, double GuestCyclesPerProgram, string Outcome);

/// <summary>The VMs' held pages at one policy step (the Fig. 8 timeline).</summary>
public readonly record struct IdleTaxStep(double Milliseconds, long IdleHeld, long ActiveHeld, long IdleTarget, long ActiveTarget, double IdleF, double ActiveF);

/// <summary>One τ of <see cref="IdleTaxBench"/>.</summary>
public sealed record IdleTaxRun(double TaxRate, IReadOnlyList<IdleTaxVmResult> Vms, IReadOnlyList<IdleTaxStep> Timeline, TimeSpan Wall);

/// <summary><c>nestor bench overcommit idletax</c>: the issue's idle-tax test, after Waldspurger, OSDI 2002, §5.4 and
/// Fig. 8. An idle and an active NestorOS VM with equal shares share a host short of memory; between the host's rounds
/// an <see cref="ActiveMemorySampler"/> per VM estimates f, and every sampling period the
/// <see cref="IdleMemoryTax"/> policy's targets are applied by setting each VM's virtio balloon to max − target (the
/// guest's driver inflates on its next timer tick, and the P2M gives the frames back). With τ = 0 the two VMs get
/// equal targets whatever they do; with τ = 0.75 the idle VM's memory goes to the active one.</summary>
public static class IdleTaxBench
{
    /// <summary>Runs the setup once per tax rate.</summary>
    public static IEnumerable<IdleTaxRun> Run(IdleTaxBenchSetup setup, IEnumerable<double> taxRates)
    {
        foreach (double tau in taxRates)
        {
            yield return RunOne(setup, new IdleMemoryTax(tau));
        }
    }

    private static IdleTaxRun RunOne(IdleTaxBenchSetup setup, IdleMemoryTax policy)
    {
        var wall = Stopwatch.StartNew();
        var clock = HostClock.Default;
        const int Shares = 1000;
        var sim = new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested };
        HostedVmSpec Spec(string name, string cmdline) => new(name, BuiltIn.BuiltInGuests.Get("nestoros"), cmdline, sim,
            new MemoryControls(setup.MinBytes, setup.MemoryBytes, Shares), new CpuControls(1000, 0, null))
        { Balloon = true };
        var spec = new HostSpec(4 * setup.MemoryBytes, 4 * setup.MemoryBytes, 2, SchedulerKind.ProportionalShare,
            [Spec("idle", setup.IdleWorkload), Spec("active", setup.ActiveWorkload)])
        { Clock = clock, DurationMilliseconds = setup.DurationMilliseconds, Overcommit = OvercommitOptions.Off with { Balloon = true } }; // the bench drives the balloons itself: no reclaim by the host's states
        long period = clock.Cycles(setup.SamplePeriodMilliseconds);
        var samplers = new[] { new ActiveMemorySampler(period, setup.SamplesPerPeriod, seed: 1), new ActiveMemorySampler(period, setup.SamplesPerPeriod, seed: 2) };
        long maxPages = (long)(setup.MemoryBytes >> 12), minPages = (long)(setup.MinBytes >> 12);
        var demands = new VmMemoryDemand[2];
        var targets = new long[2];
        var held = new long[2];
        var peak = new long[2];
        var timeline = new List<IdleTaxStep>();
        long nextPolicy = period;
        using var vmHost = new VirtualMachineHost(spec, console: null);
        vmHost.BetweenRounds = (host, round) =>
        {
            long now = vmHost.Now + round;
            for (int i = 0; i < 2; i++)
            {
                if (vmHost.Vms[i].Vm is { } vm && host.PhysicalMapOf(vm) is { } map && !map.IsDisposed)
                {
                    samplers[i].Advance(map, vmHost.Vms[i].Vcpu.GuestClock);
                    held[i] = map.TouchedPages;
                    peak[i] = Math.Max(peak[i], held[i]);
                }
            }
            if (now < nextPolicy)
            {
                return;
            }
            nextPolicy += period;
            for (int i = 0; i < 2; i++)
            {
                demands[i] = new VmMemoryDemand(vmHost.Vms[i].Name, minPages, maxPages, Shares, held[i], samplers[i].ActiveFraction);
            }
            policy.Allocate(demands, setup.AvailablePages, targets);
            for (int i = 0; i < 2; i++)
            {
                if (vmHost.Vms[i].Vm is { } vm && VirtioBalloon.Of(vm) is { } balloon)
                {
                    balloon.SetTarget((uint)(maxPages - targets[i]));
                }
            }
            timeline.Add(new IdleTaxStep(clock.Milliseconds(now), held[0], held[1], targets[0], targets[1], demands[0].ActiveFraction, demands[1].ActiveFraction));
        };
        vmHost.Run();
        if (timeline.Count == 0)
        {
            throw new Errors.WorkloadFailedException("the idle-tax host ran no policy period", "Give a --duration-ms longer than --period-ms");
        }
        var results = new List<IdleTaxVmResult>();
        var formula = FormulaAllocation(policy.IdleCost, [Shares, Shares], [demands[0].ActiveFraction, demands[1].ActiveFraction], minPages, maxPages, setup.AvailablePages);
        for (int i = 0; i < 2; i++)
        {
            var vm = vmHost.Vms[i];
            var balloon = vm.Vm is { } v ? VirtioBalloon.Of(v) : null;
            var programs = vm.ResultLines.Where(l => !l.StartsWith("RESULT init ", StringComparison.Ordinal)).ToList();
            var cycles = programs.Select(l => System.Text.RegularExpressions.Regex.Match(l, @" total_cycles=(\d+)")).Where(m => m.Success)
                .Select(m => double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).ToList();
            results.Add(new IdleTaxVmResult(vm.Name, demands[i].ActiveFraction, samplers[i].LastSample, targets[i], formula[i], held[i], peak[i],
                balloon?.Target ?? 0, balloon?.Actual ?? 0, balloon?.PagesInflated ?? 0, balloon?.PagesDeflated ?? 0, samplers[i].TouchedTotal, samplers[i].Periods,
                programs.Count, cycles.Count > 0 ? cycles.Average() : 0, vm.Outcome ?? "not run"));
            if (!vm.EndedAsPlanned && vm.GuestStatus != 0)
            {
                throw new Errors.WorkloadFailedException($"VM '{vm.Name}' did not run to the end of the bench: {vm.Outcome}",
                    $"Check its workload alone: nestor run --technique hw --balloon -m {setup.MemoryBytes >> 20}M --cmdline '...'");
            }
        }
        return new IdleTaxRun(policy.TaxRate, results, timeline, wall.Elapsed);
    }

    /// <summary>The formula's allocation for VMs with equal min and max: each P = c · S / (f + k(1 − f)), held within
    /// [min, max], with c chosen (by bisection) so that the P sum to <paramref name="available"/>; at that point every
    /// VM not held at a bound has the same ρ = 1/c (§5.2's min-funding revocation at its fixed point).</summary>
    public static long[] FormulaAllocation(double idleCost, IReadOnlyList<long> shares, IReadOnlyList<double> fractions, long min, long max, long available)
    {
        int n = shares.Count;
        double[] weight = new double[n];
        for (int i = 0; i < n; i++)
        {
            weight[i] = shares[i] / (fractions[i] + idleCost * (1 - fractions[i]));
        }
        double Sum(double c) => Enumerable.Range(0, n).Sum(i => Math.Clamp(c * weight[i], min, max));
        if (Sum(0) >= available)
        {
            return [.. Enumerable.Repeat(min, n)];
        }
        double lo = 0, hi = 1;
        while (Sum(hi) < available && hi < 1e18)
        {
            hi *= 2;
        }
        for (int iteration = 0; iteration < 200; iteration++)
        {
            double mid = (lo + hi) / 2;
            (lo, hi) = Sum(mid) < available ? (mid, hi) : (lo, mid);
        }
        return [.. Enumerable.Range(0, n).Select(i => (long)Math.Round(Math.Clamp(lo * weight[i], min, max)))];
    }
}
