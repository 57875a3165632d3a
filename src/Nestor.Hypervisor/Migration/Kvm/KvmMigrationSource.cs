using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using System.Numerics;
using System.Text;
using Nestor.Host;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Persistence;
using Nestor.Kvm;

namespace Nestor.Hypervisor.Migration.Kvm;

/// <summary>The source side of a live pre-copy migration of a VM on the KVM engine (Clark et al., "Live Migration of
/// Virtual Machines", NSDI'05, §3), in the stream format and with the round, bandwidth, downtime and auto-converge
/// rules of <see cref="MigrationSource"/> (docs/migration.md, "On KVM"). Dirty pages come from KVM itself: when the
/// migration starts it switches <c>KVM_MEM_LOG_DIRTY_PAGES</c> on for every slot of the running VM, sends every
/// resident page (round 0), then each round reads the slots' bitmaps with <c>KVM_GET_DIRTY_LOG</c> (which clears them
/// and write-protects those pages again, api.rst §4.8) and sends the pages they name, read after the log was taken so
/// that a write after the read is in the next log. When what is left could go within the downtime limit, the vCPU is
/// stopped (a kick out of <c>KVM_RUN</c>), the last bitmaps are read before the KVM VM closes, and the last pages, the
/// vCPU (registers, then the KVMS section: XSAVE, MSRs, LAPIC, events, kvmclock), COM1 and the debug-exit port go.
/// The source ends only once the destination answers that its vCPU is loaded on KVM (<c>RSUM</c>); any failure before
/// that (cut connection, killed or refusing destination) leaves the VM running on here from where it stopped, in a
/// new KVM VM loaded with its own state, as after any run of the engine.
/// <para>Auto-converge: when a round's dirty bytes stay above half of what the round sent, twice in a row, the vCPU is
/// throttled as QEMU's <c>cpu_throttle</c> does it (kicked out of KVM_RUN every 10 ms and kept out for pct/(1-pct) of
/// the time it ran), from 20 % by 10 % up to 99 %.</para></summary>
public sealed class KvmMigrationSource : IKvmRunObserver
{
    private const int PageSize = 4096;
    private const int ThrottleSliceMilliseconds = 10;

    private readonly Vm vm;
    private readonly KvmEngine engine;
    private readonly RunControl control;
    private readonly MigrationSettings settings;
    private readonly TimeSpan startAfter;
    private readonly Lock gate = new();
    private readonly Lock kvmGate = new();
    private readonly List<MigrationRound> rounds = [];
    private readonly Stopwatch total = new();
    private readonly ManualResetEventSlim started = new(false);
    private readonly ManualResetEventSlim stopped = new(false);
    private readonly ManualResetEventSlim verdict = new(false);
    private readonly ManualResetEventSlim finished = new(false);
    private readonly (ulong FirstFrame, long FirstIndex, long Count, nint Host)[] layout;
    private readonly bool[] pending;
    private readonly long pageCount;
    private KvmVm? kvm;
    private KvmVcpu? vcpu;
    private bool logging;
    private volatile bool stopping, vmEnded, migrated, over;
    private volatile int throttle;
    private long lastEntry;
    private MigrationPhase phase = MigrationPhase.Setup;
    private string? message;
    private double? downtime, expectedDowntime;
    private long pagesSent, bytesSent, pagesLogged, finalPagesFound;
    private Thread? thread;
    private Timer? throttleTimer;

    /// <summary>Prepares the migration of <paramref name="vm"/>, which <see cref="Run"/> then runs on
    /// <paramref name="engine"/>, starting to migrate <paramref name="startAfter"/> after the VM first runs.</summary>
    /// <exception cref="BadInputException">The settings are bad, or the VM has what the KVM migration does not move.</exception>
    public KvmMigrationSource(Vm vm, KvmEngine engine, RunControl control, MigrationSettings settings, TimeSpan startAfter)
    {
        settings.Validate();
        if (KvmMigrationDescription.Unsupported(vm.Config) is { } why)
        {
            throw new BadInputException($"this VM cannot migrate on KVM: {why}", "Migrate a VM with RAM, COM1 and the debug-exit port only, or run it on sim (nestor host run) to migrate it");
        }
        if (startAfter < TimeSpan.Zero)
        {
            throw new BadInputException($"a migration cannot start {startAfter.TotalMilliseconds} ms after the VM starts", "Give 0 ms or more");
        }
        this.vm = vm;
        this.engine = engine;
        this.control = control;
        this.settings = settings;
        this.startAfter = startAfter;
        var list = new List<(ulong, long, long, nint)>();
        long index = 0;
        foreach (var (region, backing) in vm.Memory.Regions)
        {
            long count = (long)(region.Length / PageSize);
            list.Add((region.Start.Value / PageSize, index, count, backing.Address));
            index += count;
        }
        layout = [.. list];
        pageCount = index;
        pending = new bool[index];
        engine.Observer = this;
    }

    /// <summary>The migration's state now (dirty tracking "kvm-dirty-log").</summary>
    public MigrationStatus Status
    {
        get
        {
            lock (gate)
            {
                return new MigrationStatus("kvm", settings.Destination, phase, message, [.. rounds], total.Elapsed.TotalMilliseconds, downtime,
                    expectedDowntime, pagesSent, bytesSent, throttle, 0, "kvm-dirty-log", pagesLogged, finalPagesFound);
            }
        }
    }

    /// <summary>True once the destination resumed the VM (and so the run here ended for good).</summary>
    public bool Migrated => migrated;

    /// <summary>Runs the VM, migrating it meanwhile: returns the run that ended it here, which is the stop for the
    /// stop-and-copy when <see cref="Migrated"/>, else the VM's own end (the migration then failed or had not
    /// finished; <see cref="Status"/> says which). The migration's thread has finished when this returns.</summary>
    public RunResult Run()
    {
        thread = new Thread(Migrate) { Name = "kvm migration", IsBackground = true };
        thread.Start();
        try
        {
            while (true)
            {
                var run = vm.Run(engine, control);
                if (!TakeOver(run))
                {
                    return run;
                }
            }
        }
        finally
        {
            over = true;
            started.Set();
            stopped.Set();
            finished.Wait();
            engine.Observer = null;
        }
    }

    void IKvmRunObserver.Started(KvmVm kvm, KvmVcpu vcpu)
    {
        lock (kvmGate)
        {
            this.kvm = kvm;
            this.vcpu = vcpu;
        }
        started.Set();
    }

    void IKvmRunObserver.Interrupted()
    {
        int percent = throttle;
        long now = Stopwatch.GetTimestamp();
        if (percent > 0 && !stopping)
        {
            // Out of KVM_RUN for pct/(100-pct) of the time it ran since it last went back in: a kick that arrived
            // while it slept ends its next entry at once, with nothing run and so no sleep.
            double ran = lastEntry == 0 ? ThrottleSliceMilliseconds : Stopwatch.GetElapsedTime(lastEntry, now).TotalMilliseconds;
            double sleep = Math.Min(200, ran * percent / (100 - percent));
            if (sleep >= 0.5)
            {
                Thread.Sleep(TimeSpan.FromMilliseconds(sleep));
            }
            now = Stopwatch.GetTimestamp();
        }
        lastEntry = now;
    }

    void IKvmRunObserver.Stopped(KvmVm closing)
    {
        lock (kvmGate)
        {
            bool ours = logging && stopping && control.StopReason == VmOutcomeKind.Breakpoint;
            if (ours)
            {
                // The vCPU is out of KVM_RUN for good: the last bitmaps, read before the VM's descriptor closes.
                long found = HarvestLocked(closing);
                lock (gate)
                {
                    finalPagesFound = found;
                }
            }
            kvm = null;
            vcpu = null;
            logging = false;
            if (ours)
            {
                // The vCPU's state is in the VM already: the stop-and-copy need not wait for the KVM VM to be torn
                // down. Should the guest have ended in the same instant (its debug exit beating the kick), the state
                // sent holds that end, and the destination's VM ends as this one did.
                stopped.Set();
            }
        }
    }

    // On the vCPU's thread after each run: true when the run was the stop-and-copy's and the migration failed, so the VM
    // must run on here.
    private bool TakeOver(RunResult run)
    {
        if (!stopping || run.Outcome.Kind != VmOutcomeKind.Breakpoint || control.StopReason != VmOutcomeKind.Breakpoint)
        {
            vmEnded = true;
            stopped.Set();
            return false;
        }
        stopped.Set();
        verdict.Wait();
        if (migrated)
        {
            return false;
        }
        stopping = false;
        control.Resume(VmOutcomeKind.Breakpoint);
        return true;
    }

    private void Migrate()
    {
        TcpClient? client = null;
        RateLimitedWriter? link = null;
        try
        {
            started.Wait();
            var begin = Stopwatch.StartNew();
            while (!vmEnded && !over && begin.Elapsed < startAfter)
            {
                Thread.Sleep(TimeSpan.FromMilliseconds(Math.Min(20, Math.Max(1, (startAfter - begin.Elapsed).TotalMilliseconds))));
            }
            if (vmEnded || over)
            {
                throw new MigrationStreamException("the VM ended before the migration started", MigrationRefusal.Refused, null);
            }
            total.Start();
            var endpoint = MigrationSettings.ParseAddress(settings.Destination, "the destination");
            client = MigrationStream.Connect(endpoint, settings.Destination, "nestor run --engine kvm --incoming " + settings.Destination);
            var network = client.GetStream();
            link = new RateLimitedWriter(network, settings.MaxBandwidth);
            network.Write(MigrationStream.EncodeHeader(KvmMigrationDescription.HeaderOf(vm), settings.StreamVersion));
            MigrationStream.Expect(network, MigrationStream.Accept, "destination");
            SetPhase(MigrationPhase.PreCopy);

            // Round 0: logging on first, then every page the host has (a page never touched reads as zeros, and the
            // destination's RAM starts zeroed), so that a write after its copy is in the first bitmap.
            lock (kvmGate)
            {
                var live = kvm ?? throw new MigrationStreamException("the VM ended before the migration started", MigrationRefusal.Refused, null);
                foreach (var slot in live.MemorySlots.Keys)
                {
                    live.SetDirtyLogging(slot, true);
                }
                logging = true;
            }
            foreach (var (_, first, count, host) in layout)
            {
                for (long i = 0; i < count; i++)
                {
                    pending[first + i] = MemoryCalls.IsResident(host + (nint)(i * PageSize));
                }
            }
            int round = 0;
            int notShrinking = 0;
            long lastSentBytes = 0;
            while (true)
            {
                long dirty;
                if (round > 0)
                {
                    lock (kvmGate)
                    {
                        if (kvm is not { } live)
                        {
                            throw new MigrationStreamException("the VM ended during the migration", MigrationRefusal.Refused, null);
                        }
                        HarvestLocked(live);
                    }
                }
                dirty = pending.LongCount(p => p);
                double expected = (dirty * (PageSize + 9.0) + 65536) / MeasuredBandwidth() * 1000;
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
                    if (throttle > 0)
                    {
                        throttleTimer ??= new Timer(_ => KickForThrottle(), null, ThrottleSliceMilliseconds, ThrottleSliceMilliseconds);
                    }
                }
                lastSentBytes = SendPending(link, round);
                round++;
            }

            // Stop-and-copy: the vCPU leaves KVM_RUN at the kick; the engine saves its state back into the VM and
            // Stopped reads the last bitmaps; TakeOver then hands the VM to this thread.
            SetPhase(MigrationPhase.StopAndCopy);
            var downtimeClock = Stopwatch.StartNew();
            stopping = true;
            control.Stop(VmOutcomeKind.Breakpoint);
            stopped.Wait();
            if (vmEnded)
            {
                throw new MigrationStreamException("the VM ended before the stop-and-copy", MigrationRefusal.Refused, null);
            }
            SendPending(link, round, last: true);
            var state = new SnapshotWriter();
            foreach (var part in vm.SnapshotParts.Where(p => p != vm.Memory).Append(engine.ExtendedStateOf(vm)))
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
                phase = MigrationPhase.Completed;
                message = $"migrated to {settings.Destination} in {rounds.Count} rounds, {pagesSent:N0} pages; downtime {downtime:0.0} ms";
            }
            migrated = true;
        }
        catch (Exception e) when (e is NestorException or IOException or SocketException or ObjectDisposedException or InvalidOperationException or KvmException)
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
            StopLogging();
            lock (gate)
            {
                bytesSent = link?.Written ?? 0;
                phase = MigrationPhase.Failed;
                message = vmEnded || over ? $"the migration was given up: {why}" : $"the migration failed, and the VM runs on here: {why}";
            }
        }
        finally
        {
            throttleTimer?.Dispose();
            throttle = 0;
            total.Stop();
            verdict.Set(); // a stopped vCPU learns the verdict: migrated, or run on
            client?.Dispose();
            finished.Set();
        }
    }

    private void KickForThrottle()
    {
        lock (kvmGate)
        {
            if (throttle > 0 && !stopping)
            {
                vcpu?.Kick();
            }
        }
    }

    // A failed migration leaves the VM as it was: its slots no longer log (each write would fault for nothing).
    private void StopLogging()
    {
        lock (kvmGate)
        {
            if (kvm is { } live && logging)
            {
                foreach (var slot in live.MemorySlots.Keys)
                {
                    live.SetDirtyLogging(slot, false);
                }
            }
            logging = false;
        }
    }

    // Reads every slot's bitmap (clearing it) and marks its pages to be sent; returns how many it named.
    private long HarvestLocked(KvmVm live)
    {
        long logged = 0;
        for (int s = 0; s < layout.Length; s++)
        {
            var bits = live.GetDirtyLog((uint)s);
            long first = layout[s].FirstIndex, count = layout[s].Count;
            for (int word = 0; word < bits.Length; word++)
            {
                ulong w = bits[word];
                while (w != 0)
                {
                    int bit = BitOperations.TrailingZeroCount(w);
                    w &= w - 1;
                    long page = (long)word * 64 + bit;
                    if (page < count)
                    {
                        logged++;
                        pending[first + page] = true;
                    }
                }
            }
        }
        lock (gate)
        {
            pagesLogged += logged;
        }
        return logged;
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

    private Span<byte> Live(long index, out ulong frame)
    {
        foreach (var (firstFrame, first, count, host) in layout)
        {
            if (index >= first && index < first + count)
            {
                frame = firstFrame + (ulong)(index - first);
                unsafe
                {
                    return new Span<byte>((byte*)(host + (nint)((index - first) * PageSize)), PageSize);
                }
            }
        }
        throw new ArgumentOutOfRangeException(nameof(index));
    }

    // Sends the pending pages, read from the VM's RAM now, then the round's end; returns the bytes it took.
    private long SendPending(RateLimitedWriter link, int round, bool last = false)
    {
        var clock = Stopwatch.StartNew();
        var sentRound = PageRoundWriter.Send(link, round, pending, pageCount, (long i, out ulong frame) => Live(i, out frame));
        long sent = sentRound.Bytes;
        lock (gate)
        {
            rounds.Add(new MigrationRound(round, sentRound.Pages, sentRound.FilledPages, sent, clock.Elapsed.TotalMilliseconds, last ? 100 : throttle));
            pagesSent += sentRound.Pages;
            bytesSent = link.Written;
        }
        return sent;
    }
}
