using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory.Reclamation;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.MemoryOvercommit;

/// <summary>ESX's active-memory sampling (Waldspurger, OSDI 2002, §5.3) on real guest code: an Iced-assembled ring-0
/// guest touches every page of a region once, then loops over a known part of it (or spins in one code page), on the
/// software machine under nested and under shadow paging; the sampler's estimate must be that fraction of the VM's
/// allocated pages. Tolerances are from the binomial sampling error: a period's t/n has variance f(1 − f)/n, the mean
/// of P periods f(1 − f)/(nP), an exponentially weighted average with gain g f(1 − f)/n · g/(2 − g); 4 σ is allowed,
/// plus the few pages (code, stack, page tables) whose activity the guest does not decide.</summary>
public sealed class ActiveMemorySamplerTests
{
    private const ulong Region = 0x100_0000; // 16 MiB, above the loaded code
    private const int RegionPages = 512;     // 2 MiB
    private const long Period = 100_000;
    private const int Samples = 100;

    public static TheoryData<MemoryVirtualization, int> Cases => new()
    {
        { MemoryVirtualization.Nested, RegionPages / 2 },
        { MemoryVirtualization.Nested, RegionPages / 4 },
        { MemoryVirtualization.Shadow, RegionPages / 2 },
        { MemoryVirtualization.Nested, 0 },
        { MemoryVirtualization.Shadow, 0 },
    };

    /// <summary>Writes every page of the region once; then <paramref name="activePages"/> &gt; 0: adds 1 to each of
    /// the first <paramref name="activePages"/> pages, <paramref name="passes"/> times; 0: spins in place as long.</summary>
    private static byte[] Guest(int activePages, long passes) => GuestAssembler.Assemble(a =>
    {
        a.mov(rbx, Region);
        a.mov(rcx, RegionPages);
        var all = a.CreateLabel();
        a.Label(ref all);
        a.mov(__qword_ptr[rbx], rcx);
        a.add(rbx, 4096);
        a.dec(rcx);
        a.jnz(all);
        if (activePages > 0)
        {
            a.mov(r12, passes);
            var outer = a.CreateLabel();
            var inner = a.CreateLabel();
            a.Label(ref outer);
            a.mov(rbx, Region);
            a.mov(rcx, activePages);
            a.Label(ref inner);
            a.add(__qword_ptr[rbx], 1);
            a.add(rbx, 4096);
            a.dec(rcx);
            a.jnz(inner);
            a.dec(r12);
            a.jnz(outer);
        }
        else
        {
            a.mov(rcx, passes * 2 * RegionPages); // about as long as the active loop
            var spin = a.CreateLabel();
            a.Label(ref spin);
            a.dec(rcx);
            a.jnz(spin);
        }
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, 0);
        a.@out(dx, eax);
    });

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_guest_touching_a_known_fraction_of_its_memory_is_estimated_near_that_fraction(MemoryVirtualization memory, int activePages)
    {
        const int Periods = 20;
        long passes = activePages > 0 ? Periods * Period / (4L * activePages) : Periods * Period / (4L * RegionPages);
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("active", Guest(activePages, passes)),
            MemoryBytes = 32UL << 20,
            SerialOutput = Stream.Null,
            Timeout = TimeSpan.FromMinutes(5),
        });
        var sampler = new ActiveMemorySampler(Period, Samples, seed: 7);
        var quantum = new ActiveMemorySamplerQuantum(vm, sampler, sliceInstructions: 10_000, recordPeriods: 64);
        using var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = memory }) { Quantum = quantum };

        var outcome = vm.Run(engine).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        long allocated = vm.Host.PhysicalMapOf(vm)!.TouchedPages; // the run's P2M, kept until the next run
        var samples = quantum.Samples.ToArray();
        Assert.True(samples.Length >= Periods - 4, $"only {samples.Length} periods completed");
        // The pages the guest does not decide about (its code, stack and page tables), assumed active.
        long others = allocated - RegionPages;
        Assert.InRange(others, 1, 64);
        double low = (double)activePages / allocated, high = (double)(activePages + others) / allocated, f = (low + high) / 2;
        double variance = Math.Max(f * (1 - f), 1.0 / Samples) / Samples; // a floor of one page in n for f near 0
        double mean = samples.Average();
        double meanTolerance = 4 * Math.Sqrt(variance / samples.Length) + (high - low) / 2;
        Assert.True(Math.Abs(mean - f) <= meanTolerance, $"mean sample {mean:0.000} of {samples.Length} periods, f = {f:0.000} ± {meanTolerance:0.000}");
        double Ewma(double g) => 4 * Math.Sqrt(variance * g / (2 - g)) + (high - low) / 2;
        Assert.True(Math.Abs(sampler.Slow - f) <= Ewma(sampler.SlowGain), $"slow average {sampler.Slow:0.000}, f = {f:0.000} ± {Ewma(sampler.SlowGain):0.000}");
        Assert.True(Math.Abs(sampler.Fast - f) <= Ewma(sampler.FastGain), $"fast average {sampler.Fast:0.000}, f = {f:0.000} ± {Ewma(sampler.FastGain):0.000}");
        Assert.Equal(Math.Max(sampler.Slow, Math.Max(sampler.Fast, sampler.FastWithCurrent)), sampler.ActiveFraction);
        Assert.True(sampler.ActiveFraction <= f + Ewma(sampler.FastGain), $"estimate {sampler.ActiveFraction:0.000}");
        Assert.Equal(Samples, sampler.LastSampleSize);
        if (activePages == 0)
        {
            Assert.True(sampler.ActiveFraction < 0.1, $"an idle guest estimated at {sampler.ActiveFraction:0.000}");
        }
    }

    [Fact]
    public void A_sampled_page_counts_as_touched_only_after_an_access_the_vmm_sees_and_sampling_allocates_nothing()
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        using var vm = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("x", [0xF4]), MemoryBytes = 16UL << 20, SerialOutput = Stream.Null }, host);
        var map = host.NewPhysicalMap(vm);
        for (ulong page = 0; page < 256; page++)
        {
            map.Touch(new GuestPhysical(0x40_0000 + page * 0x1000));
        }
        var frame = 0x40_0000UL >> 12;
        Assert.True(map.StartSample(frame));
        Assert.False(map.StartSample(frame)); // tracked already
        Assert.False(map.StartSample(0x80_0000UL >> 12)); // no host frame: not part of the allocation
        Assert.False(map.SampleWasTouched(frame));
        map.Touch(new GuestPhysical(frame << 12)); // the fault the guest's next access causes
        Assert.True(map.SampleWasTouched(frame));
        Assert.True(map.EndSample(frame));
        Assert.False(map.EndSample(frame));

        // All 256 allocated pages touched before every period's end: f = 1; none: f = 0.
        var sampler = new ActiveMemorySampler(1000, 32, seed: 3);
        Assert.Equal(1.0, sampler.ActiveFraction); // nothing measured yet: untaxed
        sampler.Advance(map, 0);
        sampler.Advance(map, 1000);
        Assert.Equal(0.0, sampler.LastSample);
        Assert.Equal(32, sampler.LastSampleSize);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (long period = 2; period < 50; period++)
        {
            for (ulong page = 0; page < 256; page++)
            {
                map.Touch(0x40_0000 + page * 0x1000, write: false);
            }
            sampler.Advance(map, period * 1000 - 500); // mid-period: the current touches raise the third average
            sampler.Advance(map, period * 1000);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
        Assert.Equal(1.0, sampler.LastSample);
        Assert.True(sampler.Fast > 0.99 && sampler.Slow > 0.99, $"fast {sampler.Fast}, slow {sampler.Slow}");
        for (long period = 50; period < 54; period++)
        {
            sampler.Advance(map, period * 1000);
        }
        // Four idle periods: the fast average follows at once, the slow one keeps most of the past; f is the larger.
        Assert.True(sampler.Fast < 0.1, $"fast {sampler.Fast}");
        Assert.True(sampler.Slow > 0.5, $"slow {sampler.Slow}");
        Assert.Equal(sampler.Slow, sampler.ActiveFraction);
        // Mid-period touches show at once in the fast-with-current average, before the period ends.
        for (ulong page = 0; page < 256; page++)
        {
            map.Touch(0x40_0000 + page * 0x1000, write: false);
        }
        sampler.Advance(map, 53_500);
        Assert.True(sampler.FastWithCurrent > sampler.Fast + 0.4, $"fast {sampler.Fast}, with current {sampler.FastWithCurrent}");
    }

    [Fact]
    public void Bad_sampler_parameters_are_refused_naming_them()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new ActiveMemorySampler(0));
        Assert.Contains("at least one page", Assert.Throws<ArgumentOutOfRangeException>(() => new ActiveMemorySampler(100, 0)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new ActiveMemorySampler(100, 10, slowGain: 0.6, fastGain: 0.5));
    }
}
