namespace Nestor.Hypervisor.Devices.Assigned;

/// <summary>A memory-mapped device whose registers the VMM maps into the guest instead of trapping them: a device
/// assigned to the VM. Under a VMM on the software machine, nested and shadow tables map its pages into the machine's
/// assigned window (<see cref="Machine.Memory.PhysicalMemory.AssignedWindow"/>), so the guest's accesses reach it without
/// a VM exit (as a VFIO device's BAR, mmap'd into the VMM and mapped into the guest by EPT, is reached by its guest
/// driver directly).</summary>
public interface IDirectMmioDevice : IMmioDevice
{
}

/// <summary>Where a VMM maps a guest-physical page that is not RAM.</summary>
public static class DeviceMapping
{
    /// <summary>The host-physical address a nested or shadow entry gives the guest page <paramref name="guestPage"/>,
    /// which is not RAM: the device window (bit 51), and the assigned window too (bit 50) when an assigned device's
    /// registers are there. Bit 51 stays set for both, so that what checks for a device page (snapshots of the nested
    /// table) treats both alike.</summary>
    public static ulong HostPhysical(DeviceBus? devices, ulong guestPage)
    {
        ulong window = Machine.Memory.PhysicalMemory.DeviceWindow | guestPage;
        return devices?.MemoryDevice(guestPage) is IDirectMmioDevice ? window | Machine.Memory.PhysicalMemory.AssignedWindow : window;
    }
}
