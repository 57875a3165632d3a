using System.Diagnostics;
using System.Globalization;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Memory.Kvm;

/// <summary>The counters of the host kernel's same-page merging, as <c>/sys/kernel/mm/ksm</c> shows them
/// (Documentation/admin-guide/mm/ksm.rst, "KSM daemon sysfs interface"): <see cref="PagesShared"/> KSM pages in use,
/// <see cref="PagesSharing"/> further mappings of them (the pages saved), <see cref="PagesUnshared"/> pages scanned
/// but unique so far, <see cref="PagesVolatile"/> pages changing too fast to be merged, <see cref="FullScans"/> passes
/// over all mergeable memory. The same counters as the sim scanner's (Waldspurger, OSDI 2002, §4).</summary>
public readonly record struct KsmCounters(long PagesShared, long PagesSharing, long PagesUnshared, long PagesVolatile, long FullScans, long PagesScanned)
{
    /// <summary>Bytes the merging saves: every sharing mapping is a page the host does not hold twice.</summary>
    public long BytesSaved => PagesSharing * SamePageMerging.PageBytes;
}

/// <summary>What this host's KSM allows: whether the interface exists and whether this process may switch it on.</summary>
/// <param name="Available">/sys/kernel/mm/ksm exists (a kernel built with CONFIG_KSM).</param>
/// <param name="Writable">Its <c>run</c> file can be written (root, and a writable sysfs).</param>
/// <param name="Reason">Why not, when either is false; what was found otherwise.</param>
public sealed record KsmProbe(bool Available, bool Writable, string Reason);

/// <summary>The host kernel's same-page merging (KSM) as a VMM uses it: guest RAM opted in with
/// <c>madvise(MADV_MERGEABLE)</c> (<see cref="KvmMemoryAdvice"/>), the scanner switched on through
/// <c>/sys/kernel/mm/ksm/run</c> at a chosen rate, its counters read. A session holds the host's KSM for this
/// process: it saves <c>run</c>, <c>pages_to_scan</c> and <c>sleep_millisecs</c> when it starts and writes them back
/// when it is disposed (also when what ran in between failed), and an exclusive lock on a file in /run keeps two
/// Nestor processes from saving each other's settings. The saved settings are written into that file (synced) before
/// anything changes and cleared once restored, so that a process killed in between (SIGKILL, a crash) leaves them
/// for the next session, which restores those rather than the killed one's (<see cref="Recovered"/>). KSM is the kernel's counterpart of ESX's content-based page
/// sharing (Waldspurger, OSDI 2002, §4; Arcangeli, Eidus and Wright, "Increasing memory density by using KSM", Linux
/// Symposium 2009): it hashes nothing, but keeps candidate pages in an unstable tree keyed by content and merges a
/// page into the stable tree when an identical one is found, write-protected and copied on write.</summary>
public sealed class SamePageMerging : IDisposable
{
    /// <summary>Where the kernel exposes KSM.</summary>
    public const string DefaultDirectory = "/sys/kernel/mm/ksm";

    /// <summary>KSM merges base pages.</summary>
    public const int PageBytes = 4096;

    private const string DefaultLockPath = "/run/nestor-ksm.lock";

    // Restored in this order: run last. smart_scan (Linux 6.7) is optional: where it exists it is switched off, since
    // it skips pages that did not merge on earlier passes for several passes more, so that a page the guest was still
    // writing when first scanned would merge only minutes later.
    private static readonly string[] SavedSettings = ["pages_to_scan", "sleep_millisecs", "smart_scan", "run"];

    private static SamePageMerging? current;

    private readonly string directory;
    private readonly Dictionary<string, string> saved = [];
    private readonly FileStream? hold;
    private readonly Lock gate = new();
    private bool disposed;

    private SamePageMerging(string directory, FileStream? hold)
    {
        this.directory = directory;
        this.hold = hold;
    }

    /// <summary>Looks at <paramref name="directory"/> without changing anything: does it exist, and may its
    /// <c>run</c> file be written (opened for writing, nothing written).</summary>
    public static KsmProbe Probe(string directory = DefaultDirectory)
    {
        string run = Path.Combine(directory, "run");
        if (!File.Exists(run))
        {
            return new KsmProbe(false, false, $"{run} does not exist: this kernel has no KSM (CONFIG_KSM)");
        }
        try
        {
            using var _ = new FileStream(run, FileMode.Open, FileAccess.Write);
            return new KsmProbe(true, true, $"{run} is writable (now {File.ReadAllText(run).Trim()})");
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            return new KsmProbe(true, false, $"{run} cannot be written ({e.Message}): KSM is left as the host has it; run as root on a writable /sys");
        }
    }

    /// <summary>Reads the counters of <paramref name="directory"/>.</summary>
    public static KsmCounters ReadCounters(string directory = DefaultDirectory) => new(
        ReadNumber(directory, "pages_shared"), ReadNumber(directory, "pages_sharing"), ReadNumber(directory, "pages_unshared"),
        ReadNumber(directory, "pages_volatile"), ReadNumber(directory, "full_scans"), ReadNumber(directory, "pages_scanned", optional: true));

    /// <summary>Switches KSM on (<c>run</c> = 1) scanning <paramref name="pagesToScan"/> pages every
    /// <paramref name="sleepMilliseconds"/> ms, after saving the host's settings, which <see cref="Dispose"/> restores.
    /// Waits up to <paramref name="lockTimeout"/> for another Nestor process that holds KSM.</summary>
    /// <exception cref="HostUnsupportedException">The host has no KSM, or it cannot be written.</exception>
    public static SamePageMerging Start(int pagesToScan, int sleepMilliseconds, string directory = DefaultDirectory, TimeSpan? lockTimeout = null)
    {
        if (pagesToScan < 1 || sleepMilliseconds < 0)
        {
            throw new BadInputException($"KSM needs at least one page per scan and a non-negative sleep, not {pagesToScan} pages every {sleepMilliseconds} ms",
                "Give e.g. 2000 pages every 10 ms");
        }
        var probe = Probe(directory);
        if (!probe.Writable)
        {
            throw new HostUnsupportedException($"the host's same-page merging cannot be switched on: {probe.Reason}",
                "Run as root on a host whose kernel has KSM, or measure without sharing");
        }
        var session = new SamePageMerging(directory, TakeLock(LockPathFor(directory), lockTimeout ?? TimeSpan.FromMinutes(5)));
        try
        {
            // A session that was killed (SIGKILL runs no handler) left the host's settings in the lock file: those are
            // the host's, not what KSM shows now (the killed session's own), so they are what this one restores.
            if (session.ReadLeftSettings() is { Count: > 0 } left)
            {
                foreach (var (name, value) in left)
                {
                    session.saved[name] = value;
                }
                session.Recovered = true;
            }
            else
            {
                foreach (string name in SavedSettings.Where(n => n != "smart_scan" || File.Exists(Path.Combine(directory, n))))
                {
                    session.saved[name] = File.ReadAllText(Path.Combine(directory, name)).Trim();
                }
                session.RecordSettings();
            }
            if (session.saved.ContainsKey("smart_scan"))
            {
                session.Write("smart_scan", 0);
            }
            session.Write("pages_to_scan", pagesToScan);
            session.Write("sleep_millisecs", sleepMilliseconds);
            session.Write("run", 1);
            current = session;
        }
        catch
        {
            session.Dispose();
            throw;
        }
        return session;
    }

    /// <summary>Whether this session found the host's settings left by a session that was killed before it could
    /// restore them (and so will restore those, not what KSM showed when this one started).</summary>
    public bool Recovered { get; private set; }

    /// <summary>The lock file of a KSM directory: /run's for the host's, a sibling file for any other (a test's).</summary>
    private static string LockPathFor(string directory) =>
        Path.GetFullPath(directory) == DefaultDirectory ? DefaultLockPath : Path.GetFullPath(directory).TrimEnd('/') + ".nestor-lock";

    /// <summary>The settings a killed session wrote into the lock file (name=value lines), empty when it ended well.</summary>
    private Dictionary<string, string> ReadLeftSettings()
    {
        var left = new Dictionary<string, string>(StringComparer.Ordinal);
        if (hold is null)
        {
            return left;
        }
        hold.Position = 0;
        using var reader = new StreamReader(hold, leaveOpen: true);
        while (reader.ReadLine() is { } line)
        {
            int equals = line.IndexOf('=');
            if (equals > 0 && SavedSettings.Contains(line[..equals]))
            {
                left[line[..equals]] = line[(equals + 1)..];
            }
        }
        return left;
    }

    /// <summary>Writes the host's settings into the lock file and syncs it, before anything is changed: if this
    /// process is killed, the next session finds them there.</summary>
    private void RecordSettings()
    {
        if (hold is null)
        {
            return;
        }
        hold.SetLength(0);
        byte[] text = System.Text.Encoding.UTF8.GetBytes(string.Concat(saved.Select(s => $"{s.Key}={s.Value}\n")));
        hold.Write(text);
        hold.Flush(flushToDisk: true);
    }

    /// <summary>For a test: ends this session as a killed process would, releasing the lock without restoring anything.</summary>
    internal void Abandon()
    {
        lock (gate)
        {
            disposed = true;
            Interlocked.CompareExchange(ref current, null, this);
            hold?.Dispose();
        }
    }

    /// <summary>Restores the host's settings if this process holds a session now: for a SIGINT or SIGTERM handler,
    /// which ends the process without running the session's <c>using</c>.</summary>
    public static void RestoreCurrent() => current?.Dispose();

    /// <summary>Stops the scanner (<c>run</c> = 0, which keeps what it merged) or starts it again (<c>run</c> = 1),
    /// so that memory can be measured before merging.</summary>
    public void SetRunning(bool running) => Write("run", running ? 1 : 0);

    /// <summary>The counters now.</summary>
    public KsmCounters Read() => ReadCounters(directory);

    /// <summary>Waits until the scanner has settled: at least three full scans after this call (a page enters KSM's
    /// unstable tree only when its checksum is the same on two passes, and merges on the pass that finds its twin
    /// there) and then
    /// <c>pages_sharing</c> unchanged over a whole further scan. Returns the counters then, or when
    /// <paramref name="timeout"/> has passed (<paramref name="settled"/> says which).</summary>
    public KsmCounters WaitUntilSettled(TimeSpan timeout, out bool settled)
    {
        var clock = Stopwatch.StartNew();
        var start = Read();
        var last = start;
        long lastScan = start.FullScans;
        long sharingAtLastScan = -1;
        while (clock.Elapsed < timeout)
        {
            Thread.Sleep(50);
            last = Read();
            if (last.FullScans == lastScan)
            {
                continue;
            }
            lastScan = last.FullScans;
            if (last.FullScans - start.FullScans >= 3)
            {
                if (last.PagesSharing == sharingAtLastScan)
                {
                    settled = true;
                    return last;
                }
                sharingAtLastScan = last.PagesSharing;
            }
        }
        settled = false;
        return last;
    }

    /// <summary>Writes the saved settings back (run last, so the scanner stops only once its rate is the host's
    /// again) and releases the lock. Pages KSM merged stay merged until their process unmaps or writes them.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            if (disposed)
            {
                return;
            }
            disposed = true;
            Interlocked.CompareExchange(ref current, null, this);
            Restore();
        }
    }

    private void Restore()
    {
        List<Exception> failures = [];
        foreach (string name in SavedSettings)
        {
            if (!saved.TryGetValue(name, out string? value))
            {
                continue;
            }
            try
            {
                File.WriteAllText(Path.Combine(directory, name), value);
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                failures.Add(e);
            }
        }
        if (failures.Count == 0 && hold is not null)
        {
            // Restored: nothing for a later session to recover.
            hold.SetLength(0);
            hold.Flush(flushToDisk: true);
        }
        hold?.Dispose();
        if (failures.Count > 0)
        {
            throw new HostUnsupportedException($"the host's KSM settings could not all be restored: {string.Join("; ", failures.Select(f => f.Message))}",
                $"Write them back by hand: {string.Join(", ", saved.Select(s => $"{s.Value} > {Path.Combine(directory, s.Key)}"))}");
        }
    }

    private void Write(string name, int value) =>
        File.WriteAllText(Path.Combine(directory, name), value.ToString(CultureInfo.InvariantCulture));

    private static FileStream? TakeLock(string lockPath, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                // .NET takes flock(LOCK_EX) for FileShare.None on Linux: an advisory lock between Nestor processes.
                return new FileStream(lockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (UnauthorizedAccessException)
            {
                return null; // /run not writable: nothing to coordinate with (and KSM's files will refuse too)
            }
            catch (IOException) when (clock.Elapsed < timeout)
            {
                Thread.Sleep(100);
            }
            catch (IOException e)
            {
                throw new HostUnsupportedException($"another process has held {lockPath} (KSM) for {timeout.TotalSeconds:0} s: {e.Message}",
                    "Wait for the other Nestor benchmark or test that uses KSM to finish");
            }
        }
    }

    private static long ReadNumber(string directory, string name, bool optional = false)
    {
        string path = Path.Combine(directory, name);
        if (optional && !File.Exists(path))
        {
            return 0;
        }
        string text = File.ReadAllText(path).Trim();
        return long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out long value)
            ? value
            : throw new HostUnsupportedException($"{path} holds '{text}', not a number", "Check the kernel's KSM interface");
    }
}
