using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Devices;

/// <summary>Routes the guest's port I/O and MMIO accesses to the devices that claim them, the trap-and-emulate half
/// of every VM exit for I/O. Accesses nobody claims read as all ones and are otherwise ignored, as on a PC bus
/// with nothing behind the address, and are reported once per address by <see cref="UnclaimedAccesses"/>.</summary>
public sealed class DeviceBus
{
    private readonly List<(ushort First, ushort Last, IPortDevice Device)> ports = [];
    private readonly List<(ulong First, ulong Last, IMmioDevice Device)> mmio = [];
    private readonly List<(AccessSpace Space, ulong First, ulong Last)> probeWindows = [];

    public DeviceBus(TextWriter diagnostics)
    {
        UnclaimedAccesses = new UnclaimedAccessLog(diagnostics);
    }

    /// <summary>Accesses to addresses no device claims.</summary>
    public UnclaimedAccessLog UnclaimedAccesses { get; }

    /// <summary>Gives the current guest RIP for diagnostics; set by the engine running the VM.</summary>
    public Func<ulong>? InstructionPointer { get; set; }

    /// <summary>Claims ports [<paramref name="first"/>, <paramref name="first"/> + <paramref name="count"/>).</summary>
    public void Claim(IPortDevice device, ushort first, int count)
    {
        ushort last = (ushort)(first + count - 1);
        foreach (var (f, l, d) in ports)
        {
            if (first <= l && f <= last)
            {
                throw new InvalidOperationException($"{device.Name} ports 0x{first:x}-0x{last:x} overlap {d.Name}");
            }
        }
        ports.Add((first, last, device));
    }

    /// <summary>Claims guest-physical addresses [<paramref name="first"/>, +<paramref name="length"/>).</summary>
    public void Claim(IMmioDevice device, ulong first, ulong length)
    {
        ulong last = first + length - 1;
        foreach (var (f, l, d) in mmio)
        {
            if (first <= l && f <= last)
            {
                throw new InvalidOperationException($"{device.Name} MMIO 0x{first:x}-0x{last:x} overlaps {d.Name}");
            }
        }
        mmio.Add((first, last, device));
    }

    /// <summary>Declares [<paramref name="first"/>, +<paramref name="length"/>) a place of the platform where guests
    /// probe for a device (docs/devices.md, "The platform's map": the ATA channel, the virtio-mmio slots, the assigned
    /// controllers' windows). Where no device claims an address there, it still reads as an open bus (all ones: an
    /// ATA status of 0xFF, a virtio magic or an NDMA ID that does not match) and ignores writes, but without a
    /// diagnostic: probing an empty slot is what a PC's drivers do, not the stray access the log is for. Devices
    /// claimed later take precedence.</summary>
    public void AddProbeWindow(AccessSpace space, ulong first, ulong length) => probeWindows.Add((space, first, first + length - 1));

    /// <summary>Accesses to probe windows that no device claims (see <see cref="AddProbeWindow"/>).</summary>
    public long ProbeAccesses { get; private set; }

    private void Unclaimed(AccessSpace space, ulong address, int size, bool isWrite, ulong value)
    {
        for (int i = 0; i < probeWindows.Count; i++)
        {
            var (s, first, last) = probeWindows[i];
            if (s == space && address >= first && address <= last)
            {
                ProbeAccesses++;
                return;
            }
        }
        UnclaimedAccesses.Record(space, address, size, isWrite, value, InstructionPointer);
    }

    /// <summary>The device claiming <paramref name="port"/>, or null.</summary>
    public IPortDevice? PortDevice(ushort port)
    {
        // A handful of devices: a linear scan beats any table and allocates nothing.
        for (int i = 0; i < ports.Count; i++)
        {
            var (first, last, device) = ports[i];
            if (port >= first && port <= last)
            {
                return device;
            }
        }
        return null;
    }

    public uint ReadPort(ushort port, int size)
    {
        var device = PortDevice(port);
        if (device is null)
        {
            Unclaimed(AccessSpace.Port, port, size, isWrite: false, 0);
            return Mask(size);
        }
        return device.Read(port, size) & Mask(size);
    }

    public void WritePort(ushort port, int size, uint value)
    {
        var device = PortDevice(port);
        if (device is null)
        {
            Unclaimed(AccessSpace.Port, port, size, isWrite: true, value);
            return;
        }
        device.Write(port, size, value & Mask(size));
    }

    public ulong ReadMemory(ulong address, int size)
    {
        var device = MmioDevice(address);
        if (device is null)
        {
            Unclaimed(AccessSpace.Memory, address, size, isWrite: false, 0);
            return size >= 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
        }
        return device.Read(address, size);
    }

    public void WriteMemory(ulong address, int size, ulong value)
    {
        var device = MmioDevice(address);
        if (device is null)
        {
            Unclaimed(AccessSpace.Memory, address, size, isWrite: true, value);
            return;
        }
        device.Write(address, size, value);
    }

    /// <summary>The device claiming guest-physical <paramref name="address"/>, or null.</summary>
    public IMmioDevice? MemoryDevice(ulong address) => MmioDevice(address);

    private IMmioDevice? MmioDevice(ulong address)
    {
        for (int i = 0; i < mmio.Count; i++)
        {
            var (first, last, device) = mmio[i];
            if (address >= first && address <= last)
            {
                return device;
            }
        }
        return null;
    }

    private static uint Mask(int size) => size >= 4 ? uint.MaxValue : (1u << (size * 8)) - 1;
}
