using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Migration;

/// <summary>Where a migration is.</summary>
public enum MigrationPhase
{
    /// <summary>Connecting, and the destination checking the header.</summary>
    Setup,
    /// <summary>Sending RAM while the VM runs: round 0 all of it, then the pages dirtied since (Clark et al. §3.3).</summary>
    PreCopy,
    /// <summary>The VM is stopped; its last dirty pages and its state are on their way.</summary>
    StopAndCopy,
    /// <summary>Post-copy: the destination runs the VM, and the pages still here are pushed and demanded. Until the
    /// last arrives, the VM exists in two halves: either side failing loses it.</summary>
    PostCopy,
    /// <summary>The destination runs the VM; the source's has ended.</summary>
    Completed,
    /// <summary>Given up: the source VM runs on as before; <see cref="MigrationStatus.Message"/> says why.</summary>
    Failed,
}

/// <summary>One pre-copy round (or the stop-and-copy, the last): what it sent and how long it took.</summary>
/// <param name="Number">0 for the first, full, round.</param>
/// <param name="Pages">Pages sent.</param>
/// <param name="FilledPages">Of them, pages sent as one repeated byte (zero pages most).</param>
/// <param name="Bytes">Bytes on the wire, framing included.</param>
/// <param name="Milliseconds">Wall time the round took to send.</param>
/// <param name="ThrottlePercent">The vCPU's throttle during the round.</param>
public sealed record MigrationRound(int Number, long Pages, long FilledPages, long Bytes, double Milliseconds, int ThrottlePercent);

/// <summary>A migration's state at one moment: a value.</summary>
public sealed record MigrationStatus(string Vm, string Destination, MigrationPhase Phase, string? Message, IReadOnlyList<MigrationRound> Rounds,
    double TotalMilliseconds, double? DowntimeMilliseconds, double? ExpectedDowntimeMilliseconds, long PagesSent, long BytesSent,
    int ThrottlePercent, long InstructionsAtStop, string DirtyTracking, long PagesLogged, long FinalPagesFound)
{
    /// <summary>Pre-copy, post-copy or hybrid.</summary>
    public MigrationMode Mode { get; init; }

    /// <summary>Balloon first: pages in the VM's balloon when the migration began sending, and the wall time the
    /// inflation took (0 without <see cref="MigrationSettings.BalloonFirst"/>).</summary>
    public long BalloonPages { get; init; }

    /// <inheritdoc cref="BalloonPages"/>
    public double BalloonMilliseconds { get; init; }

    /// <summary>The post-copy phase (post-copy and hybrid), once the destination resumed the VM.</summary>
    public PostCopyStatus? PostCopy { get; init; }
}

/// <summary>The source side of a live pre-copy migration of one VM of a <see cref="VirtualMachineHost"/> (Clark et al.,
/// "Live Migration of Virtual Machines", NSDI'05, §3): round 0 sends every page while the VM runs; each further round
/// sends the pages that changed since they were last sent, until what is left could be sent within the downtime
/// limit at the bandwidth measured (or the rounds run out); then the VM is stopped, its last dirty pages, vCPU,
/// devices and VMM state are sent, and the source VM ends only once the destination has said it resumed it. If
/// anything fails before that answer — the connection is cut, the destination refuses or dies — the source VM runs on
/// from where it stopped, restored from its own state into a fresh engine, as <c>--snapshot-on-signal</c> does.
/// <para>Dirty pages are found between the host's scheduling rounds, while every vCPU is stopped
/// (<see cref="VirtualMachineHost.BetweenRounds"/>): each page is compared with the copy sent last
/// (<see cref="RamImage"/>), which sees every write, the CPU's and the devices' DMA, under every technique, native
/// included, at the price of a read of RAM a round.</para>
/// <para>Auto-converge (QEMU's): when the pages dirtied in a round are more than half the bytes the round sent, twice
/// in a row, the vCPU is throttled by 20 %, then 10 % more each time, up to 99 %: between the host's rounds the
/// migration sleeps for that share of the wall time the round ran (QEMU's <c>cpu_throttle</c> sleeps the vCPU for
/// pct/(1-pct) of each 10 ms slice), which lowers the guest's dirty rate in wall time, the time the link runs in.</para></summary>
public sealed class MigrationSource
{
    private const int PageSize = 4096;
    private readonly VirtualMachineHost host;
    private readonly HostedVm vm;
    private readonly MigrationSettings settings;
    private readonly Lock gate = new();
    private readonly List<MigrationRound> rounds = [];
    private readonly Stopwatch total = new();
    private readonly ManualResetEventSlim harvested = new(false);
    private readonly ManualResetEventSlim stopped = new(false);
    private readonly ManualResetEventSlim verdict = new(false);
    private readonly ManualResetEventSlim finished = new(false);
    private readonly ManualResetEventSlim outcomeRead = new(false);
    private RamImage image = null!;
    private bool[] pending = [];
    private volatile bool harvestWanted;
    private volatile bool stopping;
    private volatile bool vmEnded;
    private bool migrated;
    private MigrationPhase phase = MigrationPhase.Setup;
    private string? message;
    private double? downtime, expectedDowntime;
    private long pagesSent, bytesSent, instructionsAtStop;
    private volatile int throttle;
    private long pagesLogged, finalPagesFound;
    private readonly bool useDirtyLog;
    private long lastRoundEnd;
    private volatile bool resumedThere; // post-copy: the destination runs the VM; the source's may not run on
    private PostCopySource? postCopy;
    private PostCopyStatus? postCopyStatus;
    private long pagesAtSwitch;
    private readonly Stopwatch postCopyClock = new();
    private volatile bool statisticsWanted; // balloon first: the dispatcher asks the driver for its statistics
    private long balloonPages;
    private double balloonMilliseconds;

    private MigrationSource(VirtualMachineHost host, HostedVm vm, MigrationSettings settings)
    {
        this.host = host;
        this.vm = vm;
        this.settings = settings;
        // The write-protection dirty log needs a P2M (a technique with a VMM) of 4 KiB nested entries: a 2 MiB entry
        // covers frames the log cannot protect one by one.
        useDirtyLog = vm.Spec.Sim.Technique != Techniques.Technique.Native && !vm.Spec.Sim.LargeNestedPages;
    }

    /// <summary>Starts migrating VM <paramref name="name"/> of <paramref name="host"/>; returns at once (the status says
    /// how it goes: <see cref="Status"/>).</summary>
    /// <exception cref="BadInputException">No such VM, bad settings.</exception>
    /// <exception cref="InvalidOperationException">The VM does not run, or migrates already.</exception>
    public static MigrationSource Start(VirtualMachineHost host, string name, MigrationSettings settings)
    {
        settings.Validate();
        var vm = host.Vms.FirstOrDefault(v => v.Name == name)
            ?? throw new BadInputException($"there is no VM named '{name}' on this host", $"VMs: {string.Join(", ", host.Vms.Select(v => v.Name))}");
        lock (MigrationsGate)
        {
            if (vm.Migration is { } running && !running.finished.IsSet)
            {
                throw new InvalidOperationException($"VM '{name}' is migrating already, to {running.settings.Destination}");
            }
            if (vm.State != HostedVmState.Running || vm.Vm is null || vm.Engine is null || vm.Vcpu.State == Scheduling.VcpuRunState.Done)
            {
                throw new InvalidOperationException($"VM '{name}' is {vm.State.ToString().ToLowerInvariant()}: only a running VM can be migrated");
            }
            if (settings.Mode != MigrationMode.PreCopy && (vm.Spec.Sim.Technique == Techniques.Technique.Native || vm.Spec.Sim.LargeNestedPages))
            {
                throw new BadInputException($"VM '{name}' runs {(vm.Spec.Sim.LargeNestedPages ? "with 2 MiB nested pages" : "native")}, and post-copy needs the VMM's P2M to catch the guest's first touch of each page not yet arrived, 4 KiB at a time",
                    "Migrate it with --mode precopy, or run it under a technique with 4 KiB pages (e.g. technique=hw)");
            }
            if (Paging.GuestPhysicalMap.AwaitsPages(vm.Vm.Memory))
            {
                throw new InvalidOperationException($"VM '{name}' is still receiving pages of its own post-copy migration here: migrate it once they have all arrived");
            }
            if (vm.Vm.Host.PhysicalMapOf(vm.Vm) is { HasSwap: true })
            {
                throw new InvalidOperationException($"VM '{name}' has pages in the host's swap, which the migration does not read: run it without --host-swap to migrate it");
            }
            var source = new MigrationSource(host, vm, settings);
            source.image = new RamImage(vm.Vm.Memory);
            source.pending = new bool[source.image.Pages];
            vm.Migration = source;
            new Thread(source.Migrate) { Name = $"migrate {name}", IsBackground = true }.Start();
            return source;
        }
    }

    private static readonly Lock MigrationsGate = new();

    /// <summary>The migration's state now.</summary>
    public MigrationStatus Status
    {
        get
        {
            lock (gate)
            {
                if (phase is MigrationPhase.Completed)
                {
                    outcomeRead.Set();
                }
                var live = postCopy;
                var postCopyNow = postCopyStatus ?? (live is null ? null : new PostCopyStatus(pagesAtSwitch, live.Pushed, live.Demanded, live.Prepaged, live.Requests, 0, 0, 0,
                    postCopyClock.Elapsed.TotalMilliseconds, settings.PrepageWindow));
                return new MigrationStatus(vm.Name, settings.Destination, phase, message, [.. rounds], total.Elapsed.TotalMilliseconds, downtime,
                    expectedDowntime, pagesSent, bytesSent, throttle, instructionsAtStop, useDirtyLog ? "write-protection" : "comparison", pagesLogged, finalPagesFound)
                {
                    Mode = settings.Mode,
                    PostCopy = postCopyNow,
                    BalloonPages = balloonPages,
                    BalloonMilliseconds = balloonMilliseconds,
                };
            }
        }
    }

    /// <summary>Waits until the migration completed or failed.</summary>
    public bool Wait(TimeSpan timeout) => finished.Wait(timeout);

    // The migration's thread: setup, pre-copy rounds, stop-and-copy, the destination's answer.
    private void Migrate()
    {
        total.Start();
        TcpClient? client = null;
        RateLimitedWriter? link = null;
        host.BetweenRounds += BetweenRounds;
        try
        {
            var endpoint = MigrationSettings.ParseAddress(settings.Destination, "the destination");
            if (settings.BalloonFirst)
            {
                InflateBalloon();
            }
            client = MigrationStream.Connect(endpoint, settings.Destination, "nestor host run --incoming " + settings.Destination);
            var network = client.GetStream();
            link = new RateLimitedWriter(network, settings.MaxBandwidth);
            var vmObject = vm.Vm!;
            var sim = vm.Engine!;
            string configuration = SnapshotFile.ConfigurationText(vmObject, sim.Options);
            var header = new MigrationHeader(MigrationStream.FormatVersion, Configuration.EngineKind.Sim, sim.Options.Technique, sim.Options.EffectiveMemory,
                sim.Options.LargeNestedPages, vmObject.Config.MemoryBytes, MigrationStream.FingerprintOf(configuration), configuration,
                MigrationVmDescription.Encode(vm.Spec), vm.Spec.Kernel);
            network.Write(MigrationStream.EncodeHeader(header, settings.StreamVersion));
            MigrationStream.Expect(network, MigrationStream.Accept, "destination");
            SetPhase(MigrationPhase.PreCopy);

            int round = 0;
            int notShrinking = 0;
            long lastSentBytes = 0;
            // Post-copy sends no page before the switch-over; hybrid sends one full round while the VM runs.
            while (settings.Mode != MigrationMode.PostCopy)
            {
                if (settings.Mode == MigrationMode.Hybrid && round == 1)
                {
                    break;
                }
                long dirty = Harvest();
                double bandwidth = MeasuredBandwidth();
                double expected = (dirty * (PageSize + 9.0) + 65536) / bandwidth * 1000;
                lock (gate)
                {
                    expectedDowntime = expected;
                }
                if (round > 0 && (expected <= settings.DowntimeLimit.TotalMilliseconds || round >= settings.MaxRounds))
                {
                    break;
                }
                if (round > 0)
                {
                    throttle = settings.NextThrottle(throttle, dirty * PageSize, lastSentBytes, ref notShrinking);
                }
                lastSentBytes = SendPending(link, round);
                round++;
            }

            // Stop-and-copy: the vCPU leaves its run at its next stop check; its thread hands the VM to us.
            SetPhase(MigrationPhase.StopAndCopy);
            var downtimeClock = Stopwatch.StartNew();
            stopping = true;
            vm.Control.Stop(VmOutcomeKind.Breakpoint);
            while (!stopped.Wait(100))
            {
                if (vm.Vcpu.State == Scheduling.VcpuRunState.Done)
                {
                    break;
                }
            }
            if (vmEnded || !stopped.IsSet)
            {
                throw new MigrationStreamException($"the VM ended before the stop-and-copy ({vm.Result?.Outcome.Message ?? "its run is over"})", MigrationRefusal.Refused, null);
            }
            instructionsAtStop = vmObject.Vcpus[0].State.InstructionsRetired;
            // The last dirty set, with the vCPU stopped: every page compared, so that what the dirty log cannot see (the
            // VMM's own writes into guest RAM: A/D bits set by software walks, emulated page-table writes) goes too.
            long found = CompareAll();
            lock (gate)
            {
                finalPagesFound = found;
            }
            if (settings.Mode == MigrationMode.PreCopy)
            {
                SendPending(link, round, last: true);
            }
            else
            {
                SendPostCopyMap(link);
            }
            var state = new SnapshotWriter();
            foreach (var part in vmObject.SnapshotParts.Where(p => p != vmObject.Memory).Append(vm.Engine!))
            {
                state.WriteSection(part);
            }
            link.WriteSection(MigrationStream.State, state.ToArray());
            var done = new byte[12];
            BinaryPrimitives.WriteInt32LittleEndian(done, round + 1);
            BinaryPrimitives.WriteInt64LittleEndian(done.AsSpan(4), pagesSent);
            link.WriteSection(MigrationStream.Done, done);
            network.Flush();
            MigrationStream.Expect(network, MigrationStream.Resumed, "destination");
            downtimeClock.Stop();
            lock (gate)
            {
                downtime = downtimeClock.Elapsed.TotalMilliseconds;
                bytesSent = link.Written;
            }
            if (settings.Mode != MigrationMode.PreCopy)
            {
                RunPostCopy(link, network, round + 1);
            }
            lock (gate)
            {
                bytesSent = link.Written;
                migrated = true;
                phase = MigrationPhase.Completed;
                message = settings.Mode == MigrationMode.PreCopy
                    ? $"migrated to {settings.Destination} in {rounds.Count} rounds, {pagesSent:N0} pages; downtime {downtime:0.0} ms"
                    : $"migrated to {settings.Destination} by {MigrationSettings.NameOf(settings.Mode)}: downtime {downtime:0.0} ms; {postCopyStatus!.PagesAtSwitch:N0} pages after the switch-over " +
                      $"({postCopyStatus.Pushed:N0} pushed, {postCopyStatus.Demanded:N0} demanded, {postCopyStatus.Prepaged:N0} pre-paged; {postCopyStatus.DemandFaults:N0} faults waited {postCopyStatus.FaultWaitMilliseconds:0.0} ms)";
            }
        }
        catch (Exception e) when (e is NestorException or IOException or SocketException or ObjectDisposedException or InvalidOperationException)
        {
            string why = e is IOException or SocketException ? $"the connection to {settings.Destination} broke: {e.Message}" : e.Message;
            try
            {
                link?.WriteSection(MigrationStream.Abort, Encoding.UTF8.GetBytes(why));
            }
            catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
            {
                // The connection is gone already: the destination sees the stream cut.
            }
            lock (gate)
            {
                bytesSent = link?.Written ?? 0;
                phase = MigrationPhase.Failed;
                message = vmEnded ? $"the migration was given up: {why}"
                    : resumedThere ? $"post-copy failed after the VM resumed on {settings.Destination}, with {postCopy?.Remaining ?? pagesAtSwitch:N0} pages not yet sent: {why}; " +
                                     "neither side has the whole VM, so it is lost (post-copy's risk: docs/migration.md)"
                    : $"the migration failed, and the VM runs on here: {why}";
            }
        }
        finally
        {
            host.BetweenRounds -= BetweenRounds;
            throttle = 0;
            total.Stop();
            verdict.Set(); // a stopped vCPU learns the verdict: migrated, or run on
            client?.Dispose();
            finished.Set();
        }
    }

    private void SetPhase(MigrationPhase value)
    {
        lock (gate)
        {
            phase = value;
        }
    }

    private double MeasuredBandwidth()
    {
        lock (gate)
        {
            return settings.MeasuredBandwidth(rounds);
        }
    }

    // Asks the dispatcher for the pages changed since the last harvest and waits for them; returns how many are now
    // waiting to be sent.
    private long Harvest()
    {
        harvested.Reset();
        harvestWanted = true;
        var waited = Stopwatch.StartNew();
        while (!harvested.Wait(50))
        {
            if (vm.Vcpu.State == Scheduling.VcpuRunState.Done || vmEnded)
            {
                harvestWanted = false;
                throw new MigrationStreamException($"the VM ended during the migration ({vm.Result?.Outcome.Message ?? vm.Outcome ?? "its run is over"})", MigrationRefusal.Refused, null);
            }
            if (waited.Elapsed > TimeSpan.FromSeconds(60))
            {
                harvestWanted = false;
                throw new MigrationStreamException("the host ran no scheduling round for 60 s (every VM idle or paused), so no dirty pages could be taken", MigrationRefusal.Refused,
                    "Resume the VM, or migrate it while it runs");
            }
        }
        return pending.LongCount(p => p);
    }

    // Balloon first: the guest's free memory from its balloon driver's statistics, then the balloon inflated to it
    // less BalloonKeepBytes through the host's balloon API (applied between rounds by its memory manager), waiting
    // until the driver has given those pages (or stopped making progress for a second).
    private void InflateBalloon()
    {
        var balloon = vm.Balloon ?? throw new MigrationStreamException($"VM '{vm.Name}' has no balloon to inflate before the migration", MigrationRefusal.Refused,
            "Give it one (balloon in its --vm, on a host with the balloon on), or migrate without balloon-first");
        var clock = Stopwatch.StartNew();
        long reports = balloon.StatisticsReports;
        statisticsWanted = true;
        while (balloon.StatisticsReports == reports)
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(20) || vm.Vcpu.State == Scheduling.VcpuRunState.Done)
            {
                statisticsWanted = false;
                throw new MigrationStreamException($"VM '{vm.Name}''s balloon driver reported no statistics within 20 s", MigrationRefusal.Refused,
                    "Boot a guest whose balloon driver answers the statistics queue (NestorOS's does), or migrate without balloon-first");
            }
            Thread.Sleep(10);
        }
        // Read after the report that carried it: the driver writes none until asked again.
        ulong free = balloon.Statistics.GetValueOrDefault(Devices.Virtio.Balloon.BalloonStatistic.FreeMemory);
        ulong inflated = (ulong)balloon.Actual * PageSize;
        ulong target = Math.Min(vm.Spec.Memory.MaxBytes, inflated + (free > MigrationSettings.BalloonKeepBytes ? free - MigrationSettings.BalloonKeepBytes : 0)) & ~(ulong)(PageSize - 1);
        host.SetBalloon(vm.Name, target);
        // The memory manager applies the target between rounds and the driver inflates in batches as its vCPU runs: wait
        // until it has the target, or it moved and then stood still for 2 s (the guest gives no more), at most 30 s.
        uint first = balloon.Actual, last = first;
        var still = Stopwatch.StartNew();
        while (balloon.Actual < target / PageSize && (last == first || still.Elapsed < TimeSpan.FromSeconds(2)) && clock.Elapsed < TimeSpan.FromSeconds(30) &&
               vm.Vcpu.State != Scheduling.VcpuRunState.Done)
        {
            Thread.Sleep(10);
            if (balloon.Actual != last)
            {
                last = balloon.Actual;
                still.Restart();
            }
        }
        lock (gate)
        {
            balloonPages = balloon.Actual;
            balloonMilliseconds = clock.Elapsed.TotalMilliseconds;
        }
    }

    // Called on the host's dispatch thread between rounds, every vCPU stopped.
    private void BetweenRounds(Host unused, long roundCycles)
    {
        if (statisticsWanted && vm.Balloon is { } balloon && balloon.RequestStatistics())
        {
            statisticsWanted = false; // the driver answers when its vCPU next runs
        }
        if (throttle > 0)
        {
            long now = Stopwatch.GetTimestamp();
            double ran = lastRoundEnd == 0 ? 0 : Stopwatch.GetElapsedTime(lastRoundEnd, now).TotalMilliseconds;
            double sleep = Math.Min(200, ran * throttle / (100.0 - throttle));
            if (sleep >= 1)
            {
                Thread.Sleep(TimeSpan.FromMilliseconds(sleep));
            }
        }
        if (harvestWanted && !stopping)
        {
            var map = useDirtyLog ? vm.Vm!.Host.PhysicalMapOf(vm.Vm) : null;
            if (map is null || !map.DirtyLogging)
            {
                // Round 0, or no P2M to log with (native, 2 MiB nested pages): every page is compared.
                map?.StartDirtyLog();
                CompareAll();
            }
            else
            {
                long logged = 0;
                map.TakeDirtyLog(frame =>
                {
                    long index = image.IndexOf(frame);
                    if (index >= 0)
                    {
                        logged++;
                        Compare(index);
                    }
                });
                lock (gate)
                {
                    pagesLogged += logged;
                }
            }
            harvestWanted = false;
            harvested.Set();
        }
        lastRoundEnd = Stopwatch.GetTimestamp();
    }

    // Every page that differs from the copy sent last: copied into the image, marked to be sent.
    private long CompareAll()
    {
        long found = 0;
        for (long i = 0; i < image.Pages; i++)
        {
            found += Compare(i) ? 1 : 0;
        }
        return found;
    }

    // One page: if it differs from the copy sent last (a page written back to what it held needs no resend), the copy
    // takes its bytes and it is marked to be sent.
    private bool Compare(long index)
    {
        var live = RamImage.Live(vm.Vm!.Memory, image, index);
        var copy = image.Page(index);
        if (live.SequenceEqual(copy))
        {
            return false;
        }
        live.CopyTo(copy);
        bool fresh = !pending[index];
        pending[index] = true;
        return fresh;
    }

    // Sends the pending pages from the image, then the round's end; returns the bytes it took.
    private long SendPending(RateLimitedWriter link, int round, bool last = false)
    {
        var clock = Stopwatch.StartNew();
        var sentRound = PageRoundWriter.Send(link, round, pending, image.Pages, (long i, out ulong frame) => { frame = image.GuestFrame(i); return image.Page(i); });
        long sent = sentRound.Bytes;
        lock (gate)
        {
            rounds.Add(new MigrationRound(round, sentRound.Pages, sentRound.FilledPages, sent, clock.Elapsed.TotalMilliseconds, last ? 100 : throttle));
            pagesSent += sentRound.Pages;
            bytesSent = link.Written;
        }
        return sent;
    }

    // Post-copy's switch-over: instead of the last pages, which pages are still to come (a bit per page of RAM; an
    // all-zero page is not among them, the destination's RAM starting all zeros).
    private void SendPostCopyMap(RateLimitedWriter link)
    {
        var payload = new byte[8 + (image.Pages + 7) / 8];
        long count = 0;
        for (long i = 0; i < image.Pages; i++)
        {
            if (pending[i])
            {
                payload[8 + (i >> 3)] |= (byte)(1 << (int)(i & 7));
                count++;
            }
        }
        BinaryPrimitives.WriteInt64LittleEndian(payload, count);
        link.WriteSection(MigrationStream.PostCopy, payload);
        lock (gate)
        {
            pagesAtSwitch = count;
        }
    }

    // After the destination resumed the VM: every page still here, pushed and demanded (PostCopySource).
    private void RunPostCopy(RateLimitedWriter link, Stream network, int round)
    {
        resumedThere = true;
        postCopyClock.Start();
        var server = new PostCopySource(image, pending, link, network, settings.PrepageWindow, round);
        lock (gate)
        {
            postCopy = server;
            phase = MigrationPhase.PostCopy;
        }
        long before = link.Written;
        var (faults, received, waitMicros, longestMicros) = server.Run();
        postCopyClock.Stop();
        lock (gate)
        {
            postCopyStatus = new PostCopyStatus(pagesAtSwitch, server.Pushed, server.Demanded, server.Prepaged, server.Requests, faults,
                waitMicros / 1000.0, longestMicros / 1000.0, postCopyClock.Elapsed.TotalMilliseconds, settings.PrepageWindow);
            rounds.Add(new MigrationRound(round, received, 0, link.Written - before, postCopyClock.Elapsed.TotalMilliseconds, 100));
            pagesSent += received;
        }
    }

    /// <summary>Called on the VM's vCPU thread each time its run returns (<see cref="VirtualMachineHost"/>): when the
    /// run ended for the stop-and-copy, waits for the verdict; true if the VM must run on here (the migration failed:
    /// it is restored from its own state into a fresh engine), false if its run is over (migrated, or it ended on its
    /// own).</summary>
    internal bool TakeOver(RunResult run)
    {
        if (!stopping || run.Outcome.Kind != VmOutcomeKind.Breakpoint || vm.Control.StopReason != VmOutcomeKind.Breakpoint)
        {
            vmEnded = true;
            stopped.Set();
            return false;
        }
        stopped.Set();
        verdict.Wait();
        if (!migrated && resumedThere)
        {
            // Post-copy failed after the switch-over: the destination ran the VM on, so this copy is stale and must not.
            vm.StopCause = $"lost in post-copy to {settings.Destination}: {message}";
            return false;
        }
        if (migrated)
        {
            vm.StopCause = $"migrated to {settings.Destination}";
            vm.EndedAsPlanned = true;
            // The host ends when its last VM has, and its control API with it: give the client that asked for the
            // migration a moment to read that it completed (it polls every 100 ms).
            outcomeRead.Wait(TimeSpan.FromSeconds(5));
            return false;
        }
        // Run on from where it stopped, exactly: a fresh engine restored from the VM's own state (the software engine
        // rebuilds its VMM for each run, as after --snapshot-on-signal).
        var old = vm.Engine!;
        byte[] body = VmSnapshot.Capture(vm.Vm!, old);
        var fresh = new SimEngine(vm.Spec.Sim) { Quantum = old.Quantum };
        VmSnapshot.Restore(vm.Vm!, body, fresh);
        vm.Engine = fresh;
        old.Dispose();
        stopping = false;
        vm.Control.Resume(VmOutcomeKind.Breakpoint);
        return true;
    }
}
