using Nestor.Kvm;
using Nestor.Machine.Memory;

namespace Nestor.Hypervisor.Memory;

/// <summary>The host machine's physical memory when VMs run on the software machine under a hypervisor technique:
/// a host-physical address space whose 4 KiB frames the VMM hands out, either to back a VM's guest-physical pages
/// (the frame then shows that guest page's memory) or for its own tables (nested and shadow page tables, zeroed
/// memory of the pool's own). Guest-physical and host-physical addresses therefore differ, as on real hardware, and
/// several VMs can later draw on one pool. Frames are handed out in order and not returned yet.</summary>
public sealed class HostFramePool : IDisposable
{
    private const ulong FrameSize = 0x1000;
    private readonly HostMemory tableMemory;
    private readonly ulong tableFrames;
    private ulong nextTableFrame;
    private readonly Stack<ulong> freeTables = new();
    private ulong nextFrame = 1; // host frame 0 is never handed out, so that 0 can mean "none"

    /// <param name="bytes">Size of the host-physical address space.</param>
    /// <param name="tableBytes">How much of the pool's own memory the VMM may use for its tables.</param>
    public HostFramePool(ulong bytes, ulong tableBytes)
    {
        Memory = new PhysicalMemory(bytes);
        tableFrames = Math.Max(1, tableBytes / FrameSize);
        tableMemory = HostMemory.MapAnonymous(tableFrames * FrameSize);
    }

    /// <summary>The host-physical address space, as the CPU model sees it.</summary>
    public PhysicalMemory Memory { get; }

    /// <summary>Frames backing guest pages.</summary>
    public long GuestFrames { get; private set; }

    /// <summary>Frames holding the VMM's own tables.</summary>
    public long TableFrames { get; private set; }

    /// <summary>A zeroed frame of the pool's own memory for a VMM table; its host-physical address.</summary>
    public ulong AllocateTable()
    {
        if (freeTables.TryPop(out ulong recycled))
        {
            TableFrames++;
            return recycled;
        }
        if (nextTableFrame == tableFrames)
        {
            throw new InvalidOperationException(
                $"the VMM's table memory ({tableFrames * FrameSize / 1024} KiB) is used up: nested or shadow page tables need more");
        }
        ulong host = NextFrames(1, 1);
        Memory.Map(host, tableMemory.Address + (nint)(nextTableFrame * FrameSize));
        nextTableFrame++;
        TableFrames++;
        return host;
    }

    /// <summary>Table frames still free (never used, or given back).</summary>
    public long FreeTableFrames => (long)(tableFrames - nextTableFrame) + freeTables.Count;

    /// <summary>Gives back a table frame from <see cref="AllocateTable"/>; it is zeroed for its next use.</summary>
    public unsafe void FreeTable(ulong hostPhysical)
    {
        new Span<byte>(Memory.Pointer(hostPhysical, (int)FrameSize), (int)FrameSize).Clear();
        freeTables.Push(hostPhysical);
        TableFrames--;
    }

    /// <summary>Hands out <paramref name="count"/> consecutive host frames aligned to <paramref name="alignment"/>
    /// frames, backed by the <paramref name="count"/> × 4 KiB of memory at <paramref name="backing"/> (a guest's
    /// RAM); the first frame's host-physical address.</summary>
    public ulong Adopt(nint backing, int count, int alignment)
    {
        ulong host = NextFrames((ulong)count, (ulong)alignment);
        for (int i = 0; i < count; i++)
        {
            Memory.Map(host + (ulong)i * FrameSize, backing + i * (nint)FrameSize);
        }
        GuestFrames += count;
        return host;
    }

    private ulong NextFrames(ulong count, ulong alignment)
    {
        ulong first = (nextFrame + alignment - 1) / alignment * alignment;
        if ((first + count) * FrameSize > Memory.Limit)
        {
            throw new InvalidOperationException(
                $"the host's physical memory ({Memory.Limit >> 20} MiB) is used up: the VMM cannot back more guest memory");
        }
        nextFrame = first + count;
        return first * FrameSize;
    }

    public void Dispose() => tableMemory.Dispose();
}
