using System.Diagnostics;
using System.Runtime.InteropServices;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Memory.Sharing;

/// <summary>How fast the scanner goes and what a page costs it in the model.</summary>
/// <param name="PagesPerSecond">System-wide scan rate in pages per second of virtual time (<see cref="PageSharingScanner.Advance"/>).</param>
/// <param name="PagesPerVmPerSecond">Cap per VM in pages per second of virtual time (ESX has a per-VM and a system-wide rate;
/// null: no cap beyond the system-wide rate).</param>
/// <param name="Seed">Seed of the random page order (a run is reproducible).</param>
public sealed record ScanRates(double PagesPerSecond, double? PagesPerVmPerSecond = null, int Seed = 15);

/// <summary>The modelled cost of the scanner's work, in host cycles, from stated per-page parameters (these are the
/// model's assumptions, not measurements: the hash is taken to run at one cycle a byte, a full comparison at four bytes
/// a cycle, a merge as a P2M update with a nested-TLB shootdown).</summary>
public sealed record ScanCosts(long HashCyclesPerPage = 4096, long CompareCyclesPerPage = 1024, long MergeCycles = 2000)
{
    public static ScanCosts Default { get; } = new();
}

/// <summary>KSM-style counters of a <see cref="PageSharingScanner"/> (the names of Linux's
/// <c>/sys/kernel/mm/ksm</c>).</summary>
/// <param name="PagesShared">Distinct shared host frames in use (the zero frame among them while mapped).</param>
/// <param name="PagesSharing">Guest pages mapping a shared frame beyond one per frame: the host frames saved.</param>
/// <param name="PagesUnshared">Hint entries: pages hashed, unique so far, kept as candidates.</param>
/// <param name="PagesVolatile">Hints found changed when a match came to merge them (counted each time; a gauge in KSM).</param>
/// <param name="ZeroPages">Guest pages mapping the zero frame.</param>
/// <param name="FullScans">Times every VM's pages were all scanned.</param>
/// <param name="PagesScanned">Pages hashed in all.</param>
/// <param name="Merges">Pages made to share a frame.</param>
/// <param name="HashCollisions">Equal hashes whose bytes differed (the full comparison caught them).</param>
/// <param name="CopyOnWriteBreaks">Writes to shared frames that gave the writer its copy, over the maps scanned.</param>
/// <param name="ScanTime">Host time spent scanning, measured.</param>
/// <param name="ModelledCycles">Host cycles spent scanning, modelled from <see cref="ScanCosts"/>.</param>
public readonly record struct SharingCounters(long PagesShared, long PagesSharing, long PagesUnshared, long PagesVolatile, long ZeroPages,
    long FullScans, long PagesScanned, long Merges, long HashCollisions, long CopyOnWriteBreaks, TimeSpan ScanTime, long ModelledCycles)
{
    /// <summary>Bytes of host memory the sharing saves now.</summary>
    public ulong BytesSaved => (ulong)PagesSharing * 4096;
}

/// <summary>Content-based page sharing across the VMs of one <see cref="Host"/> (issue 15), after ESX (Waldspurger,
/// OSDI 2002, §4.2–4.3): pages are picked in a random order and hashed (64 bits of their 4 KiB); the hash indexes a
/// table whose entries are <i>shared</i> (a write-protected host frame several guest pages map, copy-on-write) or
/// <i>hints</i> (a page hashed once and not shared, which the guest may have changed since: it is hashed again before
/// a merge, and a changed hint is replaced). A match is compared byte by byte before any merge, so a hash collision
/// never merges different pages. A zero-filled page is mapped to one special shared frame, the zero frame. Merges go
/// through <see cref="GuestPhysicalMap.Share(GuestPhysical, GuestPhysicalMap, GuestPhysical)"/> and
/// <see cref="GuestPhysicalMap.Remap(GuestPhysical, HostPhysical)"/>, whose write protection reaches nested and
/// shadow tables. Run it only while the host's VMs are stopped between quanta (it changes their P2Ms).</summary>
public sealed class PageSharingScanner : IDisposable
{
    private const int PageSize = 4096;
    private readonly Host host;
    private readonly Random random;
    private readonly Dictionary<ulong, Entry> table = [];
    private readonly Dictionary<GuestPhysicalMap, Cursor> cursors = [];
    private readonly Dictionary<GuestPhysicalMap, long> breaksSeen = [];
    private readonly Stopwatch clock = new();
    private readonly byte[] scratch = new byte[PageSize];
    private ulong zeroFrame;
    private double carry;
    private long fullScans, pagesScanned, merges, collisions, volatileHints, modelledCycles, breaksOfGoneMaps;

    /// <param name="host">Whose VMs are scanned.</param>
    /// <param name="rates">How fast (used by <see cref="Advance"/>).</param>
    /// <param name="costs">What a page costs in the model.</param>
    public PageSharingScanner(Host host, ScanRates rates, ScanCosts? costs = null)
    {
        if (!(rates.PagesPerSecond >= 0) || double.IsInfinity(rates.PagesPerSecond) || rates.PagesPerVmPerSecond is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(rates), $"scan rates must be finite and not negative, not {rates}");
        }
        this.host = host;
        Rates = rates;
        Costs = costs ?? ScanCosts.Default;
        random = new Random(rates.Seed);
    }

    /// <summary>How fast it scans.</summary>
    public ScanRates Rates { get; }

    /// <summary>What a page costs it in the model.</summary>
    public ScanCosts Costs { get; }

    /// <summary>Scans as many pages as <paramref name="virtualSeconds"/> of virtual time allow at <see cref="Rates"/>
    /// (fractions carry over to the next call); how many it scanned.</summary>
    public int Advance(double virtualSeconds)
    {
        carry += Rates.PagesPerSecond * virtualSeconds;
        int pages = (int)Math.Min(carry, int.MaxValue);
        carry -= pages;
        int? perVm = Rates.PagesPerVmPerSecond is { } vm ? (int)Math.Ceiling(vm * virtualSeconds) : null;
        return Step(pages, perVm);
    }

    /// <summary>Scans up to <paramref name="pages"/> pages, taken in turn from each VM (at most
    /// <paramref name="perVm"/> from one), in each VM's random order; how many it scanned.</summary>
    public int Step(int pages, int? perVm = null)
    {
        clock.Start();
        try
        {
            var maps = LiveMaps();
            if (maps.Count == 0)
            {
                return 0;
            }
            var taken = new int[maps.Count];
            int done = 0;
            for (bool progress = true; done < pages && progress;)
            {
                progress = false;
                for (int i = 0; i < maps.Count && done < pages; i++)
                {
                    if (perVm is { } cap && taken[i] >= cap)
                    {
                        continue;
                    }
                    ScanOne(maps[i], cursors[maps[i]].Next());
                    taken[i]++;
                    done++;
                    progress = true;
                }
            }
            long least = long.MaxValue;
            foreach (var map in maps)
            {
                least = Math.Min(least, cursors[map].Passes);
            }
            fullScans = Math.Max(fullScans, least);
            return done;
        }
        finally
        {
            clock.Stop();
        }
    }

    /// <summary>Scans until every VM's pages have all been scanned <paramref name="passes"/> more times.</summary>
    public void ScanAll(int passes = 1)
    {
        var maps = LiveMaps();
        long frames = maps.Sum(m => (long)m.FrameCount);
        long target = fullScans + passes;
        while (maps.Count > 0 && fullScans < target)
        {
            Step((int)Math.Min(frames, int.MaxValue));
        }
    }

    /// <summary>The counters now.</summary>
    public SharingCounters Counters()
    {
        long shared = 0, sharing = 0, hints = 0, zeroPages = 0;
        var seen = new HashSet<ulong>();
        foreach (var entry in table.Values)
        {
            if (entry.Map is not null)
            {
                hints++;
                continue;
            }
            if (entry.Frame != zeroFrame && IsLiveShared(entry.Frame) && seen.Add(entry.Frame))
            {
                int mappers = host.FramePool.MappingsOf(entry.Frame).Count;
                shared++;
                sharing += mappers - 1;
            }
        }
        if (zeroFrame != 0)
        {
            zeroPages = host.FramePool.MappingsOf(zeroFrame).Count;
            if (zeroPages > 0)
            {
                shared++;
                sharing += zeroPages - 1;
            }
        }
        long breaks = breaksOfGoneMaps;
        foreach (var (map, atStart) in breaksSeen)
        {
            breaks += map.CopyOnWriteBreaks - atStart;
        }
        return new SharingCounters(shared, sharing, hints, volatileHints, zeroPages, fullScans, pagesScanned, merges, collisions, breaks,
            clock.Elapsed, modelledCycles);
    }

    /// <summary>Gives back the zero frame's own reference (pages still mapping it keep it until they write or go).</summary>
    public void Dispose()
    {
        if (zeroFrame != 0)
        {
            host.FramePool.Release(zeroFrame);
            zeroFrame = 0;
        }
    }

    private List<GuestPhysicalMap> LiveMaps()
    {
        var maps = new List<GuestPhysicalMap>();
        foreach (var vm in host.Vms.ToArray())
        {
            if (host.PhysicalMapOf(vm) is { } map)
            {
                maps.Add(map);
                if (!cursors.ContainsKey(map))
                {
                    cursors[map] = new Cursor(map.FrameCount, random);
                    breaksSeen[map] = map.CopyOnWriteBreaks;
                }
            }
        }
        foreach (var gone in cursors.Keys.Where(m => m.IsDisposed).ToArray())
        {
            breaksOfGoneMaps += gone.CopyOnWriteBreaks - breaksSeen[gone];
            cursors.Remove(gone);
            breaksSeen.Remove(gone);
        }
        return maps;
    }

    private void ScanOne(GuestPhysicalMap map, ulong frame)
    {
        // Only a private page backed by its home is a candidate: one never touched costs no host frame yet, and one
        // already shared is where it should be.
        if (!map.IsPrivate(frame, out ulong own))
        {
            return;
        }
        pagesScanned++;
        modelledCycles += Costs.HashCyclesPerPage;
        var bytes = host.FramePool.Contents(own);
        ulong hash = Hash(bytes);
        ulong address = frame << 12;
        if (hash == ZeroHash && IsZero(bytes))
        {
            // The zero page (§4.3): one write-protected frame of zeros for every zero-filled page of every VM.
            modelledCycles += Costs.CompareCyclesPerPage + Costs.MergeCycles;
            if (zeroFrame == 0)
            {
                zeroFrame = host.FramePool.Allocate();
                host.FramePool.SetWriteProtected(zeroFrame, true);
            }
            map.MergeInto(address, zeroFrame); // its home memory goes back to the host kernel
            merges++;
            return;
        }
        if (!table.TryGetValue(hash, out var entry))
        {
            table[hash] = new Entry(map, frame);
            return;
        }
        if (entry.Map is null)
        {
            // A shared entry: compare with its frame before mapping the page to it.
            if (!IsLiveShared(entry.Frame))
            {
                table[hash] = new Entry(map, frame); // its sharers all wrote or went: the frame is gone
                return;
            }
            modelledCycles += Costs.CompareCyclesPerPage;
            if (!bytes.SequenceEqual(host.FramePool.Contents(entry.Frame)))
            {
                collisions++;
                return;
            }
            modelledCycles += Costs.MergeCycles;
            map.MergeInto(address, entry.Frame);
            merges++;
            return;
        }
        // A hint: the page it names may have changed or gone since it was hashed.
        var hintMap = entry.Map;
        if (hintMap == map && entry.Frame == frame)
        {
            return; // the same page again, unchanged
        }
        if (hintMap.IsDisposed || !hintMap.IsPrivate(entry.Frame, out ulong hintHost))
        {
            table[hash] = new Entry(map, frame);
            return;
        }
        var hintBytes = host.FramePool.Contents(hintHost);
        modelledCycles += Costs.HashCyclesPerPage;
        if (Hash(hintBytes) != hash)
        {
            volatileHints++;
            table[hash] = new Entry(map, frame);
            return;
        }
        modelledCycles += Costs.CompareCyclesPerPage;
        if (!bytes.SequenceEqual(hintBytes))
        {
            collisions++;
            return;
        }
        modelledCycles += Costs.MergeCycles;
        var sharedFrame = hintMap.Share(new GuestPhysical(entry.Frame << 12), map, new GuestPhysical(address));
        table[hash] = new Entry(null, sharedFrame.Value);
        merges += 2; // both pages now map the shared frame
    }

    private bool IsLiveShared(ulong frame) =>
        host.FramePool.ReferenceCount(frame) > 0 && host.FramePool.IsWriteProtected(frame) && host.FramePool.KindOf(frame) == HostFrameKind.Owned;

    private static readonly ulong ZeroHash = Hash(new byte[PageSize]);

    /// <summary>A 64-bit hash of one page: each 8-byte word folded in with a multiply (the golden-ratio constant) and
    /// a rotate, then a final avalanche (the finaliser of MurmurHash3's 64-bit form). Its only job is to make equal
    /// hashes of different pages rare; the full comparison decides.</summary>
    private static ulong Hash(ReadOnlySpan<byte> page)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(page);
        ulong h = 0x243F_6A88_85A3_08D3;
        foreach (ulong w in words)
        {
            h = ulong.RotateLeft((h ^ w) * 0x9E37_79B9_7F4A_7C15, 29);
        }
        h ^= h >> 33;
        h *= 0xFF51_AFD7_ED55_8CCD;
        h ^= h >> 33;
        h *= 0xC4CE_B9FE_1A85_EC53;
        h ^= h >> 33;
        return h;
    }

    private static bool IsZero(ReadOnlySpan<byte> page) => !page.ContainsAnyExcept((byte)0);

    /// <summary>A table entry: a hint (<paramref name="Map"/> and its guest frame) or a shared frame (Map null,
    /// <paramref name="Frame"/> the host-physical address).</summary>
    private sealed record Entry(GuestPhysicalMap? Map, ulong Frame);

    /// <summary>One VM's random order of its guest frames: i ↦ (start + i·stride) mod n with the stride prime to n, so
    /// that every pass visits each frame once, in an order that looks random.</summary>
    private sealed class Cursor
    {
        private readonly ulong count, stride;
        private ulong position, index;

        public Cursor(ulong count, Random random)
        {
            this.count = Math.Max(1, count);
            ulong s = (ulong)random.NextInt64(1, (long)Math.Max(2, this.count));
            while (Gcd(s, this.count) != 1)
            {
                s++;
            }
            stride = s % this.count == 0 ? 1 : s;
            position = (ulong)random.NextInt64((long)this.count);
        }

        public long Passes { get; private set; }

        public ulong Next()
        {
            ulong frame = position;
            position = (position + stride) % count;
            if (++index == count)
            {
                index = 0;
                Passes++;
            }
            return frame;
        }

        private static ulong Gcd(ulong a, ulong b)
        {
            while (b != 0)
            {
                (a, b) = (b, a % b);
            }
            return a;
        }
    }
}
