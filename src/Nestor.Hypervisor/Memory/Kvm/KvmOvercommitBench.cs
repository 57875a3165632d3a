using System.Diagnostics;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Memory.Kvm;

/// <summary>The parameters of <see cref="KvmOvercommitBench"/>.</summary>
/// <param name="MemoryBytes">Each VM's RAM.</param>
/// <param name="Identical">Fraction of the fill identical across VMs.</param>
/// <param name="Zero">Fraction written with zeros.</param>
/// <param name="Balloon">Fraction of the fill the balloon run inflates.</param>
/// <param name="PagesToScan">KSM's <c>pages_to_scan</c> while the bench runs.</param>
/// <param name="SleepMilliseconds">KSM's <c>sleep_millisecs</c> while the bench runs.</param>
/// <param name="SettleTimeout">Longest wait for the scanner to settle, per row.</param>
public sealed record KvmOvercommitSettings(ulong MemoryBytes = 4UL << 20, double Identical = 0.5, double Zero = 0.25, double Balloon = 0.5,
    int PagesToScan = 4000, int SleepMilliseconds = 10, TimeSpan? SettleTimeout = null, string DevicePath = Nestor.Kvm.KvmSystem.DefaultDevicePath)
{
    /// <summary>The fill plan of every VM.</summary>
    public PatternPlan Plan => PatternPlan.For(MemoryBytes, Identical, Zero, Balloon);
}

/// <summary>One row of the sharing table: <see cref="Vms"/> pattern VMs, measured from /proc once filled, and again
/// once KSM settled. Resident pages are what the VMs' RAM has mapped (RSS: a merged page is still mapped in each VM),
/// proportional pages what they hold (PSS: a KSM page shared by k mappings counts 1/k each), so the memory saved is
/// the difference. <see cref="FillMillisecondsPerPage"/> is the longest fill of the row's VMs over the pages each wrote
/// (about 10,000 guest instructions a page, and the host faulting the page in);
/// <see cref="VerifyMillisecondsPerPage"/> the same for the pass that re-reads every word (the same instructions, a
/// fault only for a page KSM remapped).</summary>
public sealed record KvmSharingRow(int Vms, long GuestPages, long ResidentBefore, double ProportionalBefore, long ResidentAfter,
    double ProportionalAfter, long KsmPages, KsmCounters Counters, long ModelledSavedPages, bool Settled, TimeSpan SettleTime, MappingResidency Smaps,
    double FillMillisecondsPerPage, double VerifyMillisecondsPerPage)
{
    /// <summary>Pages saved: resident less proportional, once KSM settled.</summary>
    public double SavedPages => ResidentAfter - ProportionalAfter;

    /// <summary>Bytes saved per VM.</summary>
    public double SavedBytesPerVm => SavedPages * ResidentMemory.PageBytes / Vms;

    /// <summary>Saved as a share of the resident memory.</summary>
    public double SavedPercent => ResidentAfter == 0 ? 0 : 100.0 * SavedPages / ResidentAfter;
}

/// <summary>The balloon run: one VM's RAM resident once filled, with the top of its fill inflated (released with
/// <c>madvise(MADV_DONTNEED)</c>), and deflated and read back (zero pages).</summary>
public sealed record KvmBalloonRow(long GuestPages, long BalloonPages, long ResidentFilled, long ResidentInflated, long ResidentDeflated,
    long BytesReturned, long ProcessRssFilled, long ProcessRssInflated, bool ReadBackZero);

/// <summary>What the bench measured, and what the host could not show.</summary>
public sealed record KvmOvercommitReport(KvmOvercommitSettings Settings, PatternPlan Plan, KsmProbe Ksm, IReadOnlyList<KvmSharingRow> Sharing,
    KvmBalloonRow Balloon, IReadOnlyList<string> Limitations);

/// <summary><c>nestor bench overcommit kvm</c> (issue 15, "the same on KVM"): 1…k ring-0 pattern VMs on KVM in one
/// process, their RAM offered to the host's KSM; the memory they hold before and after the scanner settles, from
/// <c>/proc/self/pagemap</c> and <c>/proc/kpagecount</c> (<see cref="ResidentMemory"/>) and KSM's own counters; then one
/// VM ballooned down by half of its fill, its RSS before and after. The shape of Waldspurger's Fig. 4 (OSDI 2002,
/// §4.3), on the host kernel's sharing instead of Nestor's scanner.</summary>
public static class KvmOvercommitBench
{
    /// <summary>Runs the sharing rows for <paramref name="counts"/> VMs and the balloon run.</summary>
    /// <exception cref="HostUnsupportedException">No KVM, or a pattern VM did not finish as it should.</exception>
    public static KvmOvercommitReport Run(IReadOnlyList<int> counts, KvmOvercommitSettings settings, TextWriter? progress = null)
    {
        var plan = settings.Plan;
        var probe = SamePageMerging.Probe();
        List<string> limitations = [];
        List<KvmSharingRow> rows = [];
        if (probe.Writable)
        {
            using var ksm = SamePageMerging.Start(settings.PagesToScan, settings.SleepMilliseconds);
            foreach (int n in counts)
            {
                progress?.WriteLine($"  {n} VM(s): filling, then waiting for KSM to settle");
                var row = SharingRow(n, plan, settings, ksm);
                if (!row.Settled)
                {
                    limitations.Add($"with {n} VMs KSM had not settled after {row.SettleTime.TotalSeconds:0} s (full scans {row.Counters.FullScans}); the row shows where it was");
                }
                rows.Add(row);
            }
        }
        else
        {
            limitations.Add($"KSM could not be switched on: {probe.Reason}; no sharing rows");
        }
        progress?.WriteLine("  balloon: one VM filled, inflated, deflated");
        var balloon = BalloonRow(plan, settings);
        if (rows.Count > 0 && rows.All(r => r.KsmPages == 0))
        {
            limitations.Add("KSM ran but merged none of the VMs' pages");
        }
        return new KvmOvercommitReport(settings, plan, probe, rows, balloon, limitations);
    }

    /// <summary>The pages the plan lets KSM save for <paramref name="vms"/> VMs: each identical page held once instead
    /// of once per VM, all zero pages of all VMs held once (KSM's use_zero_pages off: one KSM page), random pages not at
    /// all. The boot data and code below <see cref="PatternGuest.FillStart"/> are left out of the model (they may merge
    /// too).</summary>
    public static long ModelledSavedPages(PatternPlan plan, int vms) =>
        (vms - 1) * plan.IdenticalPages + (plan.ZeroPages > 0 ? vms * plan.ZeroPages - 1 : 0);

    private static KvmSharingRow SharingRow(int n, PatternPlan plan, KvmOvercommitSettings settings, SamePageMerging ksm)
    {
        var noBalloon = plan with { BalloonPages = 0 };
        var vms = new List<PatternVm>();
        try
        {
            for (int i = 0; i < n; i++)
            {
                vms.Add(new PatternVm(noBalloon, (ulong)i + 1, settings, merge: true));
            }
            ksm.SetRunning(false); // "before" is before any merging
            vms.ForEach(v => v.Start());
            vms.ForEach(v => v.WaitFor(PatternGuest.Filled));
            var before = Measure(vms);
            ksm.SetRunning(true);
            var clock = Stopwatch.StartNew();
            var counters = ksm.WaitUntilSettled(settings.SettleTimeout ?? TimeSpan.FromMinutes(3), out bool settled);
            clock.Stop();
            var after = Measure(vms);
            var smaps = ResidentMemory.Mappings(vms.Select(v => v.Vm.Memory));
            vms.ForEach(v => v.Continue());
            vms.ForEach(v => v.WaitFor(PatternGuest.Verified));
            vms.ForEach(v => v.Continue());
            vms.ForEach(v => v.Finish());
            double verify = vms.Max(v => v.VerifyTime.TotalMilliseconds) / Math.Max(1, plan.FilledPages);
            return new KvmSharingRow(n, after.Pages, before.ResidentPages, before.ProportionalPages ?? before.ResidentPages, after.ResidentPages,
                after.ProportionalPages ?? after.ResidentPages, after.KsmPages ?? 0, counters, ModelledSavedPages(plan, n), settled, clock.Elapsed, smaps,
                vms.Max(v => v.FillTime.TotalMilliseconds) / Math.Max(1, plan.FilledPages), verify);
        }
        finally
        {
            vms.ForEach(v => v.Dispose());
        }
    }

    private static KvmBalloonRow BalloonRow(PatternPlan plan, KvmOvercommitSettings settings)
    {
        if (plan.BalloonPages == 0)
        {
            throw new BadInputException("the balloon run needs a balloon fraction above 0", "Give e.g. --balloon 0.5");
        }
        using var vm = new PatternVm(plan, 1, settings, merge: false);
        vm.Start();
        vm.WaitFor(PatternGuest.Filled);
        var filled = ResidentMemory.Of(vm.Vm.Memory);
        long rssFilled = ResidentMemory.ProcessResidentBytes();
        vm.Continue();
        vm.WaitFor(PatternGuest.Verified);
        vm.Continue();
        vm.WaitFor(PatternGuest.Inflated);
        var inflated = ResidentMemory.Of(vm.Vm.Memory);
        long rssInflated = ResidentMemory.ProcessResidentBytes();
        vm.Continue();
        vm.WaitFor(PatternGuest.Deflated);
        var deflated = ResidentMemory.Of(vm.Vm.Memory);
        vm.Continue();
        var outcome = vm.Finish();
        return new KvmBalloonRow(filled.Pages, vm.Balloon.PagesInflated, filled.ResidentPages, inflated.ResidentPages, deflated.ResidentPages,
            vm.Balloon.BytesReturnedToHost, rssFilled, rssInflated, outcome.GuestStatus == PatternGuest.Success);
    }

    private static RangeResidency Measure(List<PatternVm> vms)
    {
        var total = new RangeResidency(0, 0, 0, 0);
        foreach (var v in vms)
        {
            total += ResidentMemory.Of(v.Vm.Memory);
        }
        return total;
    }
}

/// <summary>A pattern guest on KVM, on its own thread, that stops at each phase until told to go on.</summary>
public sealed class PatternVm : IDisposable
{
    // Generous: on this host's loaded nested KVM the pattern guest takes tens of milliseconds a page, filling or only
    // reading (docs/overcommit.md, "On KVM"), so even a few MiB take a while.
    private static readonly TimeSpan PhaseTimeout = TimeSpan.FromMinutes(10);

    private readonly SemaphoreSlim reached = new(0);
    private readonly SemaphoreSlim proceed = new(0);
    private readonly RunControl control = new();
    private readonly KvmEngine engine;
    private readonly System.Diagnostics.Stopwatch clock = new();
    private TimeSpan continuedAt;
    private Thread? thread;
    private VmOutcome? outcome;
    private Exception? failure;
    private volatile bool abandoned;

    /// <summary>A VM of <paramref name="settings"/>'s memory running <see cref="PatternGuest"/> with
    /// <paramref name="plan"/> and <paramref name="seed"/>, its RAM offered to KSM when <paramref name="merge"/>.</summary>
    public PatternVm(PatternPlan plan, ulong seed, KvmOvercommitSettings settings, bool merge)
    {
        Vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Kvm,
            Kernel = PatternGuest.Build(plan, seed),
            MemoryBytes = settings.MemoryBytes,
            KvmDevicePath = settings.DevicePath,
            Timeout = TimeSpan.FromMinutes(60),
        });
        Balloon = BalloonPort.Attach(Vm);
        Balloon.PhaseReached = phase =>
        {
            if (phase == PatternGuest.Filled)
            {
                FillTime = clock.Elapsed;
            }
            else if (phase == PatternGuest.Verified)
            {
                VerifyTime = clock.Elapsed - continuedAt;
            }
            reached.Release();
            if (!abandoned)
            {
                proceed.Wait();
            }
        };
        engine = new KvmEngine(samePageMerging: merge);
    }

    /// <summary>The VM.</summary>
    public Vm Vm { get; }

    /// <summary>Its balloon port.</summary>
    public BalloonPort Balloon { get; }

    /// <summary>From the start of the run to the guest's report that it filled its memory.</summary>
    public TimeSpan FillTime { get; private set; }

    /// <summary>From the guest's going on after <see cref="PatternGuest.Filled"/> to its report that it verified.</summary>
    public TimeSpan VerifyTime { get; private set; }

    /// <summary>Starts the vCPU's thread.</summary>
    public void Start()
    {
        clock.Start();
        thread = new Thread(() =>
        {
            try
            {
                outcome = Vm.Run(engine, control).Outcome;
            }
            catch (Exception e)
            {
                failure = e;
            }
            finally
            {
                reached.Release(); // wakes a waiter of a phase never reached
            }
        })
        { IsBackground = true, Name = "pattern vCPU" };
        thread.Start();
    }

    /// <summary>Waits until the guest reports <paramref name="phase"/>.</summary>
    /// <exception cref="HostUnsupportedException">The guest ended (or failed) before reaching it, or took too long.</exception>
    public void WaitFor(uint phase)
    {
        if (!reached.Wait(PhaseTimeout))
        {
            throw new HostUnsupportedException($"the pattern guest did not reach phase {phase} within {PhaseTimeout.TotalSeconds:0} s",
                "Check that KVM runs ring-0 guests here: nestor info");
        }
        if (Balloon.Phase != phase || thread is { IsAlive: false })
        {
            throw Ended($"did not reach phase {phase} (last phase {Balloon.Phase?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "none"})");
        }
    }

    /// <summary>Lets the guest go on from the phase it waits at.</summary>
    public void Continue()
    {
        continuedAt = clock.Elapsed;
        proceed.Release();
    }

    /// <summary>Waits for the run to end; the guest must have ended with <see cref="PatternGuest.Success"/>.</summary>
    public VmOutcome Finish()
    {
        if (thread is null || !thread.Join(PhaseTimeout))
        {
            throw new HostUnsupportedException("the pattern guest did not finish", "Check that KVM runs ring-0 guests here: nestor info");
        }
        if (outcome is not { Kind: VmOutcomeKind.DebugExit, GuestStatus: PatternGuest.Success })
        {
            throw Ended("did not finish with success");
        }
        return outcome;
    }

    private HostUnsupportedException Ended(string what) => failure is not null
        ? new HostUnsupportedException($"the pattern guest {what}: {failure.Message}", "Check that KVM runs ring-0 guests here: nestor info", failure)
        : new HostUnsupportedException($"the pattern guest {what}: {outcome?.Message ?? "it is still running"}" +
            (outcome?.GuestStatus is { } s ? $" (status 0x{s:x}: 0x10 content changed, 0x11 balloon refused, 0x12 deflated page not zero)" : ""),
            "Check that KVM runs ring-0 guests here: nestor info");

    /// <summary>Lets a guest still waiting run to its end (or stops it), then frees the VM.</summary>
    public void Dispose()
    {
        abandoned = true;
        proceed.Release(8);
        if (thread is { IsAlive: true })
        {
            control.Stop(VmOutcomeKind.Interrupted);
            thread.Join(PhaseTimeout);
        }
        Vm.Dispose();
        reached.Dispose();
        proceed.Dispose();
    }
}
