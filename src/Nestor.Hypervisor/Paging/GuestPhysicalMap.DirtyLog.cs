namespace Nestor.Hypervisor.Paging;

// Dirty logging for live migration (Migration/MigrationSource), by write protection: KVM's dirty log without PML
// (KVM_MEM_LOG_DIRTY_PAGES write-protects the slot's pages and marks a page dirty at its first write fault), and
// Clark et al. NSDI'05 §3.3 ("the shadow page tables ... mark all pages read-only; a write faults and is logged").
// While the log runs, every guest frame that is not dirty since the last harvest is write-protected in the structures
// derived from the map (IsWriteProtected is what the nested table's permissions and shadow leaves obey); the guest's
// first write to it, and a device's DMA write (GuestDma's BeforeWrite touches with write), faults into Touch, which
// marks it dirty, and the entry is rebuilt writable. Taking the log clears it and write-protects those frames again.
// Writes that do not go through Touch are not logged: the VMM's own writes into guest RAM (A/D-bit updates of guest
// page tables by software walks, emulated writes to shadowed page-table pages) and pages under 2 MiB nested entries,
// so the migration compares every page once more in its stop-and-copy and counts what the log missed.
public sealed partial class GuestPhysicalMap
{
    private bool[]? dirtyLog;

    /// <summary>Whether the dirty log runs (<see cref="StartDirtyLog"/>).</summary>
    public bool DirtyLogging => dirtyLog is not null;

    /// <summary>Write faults the dirty log took (the first write to a clean page since the last harvest).</summary>
    public long DirtyLogFaults { get; private set; }

    /// <summary>Starts logging writes: every frame clean and write-protected (its nested entry or shadow leaves
    /// dropped, so the next access rebuilds them read-only).</summary>
    internal void StartDirtyLog()
    {
        dirtyLog = new bool[hostFrames.Length];
        DirtyLogFaults = 0;
        Protect(static _ => true);
    }

    /// <summary>Stops logging; entries are rebuilt writable at their next fault.</summary>
    internal void StopDirtyLog()
    {
        if (dirtyLog is null)
        {
            return;
        }
        dirtyLog = null;
        // Frames stay mapped read-only until their next write fault, which then finds them writable again.
    }

    /// <summary>Calls <paramref name="dirty"/> with each guest frame written since the log started or was last taken,
    /// and write-protects those frames again.</summary>
    internal void TakeDirtyLog(Action<ulong> dirty)
    {
        var log = dirtyLog ?? throw new InvalidOperationException("the dirty log is not running");
        var taken = new List<ulong>();
        for (ulong frame = 0; frame < (ulong)log.Length; frame++)
        {
            if (log[frame])
            {
                log[frame] = false;
                taken.Add(frame);
                dirty(frame);
            }
        }
        var set = new HashSet<ulong>(taken);
        Protect(set.Contains);
    }

    // Called by Touch for a write: the frame is dirty, and writable until the log is next taken.
    private void LogWrite(ulong frame)
    {
        if (dirtyLog is { } log && frame < (ulong)log.Length && !log[frame])
        {
            log[frame] = true;
            DirtyLogFaults++;
            if (hostFrames[frame] != 0)
            {
                // As a copy-on-write break does: the read-only translations go (nested entry with INVEPT, shadow
                // leaves with a flush), and the caller's mapping rebuilds them writable.
                BackingChanged(frame);
            }
        }
    }

    // Whether the frame is write-protected for the dirty log (clean since the last harvest).
    private bool LogProtected(ulong guestPhysical) =>
        dirtyLog is { } log && (guestPhysical >> FrameShift) < (ulong)log.Length && !log[guestPhysical >> FrameShift];

    // Drops the derived entries of the mapped frames that match, so that they are rebuilt read-only; one TLB flush for
    // shadow paging at the end rather than one per frame.
    private void Protect(Func<ulong, bool> which)
    {
        for (ulong frame = 0; frame < (ulong)hostFrames.Length; frame++)
        {
            if (hostFrames[frame] != 0 && which(frame))
            {
                nested?.Unmap(frame << FrameShift);
                shadow?.BackingChanged(frame);
            }
        }
        if (shadow is not null)
        {
            FlushProcessors();
        }
    }
}
