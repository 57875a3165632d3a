namespace Nestor.Hypervisor.Boot;

/// <summary>Finds room in guest RAM for what a loader adds beside the kernel (Multiboot modules, the information
/// structure, its strings and memory map, the boot GDT): the RAM ranges of the firmware map below 4 GiB (a 32-bit
/// kernel with paging off reaches no further) less everything already placed, handed out from the top down, as
/// GRUB prefers, so that a kernel which allocates upwards from its end meets them last.</summary>
public sealed class BootPlacement
{
    private readonly List<(ulong Start, ulong End)> free = [];

    /// <summary>Starts with the RAM ranges of <paramref name="map"/> below 4 GiB, page 0 excluded (a null pointer
    /// must never point at boot data).</summary>
    public BootPlacement(IReadOnlyList<FirmwareMemoryRange> map)
    {
        foreach (var range in map)
        {
            ulong start = Math.Max(range.Start, 0x1000), end = Math.Min(range.End, 1UL << 32);
            if (range.Type == FirmwareMemoryRange.Ram && start < end)
            {
                free.Add((start, end));
            }
        }
    }

    /// <summary>Removes [<paramref name="start"/>, <paramref name="end"/>) from the free ranges (the kernel's
    /// segments).</summary>
    public void Occupy(ulong start, ulong end)
    {
        for (int i = free.Count - 1; i >= 0; i--)
        {
            var (s, e) = free[i];
            if (end <= s || start >= e)
            {
                continue;
            }
            free.RemoveAt(i);
            if (end < e)
            {
                free.Insert(i, (end, e));
            }
            if (start > s)
            {
                free.Insert(i, (s, start));
            }
        }
    }

    /// <summary>The highest free <paramref name="length"/> bytes aligned to <paramref name="alignment"/> (a power
    /// of two), now occupied, or null when there is no such room.</summary>
    public ulong? Allocate(ulong length, ulong alignment)
    {
        length = Math.Max(length, 1);
        for (int i = free.Count - 1; i >= 0; i--)
        {
            var (s, e) = free[i];
            if (e - s < length)
            {
                continue;
            }
            ulong start = (e - length) & ~(alignment - 1);
            if (start >= s)
            {
                Occupy(start, start + length);
                return start;
            }
        }
        return null;
    }
}
