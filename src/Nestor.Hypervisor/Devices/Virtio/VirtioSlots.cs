namespace Nestor.Hypervisor.Devices.Virtio;

/// <summary>Where virtio-mmio devices sit on the platform (docs/devices.md, QEMU microvm's layout): slot <i>n</i>
/// (0–7) at <see cref="FirstBase"/> + <i>n</i> × <see cref="SlotSize"/>, its interrupt on GSI <see cref="FirstGsi"/> +
/// <i>n</i>, level-triggered. virtio-blk disks take the slots from 0 in the order given, a virtio-console the next
/// free one.</summary>
public static class VirtioSlots
{
    /// <summary>Slot 0's register block.</summary>
    public const ulong FirstBase = 0xFEB0_0000;

    /// <summary>Bytes between slots, and each slot's length.</summary>
    public const ulong SlotSize = 0x200;

    /// <summary>How many slots the platform has.</summary>
    public const int Count = 8;

    /// <summary>Slot 0's interrupt line.</summary>
    public const int FirstGsi = 16;

    /// <summary>Slot <paramref name="slot"/>'s register block.</summary>
    public static ulong BaseOf(int slot) => FirstBase + (ulong)slot * SlotSize;

    /// <summary>Puts <paramref name="device"/> in slot <paramref name="slot"/> of <paramref name="vm"/>: its registers
    /// on the bus, its line, its state in the VM's snapshots.</summary>
    /// <exception cref="Errors.BadInputException">The slot is past the last one.</exception>
    public static VirtioMmioTransport Attach(Vm vm, IVirtioDevice device, int slot)
    {
        if ((uint)slot >= Count)
        {
            throw new Errors.BadInputException($"{device.Name}: the platform has {Count} virtio-mmio slots and all are taken",
                $"Give at most {Count} virtio devices (--disk ...,if=virtio and --virtio-console together)");
        }
        var transport = new VirtioMmioTransport(device, vm.Dma, vm.Memory, vm.Interrupts[FirstGsi + slot], BaseOf(slot), slot);
        vm.Bus.Claim(transport, BaseOf(slot), SlotSize);
        vm.AttachDevice(transport);
        return transport;
    }

    /// <summary>The virtio devices of <paramref name="vm"/>, in slot order.</summary>
    public static IEnumerable<VirtioMmioTransport> Of(Vm vm) => vm.AttachedDevices.OfType<VirtioMmioTransport>();
}
