using Nestor.Host;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Memory;

namespace Nestor.Hypervisor.Memory;

/// <summary>What a host frame holds.</summary>
public enum HostFrameKind : byte
{
    /// <summary>Not handed out (never, or freed).</summary>
    Free,
    /// <summary>Backed by a page of a VM's own RAM (<see cref="GuestMemory"/>): the guest page's home.</summary>
    Adopted,
    /// <summary>Backed by the pool's own memory: a copy the VMM made (a page shared copy-on-write), or a frame taken
    /// with <see cref="HostFramePool.Allocate"/>.</summary>
    Owned,
    /// <summary>One of the VMM's own tables (nested or shadow page tables), from the pool's own memory.</summary>
    Table,
}

/// <summary>One guest frame mapping a host frame: an entry of the reverse map.</summary>
/// <param name="Map">The P2M of the VM whose guest frame it is.</param>
/// <param name="GuestFrame">The guest frame number (guest-physical address >> 12).</param>
public readonly record struct GuestFrameMapping(GuestPhysicalMap Map, ulong GuestFrame);

/// <summary>The host machine's physical memory when VMs run on the software machine under a hypervisor technique, one
/// pool for every VM of a <see cref="Host"/>: a host-physical address space whose 4 KiB frames the VMM hands out,
/// either to back a VM's guest-physical pages or for its own tables. Guest-physical and host-physical addresses
/// therefore differ, as on real hardware.
/// <list type="bullet">
/// <item>Every frame has a reference count; a frame whose count drops to zero is freed: its number can be handed out
/// again and, when the pool's own memory backed it, that memory is given back to the host kernel
/// (<c>madvise(MADV_DONTNEED)</c>), as a VMM returns reclaimed pages (Waldspurger, OSDI 2002, §3).</item>
/// <item>A reverse map from each host frame to the (VM, guest frame) pairs mapping it, Linux's rmap for guest memory:
/// what sharing, reclamation and swapping need to find every mapping of a frame.</item>
/// <item>A frame can be write-protected: its P2M then maps it read-only in nested and shadow tables, so a guest's
/// write faults into the VMM (copy-on-write).</item>
/// </list>
/// Frames are 4 KiB; runs of frames aligned to 2 MiB can be adopted for large nested pages. Not thread-safe: the
/// host runs its VMs' vCPUs one at a time.</summary>
public sealed class HostFramePool : IDisposable
{
    private const int FrameShift = 12;
    private const ulong FrameSize = 1UL << FrameShift;

    // The pool's own memory: one page for every host frame number, reserved but not committed (MAP_NORESERVE), so a
    // frame number costs host memory only while an owned or table frame is in use.
    private readonly HostMemory store;
    private readonly ulong frameCount;
    private readonly ulong tableBudget;
    private readonly int[] references;
    private readonly HostFrameKind[] kinds;
    private readonly bool[] writeProtected;
    private readonly GuestFrameMapping[] firstMapping; // the reverse map: the first mapper inline…
    private readonly Dictionary<ulong, List<GuestFrameMapping>> moreMappings = []; // …the others of shared frames here
    private readonly Stack<ulong> freeFrames = new();
    private readonly Stack<ulong> freeTables = new();
    // The VMs of one host run on several host threads at once (Hosting/VirtualMachineHost): every change to the
    // pool's books is made under this lock. Reads of one frame's entries by the VM that maps it need none.
    private readonly Lock gate = new();
    private ulong nextFrame = 1; // host frame 0 is never handed out, so that 0 can mean "none"

    /// <param name="bytes">Size of the host-physical address space.</param>
    /// <param name="tableBytes">How much of it the VMM may use for its tables.</param>
    public HostFramePool(ulong bytes, ulong tableBytes)
    {
        frameCount = (bytes + FrameSize - 1) >> FrameShift;
        Memory = new PhysicalMemory(frameCount << FrameShift);
        tableBudget = Math.Max(1, tableBytes / FrameSize);
        store = HostMemory.MapAnonymous(frameCount << FrameShift);
        references = new int[frameCount];
        kinds = new HostFrameKind[frameCount];
        writeProtected = new bool[frameCount];
        firstMapping = new GuestFrameMapping[frameCount];
    }

    /// <summary>The host-physical address space, as the CPU model sees it.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>Frames backing guest pages now (adopted or owned, with at least one reference).</summary>
    public long GuestFrames { get; private set; }

    /// <summary>Frames holding the VMM's own tables.</summary>
    public long TableFrames { get; private set; }

    /// <summary>Table frames still free within the table budget.</summary>
    public long FreeTableFrames => (long)tableBudget - TableFrames;

    /// <summary>Frames of the pool's own memory backing guest pages (copies, allocated frames).</summary>
    public long OwnedFrames { get; private set; }

    /// <summary>Frames freed so far (reference count down to zero).</summary>
    public long FramesFreed { get; private set; }

    /// <summary>Frames whose memory was given back to the host kernel.</summary>
    public long FramesDiscarded { get; private set; }

    /// <summary>Frame numbers never handed out or freed and not yet reused.</summary>
    public long FreeFrames => (long)(frameCount - nextFrame) + freeFrames.Count;

    /// <summary>A zeroed frame of the pool's own memory for a VMM table; its host-physical address.</summary>
    public ulong AllocateTable()
    {
        lock (gate)
        {
            if (freeTables.TryPop(out ulong recycled))
            {
                TableFrames++;
                return recycled;
            }
            if (TableFrames >= (long)tableBudget)
            {
                throw new InvalidOperationException(
                    $"the VMM's table memory ({tableBudget * FrameSize / 1024} KiB) is used up: nested or shadow page tables need more");
            }
            ulong frame = NextFrames(1, 1);
            kinds[frame] = HostFrameKind.Table;
            Memory.Map(frame << FrameShift, StoreAddress(frame));
            TableFrames++;
            return frame << FrameShift;
        }
    }

    /// <summary>Gives back a table frame from <see cref="AllocateTable"/>; it is zeroed for its next use.</summary>
    public void FreeTable(ulong hostPhysical)
    {
        lock (gate)
        {
            Contents(hostPhysical).Clear();
            freeTables.Push(hostPhysical & ~(FrameSize - 1));
            TableFrames--;
        }
    }

    /// <summary>A zeroed frame of the pool's own memory with one reference (the caller's) and no mapping; its
    /// host-physical address. <see cref="Release"/> gives it back.</summary>
    public ulong Allocate()
    {
        lock (gate)
        {
            ulong frame = NextFrames(1, 1);
            kinds[frame] = HostFrameKind.Owned;
            references[frame] = 1;
            Memory.Map(frame << FrameShift, StoreAddress(frame));
            OwnedFrames++;
            GuestFrames++;
            return frame << FrameShift;
        }
    }

    /// <summary>Hands out <paramref name="count"/> consecutive host frames aligned to <paramref name="alignment"/>
    /// frames, backed by the <paramref name="count"/> × 4 KiB of guest RAM at <paramref name="backing"/>, each mapped by
    /// one guest frame of <paramref name="map"/> from <paramref name="firstGuestFrame"/> on (one reference each); the
    /// first frame's host-physical address.</summary>
    public ulong Adopt(nint backing, int count, int alignment, GuestPhysicalMap map, ulong firstGuestFrame)
    {
        lock (gate)
        {
            ulong first = NextFrames((ulong)count, (ulong)alignment);
            for (int i = 0; i < count; i++)
            {
                ulong frame = first + (ulong)i;
                Memory.Map(frame << FrameShift, backing + i * (nint)FrameSize);
                kinds[frame] = HostFrameKind.Adopted;
                references[frame] = 1;
                firstMapping[frame] = new GuestFrameMapping(map, firstGuestFrame + (ulong)i);
            }
            GuestFrames += count;
            return first << FrameShift;
        }
    }

    /// <summary>What the frame at <paramref name="hostPhysical"/> holds.</summary>
    public HostFrameKind KindOf(ulong hostPhysical) => kinds[Index(hostPhysical)];

    /// <summary>References to the frame at <paramref name="hostPhysical"/> (0 when free).</summary>
    public int ReferenceCount(ulong hostPhysical) => references[Index(hostPhysical)];

    /// <summary>Takes one more reference to a frame in use.</summary>
    public void AddReference(ulong hostPhysical)
    {
        lock (gate)
        {
            references[InUse(hostPhysical)]++;
        }
    }

    /// <summary>Drops one reference; at zero the frame is freed and, when the pool's own memory backed it, that memory
    /// goes back to the host kernel. Memory of a VM's RAM behind an adopted frame stays the VM's, and is given back
    /// too only when <paramref name="discardBacking"/>.</summary>
    /// <returns>Whether the frame was freed.</returns>
    public bool Release(ulong hostPhysical, bool discardBacking = false)
    {
        lock (gate)
        {
            ulong frame = InUse(hostPhysical);
            if (--references[frame] > 0)
            {
                return false;
            }
            var kind = kinds[frame];
            if (kind == HostFrameKind.Owned || discardBacking)
            {
                DiscardFrame(frame);
            }
            if (kind == HostFrameKind.Owned)
            {
                OwnedFrames--;
            }
            Memory.Unmap(frame << FrameShift);
            kinds[frame] = HostFrameKind.Free;
            writeProtected[frame] = false;
            firstMapping[frame] = default;
            moreMappings.Remove(frame);
            freeFrames.Push(frame);
            GuestFrames--;
            FramesFreed++;
            return true;
        }
    }

    /// <summary>Records that guest frame <paramref name="guestFrame"/> of <paramref name="map"/> maps the frame at
    /// <paramref name="hostPhysical"/>, taking a reference for it.</summary>
    public void AddMapping(ulong hostPhysical, GuestPhysicalMap map, ulong guestFrame)
    {
        lock (gate)
        {
            ulong frame = InUse(hostPhysical);
            references[frame]++;
            var mapping = new GuestFrameMapping(map, guestFrame);
            if (firstMapping[frame].Map is null)
            {
                firstMapping[frame] = mapping;
                return;
            }
            if (!moreMappings.TryGetValue(frame, out var list))
            {
                moreMappings[frame] = list = [];
            }
            list.Add(mapping);
        }
    }

    /// <summary>Guest frame <paramref name="guestFrame"/> of <paramref name="map"/> no longer maps the frame: its
    /// reference goes (<see cref="Release"/>).</summary>
    /// <returns>Whether the frame was freed.</returns>
    public bool RemoveMapping(ulong hostPhysical, GuestPhysicalMap map, ulong guestFrame, bool discardBacking = false)
    {
        lock (gate)
        {
            ulong frame = InUse(hostPhysical);
            var mapping = new GuestFrameMapping(map, guestFrame);
            moreMappings.TryGetValue(frame, out var list);
            if (firstMapping[frame] == mapping)
            {
                if (list is { Count: > 0 })
                {
                    firstMapping[frame] = list[^1];
                    list.RemoveAt(list.Count - 1);
                }
                else
                {
                    firstMapping[frame] = default;
                }
            }
            else if (list is null || !list.Remove(mapping))
            {
                throw new InvalidOperationException($"guest frame 0x{guestFrame:x} does not map host frame 0x{hostPhysical:x}");
            }
            return Release(hostPhysical, discardBacking);
        }
    }

    /// <summary>The reverse map: every (VM, guest frame) pair mapping the frame at <paramref name="hostPhysical"/>.</summary>
    public IReadOnlyList<GuestFrameMapping> MappingsOf(ulong hostPhysical)
    {
        ulong frame = Index(hostPhysical);
        if (firstMapping[frame].Map is null)
        {
            return [];
        }
        return moreMappings.TryGetValue(frame, out var list) ? [firstMapping[frame], .. list] : [firstMapping[frame]];
    }

    /// <summary>Write-protects the frame (or lifts it): its P2Ms map it read-only, so guest writes fault into the VMM.</summary>
    public void SetWriteProtected(ulong hostPhysical, bool value) => writeProtected[InUse(hostPhysical)] = value;

    /// <summary>Whether the frame at <paramref name="hostPhysical"/> is write-protected.</summary>
    public bool IsWriteProtected(ulong hostPhysical) => writeProtected[Index(hostPhysical)];

    /// <summary>The 4 KiB of a frame in use.</summary>
    public unsafe Span<byte> Contents(ulong hostPhysical)
    {
        byte* p = Memory.Pointer(hostPhysical & ~(FrameSize - 1), (int)FrameSize);
        return p == null
            ? throw new ArgumentOutOfRangeException(nameof(hostPhysical), $"host frame 0x{hostPhysical:x} is not in use")
            : new Span<byte>(p, (int)FrameSize);
    }

    /// <summary>Whether the pool's own memory behind frame number <paramref name="hostPhysical"/> >> 12 is resident in the
    /// host now (<c>mincore</c>): true for an owned or table frame that was written, false once freed.</summary>
    public bool IsStoreResident(ulong hostPhysical) => store.IsResident(Index(hostPhysical) << FrameShift);

    /// <summary>Bytes of the pool's own memory resident in the host now (<c>mincore</c> over the whole store): owned
    /// and table frames that were written and not yet given back.</summary>
    public ulong StoreResidentBytes() => store.ResidentBytes();

    private void DiscardFrame(ulong frame)
    {
        unsafe
        {
            byte* p = Memory.Pointer(frame << FrameShift, (int)FrameSize);
            if (kinds[frame] == HostFrameKind.Owned)
            {
                store.Discard(frame << FrameShift, FrameSize);
            }
            else if (p != null)
            {
                MemoryCalls.Discard((nint)p, FrameSize);
            }
        }
        FramesDiscarded++;
    }

    private nint StoreAddress(ulong frame) => store.Address + (nint)(frame << FrameShift);

    private ulong Index(ulong hostPhysical)
    {
        ulong frame = hostPhysical >> FrameShift;
        return frame < frameCount ? frame : throw new ArgumentOutOfRangeException(nameof(hostPhysical),
            $"host-physical 0x{hostPhysical:x} is beyond the host's {frameCount << FrameShift >> 20} MiB");
    }

    private ulong InUse(ulong hostPhysical)
    {
        ulong frame = Index(hostPhysical);
        return references[frame] > 0 ? frame : throw new InvalidOperationException($"host frame 0x{hostPhysical:x} is free");
    }

    private ulong NextFrames(ulong count, ulong alignment)
    {
        if (count == 1 && freeFrames.TryPop(out ulong recycled))
        {
            return recycled;
        }
        ulong first = (nextFrame + alignment - 1) / alignment * alignment;
        if (first + count > frameCount)
        {
            throw new InvalidOperationException(
                $"the host's physical memory ({frameCount << FrameShift >> 20} MiB) is used up: the VMM cannot back more guest memory");
        }
        nextFrame = first + count;
        return first;
    }

    public void Dispose() => store.Dispose();
}
