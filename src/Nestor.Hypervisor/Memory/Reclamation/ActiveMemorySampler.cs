using Nestor.Hypervisor.Paging;

namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>ESX's statistical estimate of the fraction of a VM's memory in active use (Waldspurger, OSDI 2002, §5.3),
/// the <c>f</c> of the idle memory tax (<see cref="IdleMemoryTax"/>). At the start of each sampling period (in the VM's
/// own virtual time, its clock) <see cref="SamplesPerPeriod"/> of the VM's allocated guest pages are chosen uniformly at
/// random and their cached mappings invalidated (<see cref="GuestPhysicalMap"/>'s sampling: the nested entry with its
/// shootdown, or the shadow entries and the TLB); the guest's next access to one is intercepted and counts it as
/// touched. At the period's end the sample is f = t / n. ESX's default is 100 pages per 30 s, at most 100 minor faults
/// a period.
/// <para>The samples are smoothed as §5.3 describes: a slow exponentially weighted moving average (stable: it keeps a
/// VM whose working set just shrank from losing memory at once), a fast one (it adapts to a change within a few
/// periods), and a version of the fast one that also takes in the pages touched so far in the current period, so
/// that an increase is seen before the period ends. The estimate is the largest of the three: the VM is taxed for
/// idleness only when every one agrees it is idle. The gains are parameters (the paper does not give ESX's): 1/8 and
/// 1/2 by default. Before its first period ends a VM counts as fully active (1): nothing has been measured to tax.</para>
/// <para>Pages are drawn among those with a host frame (the VM's allocation P, of which f is the active part), without
/// replacement, by rejection over the guest frames (at most 64 draws a sample; a VM allocating under 1/64 of its RAM
/// may get fewer samples, counted in <see cref="LastSampleSize"/>). The sample's frames live in an array made once:
/// starting, advancing and ending a period allocate nothing. Call <see cref="Advance"/> only while the VM's vCPU is
/// stopped (between slices or rounds): it changes the P2M.</para></summary>
public sealed class ActiveMemorySampler
{
    /// <summary>ESX's default sample size (§5.3).</summary>
    public const int DefaultSamplesPerPeriod = 100;

    /// <summary>The default gain of the slow moving average.</summary>
    public const double DefaultSlowGain = 1.0 / 8;

    /// <summary>The default gain of the fast moving average.</summary>
    public const double DefaultFastGain = 1.0 / 2;

    private readonly ulong[] sample;
    private readonly Random random;
    private GuestPhysicalMap? map;
    private int sampled;
    private long periodStart;
    private bool measured;

    /// <param name="periodCycles">The sampling period in cycles of the VM's clock (its virtual time).</param>
    /// <param name="samplesPerPeriod">n, the pages sampled per period.</param>
    /// <param name="seed">Seed of the random choice (a run is reproducible).</param>
    /// <param name="slowGain">Weight of a new sample in the slow average, in (0, 1].</param>
    /// <param name="fastGain">Weight of a new sample in the fast average, in (0, 1], at least the slow gain.</param>
    /// <exception cref="ArgumentOutOfRangeException">A parameter out of its range; the message says which.</exception>
    public ActiveMemorySampler(long periodCycles, int samplesPerPeriod = DefaultSamplesPerPeriod, int seed = 15,
        double slowGain = DefaultSlowGain, double fastGain = DefaultFastGain)
    {
        if (periodCycles < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(periodCycles), periodCycles, "a sampling period must last at least one cycle");
        }
        if (samplesPerPeriod < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(samplesPerPeriod), samplesPerPeriod, "a sampling period must sample at least one page (ESX: 100)");
        }
        if (!(slowGain > 0 && slowGain <= 1) || !(fastGain >= slowGain && fastGain <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(fastGain), $"the gains must satisfy 0 < slow ({slowGain}) ≤ fast ({fastGain}) ≤ 1");
        }
        PeriodCycles = periodCycles;
        SamplesPerPeriod = samplesPerPeriod;
        SlowGain = slowGain;
        FastGain = fastGain;
        sample = new ulong[samplesPerPeriod];
        random = new Random(seed);
    }

    /// <summary>The sampling period, in cycles of the VM's clock.</summary>
    public long PeriodCycles { get; }

    /// <summary>n: pages sampled per period.</summary>
    public int SamplesPerPeriod { get; }

    /// <summary>The slow average's gain.</summary>
    public double SlowGain { get; }

    /// <summary>The fast average's gain.</summary>
    public double FastGain { get; }

    /// <summary>Sampling periods completed.</summary>
    public long Periods { get; private set; }

    /// <summary>The last completed period's sample t / n (0 before the first).</summary>
    public double LastSample { get; private set; }

    /// <summary>n of the last started period (below <see cref="SamplesPerPeriod"/> only for a VM with few pages).</summary>
    public int LastSampleSize => sampled;

    /// <summary>t of the last completed period: sampled pages the guest touched, each one a minor fault.</summary>
    public int LastTouched { get; private set; }

    /// <summary>Sampled pages touched over all periods: the faults sampling caused.</summary>
    public long TouchedTotal { get; private set; }

    /// <summary>The slow moving average.</summary>
    public double Slow { get; private set; }

    /// <summary>The fast moving average.</summary>
    public double Fast { get; private set; }

    /// <summary>The fast average with the current period's touches so far taken in (as of the last
    /// <see cref="Advance"/>).</summary>
    public double FastWithCurrent { get; private set; }

    /// <summary>The estimate of f: the largest of the three averages (§5.3); 1 before the first period ends.</summary>
    public double ActiveFraction => measured ? Math.Max(Slow, Math.Max(Fast, FastWithCurrent)) : 1;

    /// <summary>Moves the sampler to the VM's clock <paramref name="clock"/> (cycles) on its P2M
    /// <paramref name="physicalMap"/>: the first call (and the first on a new map: each run of a VM gets a fresh P2M)
    /// starts a period; a call at or past the period's end completes it (the averages take its sample) and starts the
    /// next; any other call takes the touches so far into <see cref="FastWithCurrent"/>.</summary>
    public void Advance(GuestPhysicalMap physicalMap, long clock)
    {
        if (!ReferenceEquals(physicalMap, map))
        {
            map = physicalMap; // the old map's sample went with it
            StartPeriod(clock);
            return;
        }
        if (map.IsDisposed)
        {
            return;
        }
        if (clock - periodStart >= PeriodCycles)
        {
            EndPeriod();
            StartPeriod(clock);
            return;
        }
        if (measured && sampled > 0)
        {
            int touched = 0;
            for (int i = 0; i < sampled; i++)
            {
                touched += map.SampleWasTouched(sample[i]) ? 1 : 0;
            }
            FastWithCurrent = Math.Max(FastWithCurrent, FastGain * touched / sampled + (1 - FastGain) * Fast);
        }
    }

    private void StartPeriod(long clock)
    {
        periodStart = clock;
        sampled = 0;
        ulong frames = map!.FrameCount;
        for (int attempt = 0; attempt < 64 * SamplesPerPeriod && sampled < SamplesPerPeriod; attempt++)
        {
            ulong frame = (ulong)random.NextInt64((long)frames);
            if (map.StartSample(frame))
            {
                sample[sampled++] = frame;
            }
        }
        map.EndSampleStarts();
    }

    private void EndPeriod()
    {
        int touched = 0;
        for (int i = 0; i < sampled; i++)
        {
            touched += map!.EndSample(sample[i]) ? 1 : 0;
        }
        if (sampled == 0)
        {
            return; // nothing allocated to sample: no information, the averages stay
        }
        double f = (double)touched / sampled;
        LastSample = f;
        LastTouched = touched;
        TouchedTotal += touched;
        if (!measured)
        {
            (Slow, Fast, measured) = (f, f, true);
        }
        else
        {
            Slow += SlowGain * (f - Slow);
            Fast += FastGain * (f - Fast);
        }
        FastWithCurrent = Fast;
        Periods++;
    }
}

/// <summary>Runs an <see cref="ActiveMemorySampler"/> on one VM between its slices (<see cref="Engines.SimEngine.Quantum"/>),
/// at the VM's own clock, giving each slice <see cref="SliceInstructions"/>. Optionally records every completed
/// period's sample (<see cref="Samples"/>, preallocated to <paramref name="recordPeriods"/>).</summary>
public sealed class ActiveMemorySamplerQuantum(Vm vm, ActiveMemorySampler sampler, long sliceInstructions = 20_000, int recordPeriods = 0)
    : Scheduling.IVcpuQuantum
{
    private readonly double[] samples = new double[Math.Max(0, recordPeriods)];

    /// <summary>Instructions per slice: how often the sampler looks at the clock.</summary>
    public long SliceInstructions { get; } = sliceInstructions > 0 ? sliceInstructions
        : throw new ArgumentOutOfRangeException(nameof(sliceInstructions), "a slice must retire at least one instruction");

    /// <summary>The sampler.</summary>
    public ActiveMemorySampler Sampler => sampler;

    /// <summary>The recorded samples t / n, in period order (the first <see cref="RecordedSamples"/> of them).</summary>
    public ReadOnlySpan<double> Samples => samples.AsSpan(0, RecordedSamples);

    /// <summary>How many samples were recorded.</summary>
    public int RecordedSamples { get; private set; }

    public long NextBudget(long clock, long instructionsRetired)
    {
        if (vm.Host.PhysicalMapOf(vm) is { } map)
        {
            long before = sampler.Periods;
            sampler.Advance(map, clock);
            if (sampler.Periods > before && RecordedSamples < samples.Length)
            {
                samples[RecordedSamples++] = sampler.LastSample;
            }
        }
        return SliceInstructions;
    }
}
