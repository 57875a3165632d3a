using Nestor.Host;
using Nestor.Hypervisor.Errors;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Memory.Kvm;

/// <summary>What the VMM tells the host kernel about a KVM VM's RAM, range by range. Guest RAM is anonymous memory of
/// this process (<see cref="GuestMemory"/>, one mapping per RAM region) that KVM maps into the guest through its
/// memory slots, and KVM's MMU notifier follows every change the host kernel makes to it (an unmapped or merged page
/// loses its EPT or shadow entry, and the guest's next access faults it back in), so advice on the mapping is advice on
/// guest memory: <c>MADV_MERGEABLE</c> offers it to KSM (<see cref="SamePageMerging"/>), <c>MADV_DONTNEED</c> gives
/// the pages of a balloon-inflated range back to the host (virtio 1.2 §5.5.6.1: the guest must not rely on the content
/// of a page it gave to the balloon; it reads zeros when it takes it back).</summary>
public static class KvmMemoryAdvice
{
    /// <summary>Offers all of <paramref name="memory"/> to KSM (<paramref name="mergeable"/>) or takes it back.</summary>
    /// <exception cref="HostUnsupportedException">The kernel refused (no CONFIG_KSM: EINVAL).</exception>
    public static void SetMergeable(GuestMemory memory, bool mergeable)
    {
        foreach (var (region, backing) in memory.Regions)
        {
            try
            {
                MemoryCalls.SetMergeable(backing.Address, backing.Length, mergeable);
            }
            catch (HostCallException e)
            {
                throw new HostUnsupportedException($"guest RAM at {region.Start} cannot be offered to KSM: {e.Message}",
                    "Use a host kernel with KSM (CONFIG_KSM), or run without same-page merging", e);
            }
        }
    }

    /// <summary>Gives the <paramref name="pages"/> 4 KiB pages from <paramref name="start"/> back to the host with
    /// <c>madvise(MADV_DONTNEED)</c>, and returns how many of them were resident just before (the bytes the host got
    /// back are that times 4 KiB). The range must be RAM of one region.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The range is not RAM of one region, or not page-aligned.</exception>
    public static long Release(GuestMemory memory, GuestPhysical start, long pages)
    {
        ulong length = (ulong)pages * MemoryCalls.PageSize;
        if (pages <= 0 || (start.Value & (MemoryCalls.PageSize - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"{start}, {pages} pages is not a range of whole pages");
        }
        foreach (var (region, backing) in memory.Regions)
        {
            if (region.Contains(start, length))
            {
                ulong offset = start.Value - region.Start.Value;
                long resident = (long)(MemoryCalls.ResidentPages(backing.Address + (nint)offset, length));
                backing.Discard(offset, length);
                return resident;
            }
        }
        throw new ArgumentOutOfRangeException(nameof(start), $"{start}+0x{length:x} is not RAM of a single region");
    }
}
