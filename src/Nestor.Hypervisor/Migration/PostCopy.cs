using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Migration;

/// <summary>What a post-copy phase did (Hines and Gopalan, VEE'09, §3): the pages still at the source when the VM
/// resumed on the destination, how they went (pushed in the background, demanded by a fault, or pre-paged around a
/// demanded one), and what the guest waited for them (measured on the destination, sent back in <c>PACK</c>).</summary>
/// <param name="PagesAtSwitch">Pages still at the source when the destination resumed the VM (zero pages excluded:
/// they are never sent).</param>
/// <param name="Pushed">Pages the source pushed on its own (active push).</param>
/// <param name="Demanded">Pages the source sent because the destination faulted on them.</param>
/// <param name="Prepaged">Pages sent next to a demanded one (the pre-paging window).</param>
/// <param name="Requests">Demand requests the source received (a page requested while in flight counts here only).</param>
/// <param name="DemandFaults">Faults on the destination that waited for a page (CPU, DMA and VMM accesses).</param>
/// <param name="FaultWaitMilliseconds">Wall time the destination's faults waited, in all.</param>
/// <param name="LongestFaultWaitMilliseconds">The longest one.</param>
/// <param name="Milliseconds">Wall time from the resume on the destination to its last page's acknowledgement.</param>
/// <param name="Window">The pre-paging window, pages on each side.</param>
public sealed record PostCopyStatus(long PagesAtSwitch, long Pushed, long Demanded, long Prepaged, long Requests, long DemandFaults,
    double FaultWaitMilliseconds, double LongestFaultWaitMilliseconds, double Milliseconds, int Window);

/// <summary>The destination's side of post-copy: which pages are still at the source, the demand faults that wait for
/// one (<see cref="IRemotePages"/>, asked by the VM's P2M), and the thread that receives the pages the source pushes
/// or answers with, writing each into its home before marking it arrived. If the stream breaks or the source gives up
/// before every page arrived, the VM is lost (its memory exists only in two halves): every waiting fault, and every
/// later one, ends the run with <c>post-copy source lost: N pages never arrived</c>.</summary>
internal sealed class PostCopyDestination : IRemotePages
{
    private const int PageSize = 4096;
    private readonly GuestMemory memory;
    private readonly RamImage layout;
    private readonly Stream network;
    private readonly Lock writeGate;
    private readonly byte[] state; // by guest frame: 0 here, 1 awaited, 2 awaited and requested
    private readonly object arrivals = new(); // Monitor.Wait/PulseAll: faults wait for the receiver's pages
    private readonly byte[] request = new byte[8];
    private readonly byte[] scratch = new byte[PageSize];
    private long awaited;
    private long faults, received, waitTicks, longestTicks;
    private volatile string? lost;
    private readonly Stopwatch clock = Stopwatch.StartNew();
    private readonly ManualResetEventSlim over = new(false);

    /// <summary>Waits until every page arrived or the source was lost (false: neither within <paramref name="timeout"/>).</summary>
    public bool WaitOver(TimeSpan timeout) => over.Wait(timeout);

    /// <summary>Awaits the pages the source's <c>POST</c> bitmap <paramref name="bitmap"/> lists (by page index of
    /// <paramref name="layout"/>); their homes in <paramref name="memory"/> must hold zeros.</summary>
    public PostCopyDestination(GuestMemory memory, RamImage layout, Stream network, Lock writeGate, ReadOnlySpan<byte> bitmap, ulong frames)
    {
        this.memory = memory;
        this.layout = layout;
        this.network = network;
        this.writeGate = writeGate;
        state = new byte[frames];
        for (long i = 0; i < layout.Pages; i++)
        {
            if ((bitmap[(int)(i >> 3)] & (1 << (int)(i & 7))) != 0)
            {
                state[layout.GuestFrame(i)] = 1;
                awaited++;
            }
        }
        PagesAtSwitch = awaited;
    }

    /// <summary>Pages awaited when the VM resumed.</summary>
    public long PagesAtSwitch { get; }

    /// <summary>Called once every page arrived, with the counts (on the receiving thread).</summary>
    public Action<PostCopyDestination>? Completed { get; init; }

    /// <summary>Called once if the source is lost before every page arrived, with the outcome's message.</summary>
    public Action<string>? Lost { get; init; }

    /// <summary>Faults that waited for a page.</summary>
    public long DemandFaults => Interlocked.Read(ref faults);

    /// <summary>Pages received.</summary>
    public long PagesReceived => Interlocked.Read(ref received);

    /// <summary>Wall time the faults waited, in all, and the longest.</summary>
    public TimeSpan FaultWait => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref waitTicks));

    /// <inheritdoc cref="FaultWait"/>
    public TimeSpan LongestFaultWait => Stopwatch.GetElapsedTime(0, Interlocked.Read(ref longestTicks));

    /// <summary>Wall time since the VM resumed.</summary>
    public TimeSpan Elapsed => clock.Elapsed;

    public long Awaited => Interlocked.Read(ref awaited);

    public bool IsAwaited(ulong guestFrame) => guestFrame < (ulong)state.Length && Volatile.Read(ref state[guestFrame]) != 0;

    /// <summary>Starts receiving (after the destination said it resumed the VM).</summary>
    public void Start() => new Thread(Receive) { Name = "post-copy receiver", IsBackground = true }.Start();

    public void Fetch(ulong guestFrame)
    {
        long start = Stopwatch.GetTimestamp();
        bool ask;
        lock (arrivals)
        {
            if (state[guestFrame] == 0)
            {
                return;
            }
            if (lost is { } why)
            {
                throw new PostCopySourceLostException(why);
            }
            ask = state[guestFrame] == 1;
            state[guestFrame] = 2;
        }
        Interlocked.Increment(ref faults);
        if (ask)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(request, guestFrame);
            try
            {
                lock (writeGate)
                {
                    MigrationStream.WriteSection(network, MigrationStream.PageRequest, request);
                    network.Flush();
                }
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                SourceLost($"the connection broke: {e.Message}");
            }
        }
        lock (arrivals)
        {
            while (state[guestFrame] != 0 && lost is null)
            {
                Monitor.Wait(arrivals, TimeSpan.FromSeconds(1));
            }
            if (state[guestFrame] != 0)
            {
                throw new PostCopySourceLostException(lost!);
            }
        }
        long waited = Stopwatch.GetTimestamp() - start;
        Interlocked.Add(ref waitTicks, waited);
        long longest;
        while (waited > (longest = Interlocked.Read(ref longestTicks)) && Interlocked.CompareExchange(ref longestTicks, waited, longest) != longest)
        {
        }
    }

    // The receiving thread: pages into their homes, until the source's PEND; then PACK with the counts.
    private void Receive()
    {
        var arrived = new List<ulong>(MigrationStream.PagesPerSection);
        try
        {
            while (true)
            {
                var (tag, payload) = MigrationStream.ReadSection(network);
                switch (tag)
                {
                    case MigrationStream.Page:
                        arrived.Clear();
                        layout.Apply(payload, index =>
                        {
                            ulong frame = layout.GuestFrame(index);
                            if (Volatile.Read(ref state[frame]) == 0)
                            {
                                return scratch; // here already (sent twice): the guest may have written it since
                            }
                            arrived.Add(frame);
                            // Not the P2M's: an awaited page has no host frame, and nothing reads its home until it is marked.
                            return memory.Home(new GuestPhysical(frame * PageSize), PageSize);
                        });
                        lock (arrivals)
                        {
                            foreach (ulong frame in arrived)
                            {
                                Volatile.Write(ref state[frame], 0);
                            }
                            Interlocked.Add(ref awaited, -arrived.Count);
                            Interlocked.Add(ref received, arrived.Count);
                            Monitor.PulseAll(arrivals);
                        }
                        break;
                    case MigrationStream.PostCopyEnd:
                        if (Awaited != 0)
                        {
                            throw new MigrationStreamException($"the source ended post-copy with {Awaited:N0} pages not sent", MigrationRefusal.Invalid);
                        }
                        var ack = new byte[32];
                        BinaryPrimitives.WriteInt64LittleEndian(ack, DemandFaults);
                        BinaryPrimitives.WriteInt64LittleEndian(ack.AsSpan(8), PagesReceived);
                        BinaryPrimitives.WriteInt64LittleEndian(ack.AsSpan(16), (long)(FaultWait.TotalMilliseconds * 1000));
                        BinaryPrimitives.WriteInt64LittleEndian(ack.AsSpan(24), (long)(LongestFaultWait.TotalMilliseconds * 1000));
                        lock (writeGate)
                        {
                            MigrationStream.WriteSection(network, MigrationStream.PostCopyAck, ack);
                            network.Flush();
                        }
                        clock.Stop();
                        over.Set();
                        Completed?.Invoke(this);
                        return;
                    case MigrationStream.Abort:
                        SourceLost($"the source gave up: {Encoding.UTF8.GetString(payload)}");
                        return;
                    default:
                        throw new MigrationStreamException($"the source sent section '{tag}' during post-copy", MigrationRefusal.Invalid);
                }
            }
        }
        catch (Exception e) when (e is MigrationStreamException or IOException or SocketException or ObjectDisposedException)
        {
            SourceLost(e.Message);
        }
    }

    private void SourceLost(string why)
    {
        string message;
        lock (arrivals)
        {
            if (lost is not null)
            {
                return;
            }
            message = $"post-copy source lost: {Awaited:N0} pages never arrived ({why}); the VM cannot run on without them";
            lost = message;
            Monitor.PulseAll(arrivals);
        }
        over.Set();
        Lost?.Invoke(message);
    }
}

/// <summary>The source's side of post-copy, once the destination runs the VM: it sends every page still here from the
/// copy taken when the VM stopped (<see cref="RamImage"/>), pushing them in order in the background (active push) and
/// answering each demand request first with the faulting page, then with the pages around it that have not been sent,
/// nearest first, alternately after and before it (pre-paging: Hines and Gopalan's bubbling around the pivot, VEE'09
/// §3.2); the push then continues from past the window, where the guest's locality makes the next fault likely.</summary>
internal sealed class PostCopySource(RamImage image, bool[] pending, RateLimitedWriter link, Stream network, int window, int round)
{
    private const int PushBatch = 16; // pages a pushed section carries: a demand waits behind one such section at most
    private readonly ConcurrentQueue<long> demands = new();
    private readonly ManualResetEventSlim acknowledged = new(false);
    private volatile Exception? failure;
    private byte[]? ack;

    /// <summary>Pages pushed on the source's own.</summary>
    public long Pushed { get; private set; }

    /// <summary>Pages sent because the destination faulted on them.</summary>
    public long Demanded { get; private set; }

    /// <summary>Pages sent next to a demanded one.</summary>
    public long Prepaged { get; private set; }

    /// <summary>Demand requests received.</summary>
    public long Requests { get; private set; }

    /// <summary>Pages not sent yet.</summary>
    public long Remaining { get; private set; }

    /// <summary>Sends every pending page, then <c>PEND</c>, and waits for <c>PACK</c>; returns the destination's
    /// counts: demand faults, pages received, total and longest wait in microseconds.</summary>
    /// <exception cref="MigrationStreamException">The destination is gone or sent something else.</exception>
    public (long Faults, long Received, long WaitMicros, long LongestMicros) Run()
    {
        Remaining = pending.LongCount(p => p);
        var reader = new Thread(Read) { Name = "post-copy requests", IsBackground = true };
        reader.Start();
        long cursor = 0;
        var batch = new List<long>(2 * window + 1);
        while (Remaining > 0)
        {
            if (failure is { } e)
            {
                throw e as MigrationStreamException ?? new MigrationStreamException($"the connection broke: {e.Message}", MigrationRefusal.Cut);
            }
            if (demands.TryDequeue(out long fault))
            {
                Requests++;
                if (fault < 0 || !pending[fault])
                {
                    continue; // in flight already
                }
                batch.Clear();
                batch.Add(fault);
                Send(batch);
                Demanded++;
                batch.Clear();
                for (int d = 1; d <= window; d++)
                {
                    if (fault + d < image.Pages && pending[fault + d])
                    {
                        batch.Add(fault + d);
                    }
                    if (fault - d >= 0 && pending[fault - d])
                    {
                        batch.Add(fault - d);
                    }
                }
                if (batch.Count > 0)
                {
                    Send(batch);
                    Prepaged += batch.Count;
                }
                cursor = (fault + window + 1) % image.Pages;
                continue;
            }
            batch.Clear();
            for (long scanned = 0; scanned < image.Pages && batch.Count < PushBatch; scanned++, cursor = (cursor + 1) % image.Pages)
            {
                if (pending[cursor])
                {
                    batch.Add(cursor);
                }
            }
            Send(batch);
            Pushed += batch.Count;
        }
        var end = new byte[24];
        BinaryPrimitives.WriteInt64LittleEndian(end, Pushed);
        BinaryPrimitives.WriteInt64LittleEndian(end.AsSpan(8), Demanded);
        BinaryPrimitives.WriteInt64LittleEndian(end.AsSpan(16), Prepaged);
        link.WriteSection(MigrationStream.PostCopyEnd, end);
        network.Flush();
        if (!acknowledged.Wait(TimeSpan.FromMinutes(2)) || ack is null)
        {
            throw failure as MigrationStreamException ?? new MigrationStreamException(
                failure is null ? "the destination did not acknowledge the last page within 2 minutes" : $"the connection broke: {failure.Message}", MigrationRefusal.Cut);
        }
        return (BinaryPrimitives.ReadInt64LittleEndian(ack), BinaryPrimitives.ReadInt64LittleEndian(ack.AsSpan(8)),
            BinaryPrimitives.ReadInt64LittleEndian(ack.AsSpan(16)), BinaryPrimitives.ReadInt64LittleEndian(ack.AsSpan(24)));
    }

    // One PAGE section of these pages, from the image; each is no longer pending.
    private void Send(List<long> pages)
    {
        if (pages.Count == 0)
        {
            return;
        }
        var payload = new MemoryStream(8 + pages.Count * (9 + 4096));
        Span<byte> head = stackalloc byte[9];
        BinaryPrimitives.WriteInt32LittleEndian(head, round);
        BinaryPrimitives.WriteInt32LittleEndian(head[4..], pages.Count);
        payload.Write(head[..8]);
        foreach (long index in pages)
        {
            pending[index] = false;
            Remaining--;
            var page = image.Page(index);
            BinaryPrimitives.WriteUInt64LittleEndian(head, image.GuestFrame(index));
            if (MigrationStream.IsFilled(page, out byte value))
            {
                head[8] = MigrationStream.FilledPage;
                payload.Write(head);
                payload.WriteByte(value);
            }
            else
            {
                head[8] = MigrationStream.RawPage;
                payload.Write(head);
                payload.Write(page);
            }
        }
        link.WriteSection(MigrationStream.Page, payload.GetBuffer().AsSpan(0, (int)payload.Length));
        network.Flush();
    }

    // The thread reading the destination's requests, and at the end its acknowledgement.
    private void Read()
    {
        try
        {
            while (true)
            {
                var (tag, payload) = MigrationStream.ReadSection(network);
                if (tag == MigrationStream.PageRequest && payload.Length == 8)
                {
                    demands.Enqueue(image.IndexOf(BinaryPrimitives.ReadUInt64LittleEndian(payload)));
                }
                else if (tag == MigrationStream.PostCopyAck && payload.Length == 32)
                {
                    ack = payload;
                    acknowledged.Set();
                    return;
                }
                else
                {
                    throw new MigrationStreamException(tag is MigrationStream.Failed or MigrationStream.Abort
                        ? $"the destination failed during post-copy: {Encoding.UTF8.GetString(payload)}"
                        : $"the destination sent section '{tag}' during post-copy", MigrationRefusal.Refused);
                }
            }
        }
        catch (Exception e)
        {
            failure = e;
            acknowledged.Set();
        }
    }
}
