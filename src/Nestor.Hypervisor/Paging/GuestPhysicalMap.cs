using Nestor.Host;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Paging;

/// <summary>The VMM's map of one VM's guest-physical memory onto host-physical frames of its <see cref="Host"/>'s
/// <see cref="HostFramePool"/> (what Xen calls the P2M). Both nested and shadow paging translate through it.
/// <list type="bullet">
/// <item>A guest page gets a host frame the first time the guest touches it: the pool adopts the page of the VM's own
/// RAM (<see cref="GuestMemory"/>), the guest frame's <i>home</i>.</item>
/// <item>A guest frame can be unmapped (the next access faults into the VMM and maps it again), remapped to another
/// host frame, and shared copy-on-write with other guest frames, of this VM or another one on the same host
/// (<see cref="Share(GuestPhysical, GuestPhysicalMap, GuestPhysical)"/>): the shared frame is write-protected, so the nested and shadow tables map it read-only and a
/// guest write faults into the VMM, which copies it back into the writer's home and maps that instead
/// (<see cref="Touch(ulong, bool)"/> with <c>write</c>) — the mechanism of ESX's transparent page sharing
/// (Waldspurger, OSDI 2002, §4) and of host swapping.</item>
/// <item>Every change of a guest frame's backing reaches the structures derived from the map for the current run
/// (<see cref="Attach"/>): the nested page table unmaps or write-protects the page with a nested-TLB shootdown, shadow
/// paging drops the shadow entries of the frame.</item>
/// </list>
/// A private guest frame is backed by its home. A shared frame's home is given back to the host kernel
/// (<c>madvise(MADV_DONTNEED)</c>), and so is a swapped-out page's, so that sharing and swapping free real memory: the
/// VMM's accesses to guest RAM (<see cref="GuestMemory"/>: loaders, devices, snapshots, inspection) ask the map where
/// such a page's bytes are (<see cref="IGuestPageSource"/>), and shadow paging's software walks read the guest's tables
/// through the map. A frame remapped with <see cref="Remap(GuestPhysical, HostPhysical)"/> to a frame other than its
/// home keeps its home: copy its bytes home where the VMM must see them too.</summary>
public sealed partial class GuestPhysicalMap : IDisposable, IGuestPageSource
{
    private const int FrameShift = 12;
    private const int LargeFrames = 512;
    private readonly GuestMemory guest;
    private readonly HostFramePool pool;
    private readonly ulong[] hostFrames; // by guest frame: host-physical address, 0 = no frame
    private readonly List<Mmu> processors = []; // every vCPU's MMU of the current run
    private NestedPageTable? nested;
    private ShadowPaging? shadow;
    private bool disposed;

    public GuestPhysicalMap(GuestMemory guest, HostFramePool pool)
    {
        this.guest = guest;
        this.pool = pool;
        ulong top = guest.Regions.Max(r => r.Region.End.Value);
        hostFrames = new ulong[top >> FrameShift];
        AttachRemote(); // post-copy: pages still at the source (GuestPhysicalMap.PostCopy.cs)
    }

    /// <summary>The host frame pool the map draws on.</summary>
    public HostFramePool Pool => pool;

    /// <summary>Whether the map gave its frames back (<see cref="Dispose"/>).</summary>
    public bool IsDisposed => disposed;

    /// <summary>Guest pages that have a host frame.</summary>
    public long TouchedPages { get; private set; }

    /// <summary>Writes to shared frames that the VMM resolved by giving the writer a private copy.</summary>
    public long CopyOnWriteBreaks { get; private set; }

    /// <summary>Called with the host-physical address of every host frame the map starts using for a guest page. Host
    /// frame numbers are reused (a freed frame may come back behind another page, with other bytes), so the engine
    /// drops what its CPU derived from the frame's old bytes (the decoded instructions of that host-physical page).</summary>
    internal Action<ulong>? BackingInstalled { get; set; }

    /// <summary>Guest frames the map covers (guest-physical top >> 12): guest frame numbers are below it.</summary>
    internal ulong FrameCount => (ulong)hostFrames.Length;

    /// <summary>The processor running the VM and the tables derived from this map in the current run, which every
    /// change of a guest frame's backing must reach (a nested table to unmap and shoot down, or shadow paging).</summary>
    public void Attach(Mmu processor, NestedPageTable? nestedTable, ShadowPaging? shadowPaging)
    {
        processors.Clear();
        processors.Add(processor);
        nested = nestedTable;
        nested?.AttachProcessor(processor);
        shadow = shadowPaging;
    }

    /// <summary>Another vCPU's processor of the same run (after <see cref="Attach"/>): a change of a guest frame's
    /// backing shoots down its nested TLB too, as INVEPT on every logical processor the VM runs on (Intel SDM Vol. 3C
    /// §29.4.3.1: cached mappings are per logical processor, so a VMM invalidates them on each).</summary>
    public void AttachProcessor(Mmu processor)
    {
        if (!processors.Contains(processor))
        {
            processors.Add(processor);
        }
        nested?.AttachProcessor(processor);
    }

    // Shadow paging's change of a shadow entry: every processor's TLB may cache the old translation.
    private void FlushProcessors()
    {
        foreach (var processor in processors)
        {
            processor.FlushAll(includingGlobal: true);
        }
    }

    /// <summary>Whether <paramref name="guestPhysical"/> is guest RAM (else it is a device, or nothing).</summary>
    internal bool IsRam(ulong guestPhysical) => guest.IsRam(new GuestPhysical(guestPhysical & ~0xFFFUL), 0x1000);

    /// <summary>The host-physical address of <paramref name="guestPhysical"/> if its page has a host frame.</summary>
    internal bool TryHostPhysical(ulong guestPhysical, out ulong hostPhysical)
    {
        ulong frame = guestPhysical >> FrameShift;
        hostPhysical = frame < (ulong)hostFrames.Length ? hostFrames[frame] : 0;
        if (hostPhysical == 0)
        {
            return false;
        }
        hostPhysical |= guestPhysical & 0xFFF;
        return true;
    }

    /// <summary>Whether the page at <paramref name="guestPhysical"/> is mapped to a write-protected (shared) frame:
    /// nested and shadow tables must map it read-only.</summary>
    internal bool IsWriteProtected(ulong guestPhysical) =>
        TryHostPhysical(guestPhysical, out ulong host) && pool.IsWriteProtected(host) || LogProtected(guestPhysical);

    /// <summary>The EPT permissions a nested entry for <paramref name="guestPhysical"/> may grant.</summary>
    internal ulong NestedPermissions(ulong guestPhysical) =>
        IsWriteProtected(guestPhysical) ? NestedEntry.Read | NestedEntry.Execute : NestedEntry.ReadWriteExecute;

    /// <summary>The host-physical address of guest RAM at <paramref name="guestPhysical"/>, giving its page a host frame
    /// on first touch.</summary>
    internal ulong Touch(ulong guestPhysical) => Touch(guestPhysical, write: false);

    /// <summary>The host-physical address of guest RAM at <paramref name="guestPhysical"/> for an access, giving its page
    /// a host frame on first touch; a write to a write-protected (shared) frame first gives the page a private copy in
    /// its home (copy-on-write).</summary>
    internal ulong Touch(ulong guestPhysical, bool write)
    {
        if (write && dirtyLog is not null)
        {
            LogWrite(guestPhysical >> FrameShift); // the dirty log (GuestPhysicalMap.DirtyLog.cs)
        }
        if (referenced is not null && (guestPhysical >> FrameShift) < (ulong)referenced.Length)
        {
            referenced[guestPhysical >> FrameShift] = 1; // the clock's reference bit (Swapping/HostSwap)
        }
        NoteSampledTouch(guestPhysical >> FrameShift); // active-memory sampling (GuestPhysicalMap.Sampling)
        if (TryHostPhysical(guestPhysical, out ulong host))
        {
            if (!write || !pool.IsWriteProtected(host))
            {
                return host;
            }
            BreakSharing(guestPhysical >> FrameShift, host & ~0xFFFUL);
            return hostFrames[guestPhysical >> FrameShift] | (guestPhysical & 0xFFF);
        }
        ulong page = guestPhysical & ~0xFFFUL;
        if (swapSlots is not null && swapSlots[page >> FrameShift] != 0)
        {
            SwapIn(page >> FrameShift, byDevice: false);
        }
        FetchIfRemote(page >> FrameShift); // post-copy's demand fault (GuestPhysicalMap.PostCopy.cs)
        host = pool.Adopt(Home(page), 1, 1, this, page >> FrameShift);
        hostFrames[page >> FrameShift] = host;
        TouchedPages++;
        BackingInstalled?.Invoke(host);
        return host | (guestPhysical & 0xFFF);
    }

    /// <summary>Gives the whole 2 MiB guest page around <paramref name="guestPhysical"/> a 2 MiB-aligned run of host
    /// frames, so that one large nested entry can map it. False when that cannot be done: part of it is not RAM, or
    /// some page of it already has a frame of its own.</summary>
    internal bool TouchLarge(ulong guestPhysical, out ulong hostLarge)
    {
        hostLarge = 0;
        ulong first = guestPhysical & ~0x1F_FFFFUL;
        if (!guest.IsRam(new GuestPhysical(first), LargeFrames * 0x1000UL))
        {
            return false;
        }
        ulong frame = first >> FrameShift;
        for (int i = 0; i < LargeFrames; i++)
        {
            // A page of it swapped out by the host is brought back by its own 4 KiB fault (Touch).
            if (hostFrames[frame + (ulong)i] != 0 || (swapSlots is not null && swapSlots[frame + (ulong)i] != 0))
            {
                return false;
            }
        }
        hostLarge = pool.Adopt(Home(first), LargeFrames, LargeFrames, this, frame);
        for (int i = 0; i < LargeFrames; i++)
        {
            hostFrames[frame + (ulong)i] = hostLarge + (ulong)i * 0x1000;
            BackingInstalled?.Invoke(hostLarge + (ulong)i * 0x1000);
        }
        TouchedPages += LargeFrames;
        return true;
    }

    /// <summary>Takes the host frame away from the guest page at <paramref name="guestPhysical"/>: the nested or shadow
    /// entries mapping it go, and the guest's next access faults into the VMM, which maps it again (from its home,
    /// which keeps its bytes). False when the page had no frame.</summary>
    internal bool Unmap(ulong guestPhysical)
    {
        ulong frame = guestPhysical >> FrameShift;
        if (!TryHostPhysical(guestPhysical, out ulong host))
        {
            return false;
        }
        if (IsHomeAway(frame))
        {
            pool.Contents(host).CopyTo(HomeContents(frame << FrameShift)); // the next touch maps the home
            HomeBack(frame);
        }
        hostFrames[frame] = 0;
        TouchedPages--;
        BackingChanged(frame);
        pool.RemoveMapping(host & ~0xFFFUL, this, frame);
        return true;
    }

    /// <summary>Maps the guest page at <paramref name="guestPhysical"/> to the host frame at
    /// <paramref name="hostPhysical"/>, which is in use (it takes a reference), in place of its current frame.</summary>
    internal void Remap(ulong guestPhysical, ulong hostPhysical)
    {
        if (!IsRam(guestPhysical))
        {
            throw new ArgumentOutOfRangeException(nameof(guestPhysical), $"guest-physical 0x{guestPhysical:x} is not RAM");
        }
        ulong frame = guestPhysical >> FrameShift;
        ulong target = hostPhysical & ~0xFFFUL;
        if (swapSlots is not null && swapSlots[frame] != 0)
        {
            SwapIn(frame, byDevice: false); // its slot goes; the home holds its bytes again
        }
        pool.AddMapping(target, this, frame);
        ulong previous = hostFrames[frame];
        hostFrames[frame] = target;
        if (previous == 0)
        {
            TouchedPages++;
        }
        BackingChanged(frame);
        BackingInstalled?.Invoke(target);
        if (previous != 0)
        {
            pool.RemoveMapping(previous, this, frame);
        }
    }

    /// <summary>Makes the guest page at <paramref name="targetGuestPhysical"/> of <paramref name="target"/> (this map or
    /// another VM's on the same host) share the host frame behind <paramref name="sourceGuestPhysical"/> of this map,
    /// copy-on-write: both read the source's bytes, and the first write by either faults into the VMM and gives the
    /// writer a private copy. The source's bytes move to a frame of the pool's own memory (so that each sharer's home
    /// is free to take its copy back), and the target's home receives a copy of them.</summary>
    /// <returns>The shared frame's host-physical address.</returns>
    internal ulong Share(ulong sourceGuestPhysical, GuestPhysicalMap target, ulong targetGuestPhysical)
    {
        if (target.pool != pool)
        {
            throw new ArgumentException("only guest frames of VMs on one host can share a host frame");
        }
        if (!IsRam(sourceGuestPhysical) || !target.IsRam(targetGuestPhysical))
        {
            throw new ArgumentOutOfRangeException(nameof(sourceGuestPhysical), "both guest pages must be RAM");
        }
        ulong sourceFrame = sourceGuestPhysical >> FrameShift, targetFrame = targetGuestPhysical >> FrameShift;
        if (target == this && sourceFrame == targetFrame)
        {
            throw new ArgumentException("a guest frame cannot share with itself");
        }
        ulong shared = Touch(sourceGuestPhysical) & ~0xFFFUL;
        if (!pool.IsWriteProtected(shared))
        {
            // Move the source onto a frame of the pool's own, write-protected, and drop its write access.
            ulong copy = pool.Allocate();
            pool.Contents(shared).CopyTo(pool.Contents(copy));
            hostFrames[sourceFrame] = copy;
            pool.AddMapping(copy, this, sourceFrame);
            pool.Release(copy); // Allocate's own reference: the mapping holds the frame now
            pool.SetWriteProtected(copy, true);
            BackingChanged(sourceFrame);
            BackingInstalled?.Invoke(copy);
            pool.RemoveMapping(shared, this, sourceFrame);
            shared = copy;
        }
        ReleaseHome(sourceFrame);
        target.MergeInto(targetGuestPhysical, shared);
        return shared;
    }

    /// <summary>Maps the guest page at <paramref name="guestPhysical"/> to <paramref name="sharedFrame"/>, a
    /// write-protected frame of the pool's own memory holding the same bytes (a shared frame, or the zero frame), and
    /// gives the page's home memory back to the host kernel: what merging a page saves (Waldspurger, OSDI 2002, §4.1:
    /// "the redundant copy is reclaimed"). The home is reloaded from the shared frame when the page is written, by the
    /// guest or by the VMM.</summary>
    internal void MergeInto(ulong guestPhysical, ulong sharedFrame)
    {
        if (!pool.IsWriteProtected(sharedFrame) || pool.KindOf(sharedFrame) != HostFrameKind.Owned)
        {
            throw new ArgumentException($"host frame 0x{sharedFrame:x} is not a write-protected frame of the pool's own: only such a frame can stand for a page whose home is released",
                nameof(sharedFrame));
        }
        Remap(guestPhysical, sharedFrame);
        ReleaseHome(guestPhysical >> FrameShift);
    }

    /// <summary>The guest's page tables as the VMM's own software walks read them (shadow paging): through this map,
    /// so that a shared or swapped-out table page is read where its bytes are, and an accessed or dirty bit written
    /// into a shared one breaks its sharing first, as a guest write would.</summary>
    internal IGuestPhysicalTranslator GuestTables => guestTables ??= new GuestTableTranslator(this);

    private GuestTableTranslator? guestTables;

    /// <summary>The 4 KiB the guest sees in its page at <paramref name="guestPhysical"/>, giving it a host frame (read
    /// back in if swapped out; a private copy first for a <paramref name="write"/> to a shared frame).</summary>
    internal Span<byte> GuestPage(ulong guestPhysical, bool write) => pool.Contents(Touch(guestPhysical & ~0xFFFUL, write));

    /// <summary>Guest-physical to host-physical for the walks of <see cref="GuestTables"/>. An address that is not RAM
    /// goes to a host-physical address beyond every frame, which reads as all ones, as the guest's RAM view did.</summary>
    private sealed class GuestTableTranslator(GuestPhysicalMap map) : IGuestPhysicalTranslator
    {
        private bool lastWritable;

        public bool LastTranslationWritable => lastWritable;

        public HostPhysical ToHost(GuestPhysical guestPhysical, AccessKind kind, bool finalTranslation, GuestVirtual linear, out int pageShift,
            List<WalkStep>? trace)
        {
            pageShift = 12;
            ulong address = guestPhysical.Value;
            if (!map.IsRam(address))
            {
                lastWritable = false; // nothing to write there
                return new HostPhysical(Machine.Memory.PhysicalMemory.DeviceWindow | address);
            }
            ulong host = map.Touch(address, write: kind == AccessKind.Write); // a write breaks the page's sharing
            lastWritable = !map.pool.IsWriteProtected(host);
            return new HostPhysical(host);
        }
    }

    /// <summary>The bytes the guest sees in its page at <paramref name="guestPhysical"/>: its host frame's, or (no
    /// frame yet) its home's.</summary>
    internal Span<byte> PageContents(ulong guestPhysical)
    {
        ulong page = guestPhysical & ~0xFFFUL;
        return TryHostPhysical(page, out ulong host) ? pool.Contents(host) : HomeContents(page);
    }

    /// <summary>The 4 KiB of a guest page's home.</summary>
    private unsafe Span<byte> HomeContents(ulong guestPage) => new((void*)Home(guestPage), 0x1000);

    private byte[]? homeAway; // by guest frame: 1 when its home's memory was given back while a shared frame holds its bytes
    private long homesAway;

    /// <summary>Guest pages mapped to a shared frame whose home memory is given back to the host kernel now: the memory
    /// sharing frees in the host, beyond the pool's books.</summary>
    public long HomesReleased => homesAway;

    /// <summary>Gives guest frame <paramref name="frame"/>'s home memory back to the host kernel; its mapped (shared)
    /// frame holds its bytes.</summary>
    private void ReleaseHome(ulong frame)
    {
        homeAway ??= new byte[hostFrames.Length];
        if (homeAway[frame] != 0)
        {
            return;
        }
        guest.PageSource = this; // the VMM's accesses to guest RAM ask this map from now on
        MemoryCalls.Discard(Home(frame << FrameShift), 0x1000);
        homeAway[frame] = 1;
        homesAway++;
    }

    /// <summary>Guest frame <paramref name="frame"/>'s home holds its bytes again (or is to be discarded).</summary>
    private void HomeBack(ulong frame)
    {
        if (homeAway is not null && homeAway[frame] != 0)
        {
            homeAway[frame] = 0;
            homesAway--;
        }
    }

    private bool IsHomeAway(ulong frame) => homeAway is not null && homeAway[frame] != 0;

    bool IGuestPageSource.AnyReleased => homesAway > 0 || SwappedOutPages > 0 || RemoteAwaiting;

    bool IGuestPageSource.ReadReleased(ulong guestPhysical, Span<byte> destination)
    {
        ulong frame = guestPhysical >> FrameShift;
        if (frame >= (ulong)hostFrames.Length)
        {
            return false;
        }
        FetchIfRemote(frame); // its home holds it once it arrived
        if (swapSlots is not null && swapSlots[frame] != 0)
        {
            SwapIn(frame, byDevice: false); // its home holds it again
            return false;
        }
        if (!IsHomeAway(frame))
        {
            return false;
        }
        pool.Contents(hostFrames[frame]).Slice((int)(guestPhysical & 0xFFF), destination.Length).CopyTo(destination);
        return true;
    }

    void IGuestPageSource.BringHome(ulong guestPhysical, ulong length)
    {
        for (ulong page = guestPhysical & ~0xFFFUL; page < guestPhysical + length; page += 0x1000)
        {
            ulong frame = page >> FrameShift;
            if (frame >= (ulong)hostFrames.Length)
            {
                break;
            }
            FetchIfRemote(frame);
            if (swapSlots is not null && swapSlots[frame] != 0)
            {
                SwapIn(frame, byDevice: false);
            }
            else if (IsHomeAway(frame))
            {
                BreakSharing(frame, hostFrames[frame]); // the VMM may write it: the guest must see its own copy
            }
        }
    }

    /// <summary>A write to shared frame <paramref name="shared"/>: the guest frame gets its bytes back in its home,
    /// mapped in place of the shared frame, which loses one reference (freed, its memory returned, at none).</summary>
    private void BreakSharing(ulong frame, ulong shared)
    {
        nint home = Home(frame << FrameShift);
        pool.Contents(shared).CopyTo(HomeContents(frame << FrameShift));
        HomeBack(frame);
        hostFrames[frame] = pool.Adopt(home, 1, 1, this, frame);
        CopyOnWriteBreaks++;
        BackingChanged(frame);
        BackingInstalled?.Invoke(hostFrames[frame]);
        pool.RemoveMapping(shared, this, frame);
    }

    /// <summary>Guest frame <paramref name="frame"/>'s backing changed or lost write access: translations derived from
    /// the old one go (the nested entry with a nested-TLB shootdown; the shadow entries, with a TLB flush).</summary>
    private void BackingChanged(ulong frame)
    {
        nested?.Unmap(frame << FrameShift);
        if (shadow is not null)
        {
            shadow.BackingChanged(frame);
            FlushProcessors();
        }
    }

    /// <summary>The host memory of a guest page's home (a region's backing is contiguous, so a run of pages is too).</summary>
    private unsafe nint Home(ulong guestPage)
    {
        fixed (byte* p = guest.Home(new GuestPhysical(guestPage), 1))
        {
            return (nint)p;
        }
    }

    /// <summary>Gives back every host frame the map holds (the VM's homes keep their bytes) and the tables of the run
    /// attached to it.</summary>
    public void Dispose()
    {
        if (disposed)
        {
            return;
        }
        disposed = true;
        nested?.Dispose();
        shadow?.ReleaseTables();
        (nested, shadow) = (null, null);
        processors.Clear();
        SwapInAll(); // the VM's RAM must hold all its bytes again: loaders, snapshots and the next run read it
        for (ulong frame = 0; frame < (ulong)hostFrames.Length; frame++)
        {
            if (hostFrames[frame] != 0)
            {
                if (IsHomeAway(frame))
                {
                    pool.Contents(hostFrames[frame]).CopyTo(HomeContents(frame << FrameShift));
                    HomeBack(frame);
                }
                pool.RemoveMapping(hostFrames[frame], this, frame);
                hostFrames[frame] = 0;
            }
        }
        TouchedPages = 0;
        if (guest.PageSource == this)
        {
            guest.PageSource = null;
        }
    }
}

// Snapshots (issue 11): which guest pages have host frames, and which 2 MiB runs were given one large run (so that the
// restored nested table can map them with large entries again). The host frames themselves are the restoring VMM's:
// host-physical addresses mean nothing to another process.
public sealed partial class GuestPhysicalMap
{
    /// <summary>Writes the touched guest pages as (guest-physical address, large) pairs.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        // Pages in the host swap file are not listed: the RAM section, read through this map, holds their bytes, and the
        // restored VM gives them frames on their first touch.
        var touched = new List<(ulong Address, bool Large)>();
        for (ulong frame = 0; frame < (ulong)hostFrames.Length; frame++)
        {
            if (hostFrames[frame] == 0)
            {
                continue;
            }
            if (frame % LargeFrames == 0 && IsLargeRun(frame))
            {
                touched.Add((frame << FrameShift, true));
                frame += LargeFrames - 1;
                continue;
            }
            touched.Add((frame << FrameShift, false));
        }
        writer.WriteInt32(touched.Count);
        foreach (var (address, large) in touched)
        {
            writer.WriteUInt64(address);
            writer.WriteBoolean(large);
        }
    }

    /// <summary>Gives the saved pages host frames again (this map must be fresh).</summary>
    public void Restore(Persistence.SnapshotReader reader)
    {
        int count = reader.ReadInt32();
        for (int i = 0; i < count; i++)
        {
            ulong address = reader.ReadUInt64();
            bool large = reader.ReadBoolean();
            if ((address >> FrameShift) >= (ulong)hostFrames.Length || !IsRam(address))
            {
                throw reader.Invalid($"guest page 0x{address:x} is not RAM of this VM");
            }
            if (!large && IsAwaitedRemote(address))
            {
                continue; // post-copy: it gets its frame when it arrives and is touched
            }
            if (large ? !TouchLarge(address, out _) : TryHostPhysical(address, out _))
            {
                throw reader.Invalid($"guest page 0x{address:x} cannot be given its host frames again (listed twice, or not a free 2 MiB run)");
            }
            if (!large)
            {
                Touch(address);
            }
        }
    }

    // A 2 MiB run that TouchLarge gave one aligned run of host frames.
    private bool IsLargeRun(ulong firstFrame)
    {
        ulong host = hostFrames[firstFrame];
        if ((host & 0x1F_FFFF) != 0 || firstFrame + LargeFrames > (ulong)hostFrames.Length)
        {
            return false;
        }
        for (ulong i = 1; i < LargeFrames; i++)
        {
            if (hostFrames[firstFrame + i] != host + (i << FrameShift))
            {
                return false;
            }
        }
        return true;
    }
}

// Content-based page sharing (Memory/Sharing) and host swapping (Memory/Swapping): what the scanner and the swapper ask
// of a guest page, and the P2M's side of swapping a page out to the host swap file and back in on its next fault.
public sealed partial class GuestPhysicalMap
{
    private int[]? swapSlots; // by guest frame: 1 + its slot in the swap file, 0 = not swapped out
    private byte[]? referenced; // by guest frame: touched since the clock hand last passed (the LRU approximation)
    private Memory.Swapping.HostSwapFile? swapFile;

    /// <summary>Guest pages in the host swap file now.</summary>
    public long SwappedOutPages { get; private set; }

    /// <summary>Pages written to the host swap file so far.</summary>
    public long PagesSwappedOut { get; private set; }

    /// <summary>Pages read back from the host swap file so far.</summary>
    public long PagesSwappedIn { get; private set; }

    /// <summary>Swap-ins caused by a device's DMA read of the page (<see cref="DeviceRead"/>): the guest had the device
    /// read a page the host had swapped out, as when it writes the page to its own swap disk. This is the rule by which
    /// double paging is counted (Waldspurger, OSDI 2002, §3.1: the host pages a page out, then the guest picks it to
    /// page out itself, so the host must read it back only for the guest to write it to its virtual disk).</summary>
    public long DeviceSwapIns { get; private set; }

    /// <summary>Whether a host swap file backs this map (<see cref="AttachSwap"/>).</summary>
    public bool HasSwap => swapFile is not null;

    /// <summary>Lets the host page this map's guest pages out to <paramref name="file"/>, under nested or shadow paging
    /// (a swapped-out page loses its nested entry or its shadow leaves, and its next access faults into the VMM, which
    /// reads it back in; shadow paging's software walks read the guest's tables through this map, so a swapped-out page
    /// table comes back the same way).</summary>
    /// <exception cref="InvalidOperationException">A swap file is attached already.</exception>
    internal void AttachSwap(Memory.Swapping.HostSwapFile file)
    {
        if (swapFile is not null)
        {
            throw new InvalidOperationException("the map has a host swap file already");
        }
        swapFile = file;
        swapSlots = new int[hostFrames.Length];
        referenced = new byte[hostFrames.Length];
    }

    /// <summary>Whether the page at <paramref name="address"/> is in the host swap file now.</summary>
    public bool IsSwappedOut(GuestPhysical address) =>
        swapSlots is not null && (address.Value >> FrameShift) < (ulong)swapSlots.Length && swapSlots[address.Value >> FrameShift] != 0;

    /// <summary>Whether guest frame <paramref name="guestFrame"/> has a private host frame backed by its home (adopted,
    /// one mapping, not write-protected): the pages a sharing scanner may merge and a swapper may page out.</summary>
    internal bool IsPrivate(ulong guestFrame, out ulong host)
    {
        host = guestFrame < (ulong)hostFrames.Length ? hostFrames[guestFrame] : 0;
        return host != 0 && !pool.IsWriteProtected(host) && pool.KindOf(host) == Memory.HostFrameKind.Adopted && pool.ReferenceCount(host) == 1;
    }

    /// <summary>The clock's reference bit of <paramref name="guestFrame"/>: true when the guest touched it since the
    /// last call, which then clears the bit and drops the page's nested entry (the host frame stays), so that the
    /// guest's next access faults into the VMM and sets the bit again. The simulated EPT has no accessed bits; this is
    /// the sampling by invalidation ESX uses to estimate which pages are active (Waldspurger, OSDI 2002, §5.3).</summary>
    internal bool TestAndClearReferenced(ulong guestFrame)
    {
        if (referenced is null || referenced[guestFrame] == 0)
        {
            return false;
        }
        referenced[guestFrame] = 0;
        BackingChanged(guestFrame); // its nested entry or shadow leaves: the next access faults and sets the bit again
        return true;
    }

    /// <summary>Pages guest frame <paramref name="guestFrame"/> out: its bytes are written to the swap file, its host
    /// frame goes, and the memory of its home is given back to the host kernel (<c>madvise(MADV_DONTNEED)</c>); the
    /// guest's next access faults and <see cref="Touch(ulong, bool)"/> reads it back. False (nothing changed) when the
    /// page is not private (<see cref="IsPrivate"/>).</summary>
    /// <exception cref="Memory.Swapping.HostSwapException">The swap file is full or cannot be written; the page stays
    /// resident and unchanged.</exception>
    internal bool SwapOut(ulong guestFrame)
    {
        if (swapFile is null || swapSlots is null)
        {
            throw new InvalidOperationException("no host swap file is attached to the map");
        }
        if (!IsPrivate(guestFrame, out ulong host))
        {
            return false;
        }
        // The write comes first: if the file is full, nothing has changed.
        int slot = swapFile.Write(HomeContents(guestFrame << FrameShift));
        guest.PageSource = this; // the VMM's accesses to guest RAM ask this map from now on
        swapSlots[guestFrame] = slot + 1;
        hostFrames[guestFrame] = 0;
        TouchedPages--;
        BackingChanged(guestFrame);
        pool.RemoveMapping(host, this, guestFrame, discardBacking: true);
        SwappedOutPages++;
        PagesSwappedOut++;
        return true;
    }

    /// <summary>A device is about to read guest memory at <paramref name="address"/> (<see cref="Devices.GuestDma"/>):
    /// pages of it in the host swap file are read back into the VM's RAM first, each counted in
    /// <see cref="DeviceSwapIns"/>.</summary>
    internal void DeviceRead(ulong address, int length)
    {
        FetchRangeIfRemote(address, length); // post-copy: a device reads a page still at the source
        if (swapSlots is null || length <= 0)
        {
            return;
        }
        for (ulong page = address & ~0xFFFUL; page < address + (ulong)length; page += 0x1000)
        {
            if ((page >> FrameShift) < (ulong)swapSlots.Length && swapSlots[page >> FrameShift] != 0)
            {
                SwapIn(page >> FrameShift, byDevice: true);
            }
        }
    }

    /// <summary>Reads every swapped-out page back into the VM's RAM (they get host frames again on their next access).</summary>
    public void SwapInAll()
    {
        if (swapSlots is null)
        {
            return;
        }
        for (ulong frame = 0; frame < (ulong)swapSlots.Length && SwappedOutPages > 0; frame++)
        {
            if (swapSlots[frame] != 0)
            {
                SwapIn(frame, byDevice: false);
            }
        }
    }

    private void SwapIn(ulong guestFrame, bool byDevice)
    {
        int slot = swapSlots![guestFrame] - 1;
        swapFile!.Read(slot, HomeContents(guestFrame << FrameShift));
        swapFile.Free(slot);
        swapSlots[guestFrame] = 0;
        SwappedOutPages--;
        PagesSwappedIn++;
        if (byDevice)
        {
            DeviceSwapIns++;
        }
    }
}
