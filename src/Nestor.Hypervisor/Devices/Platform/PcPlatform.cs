using System.Buffers.Binary;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Devices.Platform.Acpi;
using Nestor.Hypervisor.Devices.Platform.Pci;
using Nestor.Hypervisor.Devices.Platform.Pci.Edu;
using Nestor.Hypervisor.Devices.Platform.Timers;

namespace Nestor.Hypervisor.Devices.Platform;

/// <summary>The standard PC devices every Nestor VM has beside COM1, the debug exit and the interrupt controllers
/// (docs/boot-protocol.md, "Guest-visible platform"): fw_cfg, PCI configuration mechanism #1 with the 440FX host
/// bridge at 00:00.0, the 8254 PIT with port 0x61, the ACPI PM registers and timer, and the HPET, all on the VM's one
/// bus so both engines see them, counting in <see cref="Clock"/>. A kernel booted the PC way (Multiboot) also finds
/// the ACPI tables (<see cref="AcpiTables"/>) in the BIOS area.</summary>
public sealed class PcPlatform
{
    private readonly ITimedDevice[] timed;

    private PcPlatform(Vm vm)
    {
        Clock = new PlatformClock();
        int cpus = vm.Vcpus.Count;
        FirmwareConfig = new FirmwareConfig(vm.Config.MemoryBytes, cpus, vm.Config.CommandLine);
        FirmwareConfig.AddFile("etc/e820", E820(vm.Config.MemoryBytes));
        Pci = new PciBus();
        HostBridge = new I440fxHostBridge();
        Pci.Add(0, 0, HostBridge);
        Pit = new Pit8254(Clock, vm.Interrupts[Pit8254.Gsi]);
        PowerManagement = new AcpiPowerManagement(Clock);
        Hpet = new Hpet(Clock, vm.Interrupts);
        timed = [Pit, Hpet];
    }

    /// <summary>Builds the devices and claims their ports and MMIO on <paramref name="vm"/>'s bus; writes the ACPI
    /// tables when the kernel was booted by Multiboot (under the Nestor boot protocol that range is the kernel's RAM).</summary>
    internal static PcPlatform Attach(Vm vm)
    {
        var platform = new PcPlatform(vm);
        var bus = vm.Bus;
        bus.Claim(platform.FirmwareConfig, FirmwareConfig.SelectorPort, 2);
        bus.Claim(platform.Pci, PciBus.AddressPort, 8);
        bus.Claim(platform.Pit, Pit8254.FirstPort, 4);
        bus.Claim(platform.Pit, Pit8254.SystemControlPort, 1);
        bus.Claim(platform.PowerManagement, AcpiPowerManagement.Base, AcpiPowerManagement.PortCount);
        bus.Claim(platform.Hpet, Hpet.BaseAddress, Hpet.Length);
        foreach (Persistence.ISnapshottable part in (Persistence.ISnapshottable[])[platform.Clock, platform.FirmwareConfig, platform.Pci,
            platform.HostBridge, platform.Pit, platform.PowerManagement, platform.Hpet])
        {
            vm.AttachDevice(part);
        }
        if (vm.MultibootInformation is not null)
        {
            platform.Acpi = AcpiTables.Write(vm.Memory, vm.Vcpus.Count, ioApicId: 0,
                vm.Config.PlatformDevices.IntelIommu ? (Iommu.DmaRemappingHardwareUnit.BaseAddress, Iommu.DmaRemappingHardwareUnit.AddressWidth) : null);
            // The 8259s, PIT, IVT and LINT0/LINT1 as SeaBIOS leaves them for a QEMU -kernel boot (measured).
            Interrupts.FirmwareInterruptState.Apply(vm, platform.Pit);
            // QEMU's pc-testdev, which kvm-unit-tests' harness always adds: on every PC-booted VM (docs/boot-protocol.md).
            var testDevice = new Testing.PcTestDevice(vm.Interrupts);
            bus.Claim(testDevice, Testing.PcTestDevice.DataPort, Testing.PcTestDevice.PortCount);
            bus.Claim(testDevice.IrqLinePorts, Testing.PcTestDevice.IrqLinePort, Testing.PcTestDevice.IrqLines);
            bus.Claim(testDevice, Testing.PcTestDevice.IoMemoryBase, Testing.PcTestDevice.IoMemoryLength);
            vm.AttachDevice(testDevice);
            platform.TestDevice = testDevice;
            platform.AttachOptionalDevices(vm);
        }
        return platform;
    }

    // --device (PlatformDevices): the VT-d unit claims its register page and takes the I/O APIC's remappable-format
    // messages; edu is a function on the PCI bus with its BAR's MMIO, mastering through the unit when there is one.
    private void AttachOptionalDevices(Vm vm)
    {
        var wanted = vm.Config.PlatformDevices;
        if (wanted.IntelIommu)
        {
            var unit = new Iommu.DmaRemappingHardwareUnit(vm.Memory, vm.IoApic);
            vm.Bus.Claim(unit, Iommu.DmaRemappingHardwareUnit.BaseAddress, Iommu.DmaRemappingHardwareUnit.Length);
            vm.IoApic.Remapping = (address, data) => unit.DeliverMessage(address, data, source: null);
            vm.AttachDevice(unit);
            RemappingUnit = unit;
        }
        if (wanted.Edu)
        {
            var edu = new EduDevice(vm, RemappingUnit);
            Pci.Add(EduDevice.Device, EduDevice.Function, edu.Configuration);
            vm.Bus.Claim(edu, EduConfiguration.BarAddress, EduConfiguration.BarSize);
            vm.AttachDevice(edu.Configuration);
            vm.AttachDevice(edu);
            Edu = edu;
        }
    }

    /// <summary>The guest's VT-d unit (<c>--device intel-iommu</c>), else null.</summary>
    public Iommu.DmaRemappingHardwareUnit? RemappingUnit { get; private set; }

    /// <summary>QEMU's edu device (<c>--device edu</c>), else null.</summary>
    public EduDevice? Edu { get; private set; }

    /// <summary>The virtual time the timers count in.</summary>
    public PlatformClock Clock { get; }

    public FirmwareConfig FirmwareConfig { get; }

    public PciBus Pci { get; }

    public I440fxHostBridge HostBridge { get; }

    public Pit8254 Pit { get; }

    public AcpiPowerManagement PowerManagement { get; }

    public Hpet Hpet { get; }

    /// <summary>QEMU's <c>pc-testdev</c> on a VM booted by Multiboot, else null.</summary>
    public Testing.PcTestDevice? TestDevice { get; private set; }

    /// <summary>Where the ACPI tables are, or null when there are none (the Nestor boot protocol).</summary>
    public AcpiTableAddresses? Acpi { get; private set; }

    /// <summary>The virtual time (ns) of the next timer interrupt, or <see cref="long.MaxValue"/>.</summary>
    public long NextTimerEvent
    {
        get
        {
            long next = long.MaxValue;
            foreach (var device in timed)
            {
                next = Math.Min(next, device.NextEvent);
            }
            return next;
        }
    }

    /// <summary><see cref="NextTimerEvent"/> in the clock the platform clock is attached to (the software CPU's
    /// cycles), or <see cref="long.MaxValue"/> when no timer is armed or the clock counts host time.</summary>
    public long NextTimerEventInSourceCycles => Clock.SourceValueAt(NextTimerEvent);

    /// <summary>Delivers the timer interrupts due by now; the engine calls it between slices of guest execution.</summary>
    public void AdvanceTimers()
    {
        long now = Clock.Nanoseconds;
        foreach (var device in timed)
        {
            device.Advance(now);
        }
    }

    /// <summary>QEMU's <c>etc/e820</c> fw_cfg file: the firmware memory map as 20-byte little-endian entries
    /// (u64 address, u64 length, u32 type).</summary>
    private static byte[] E820(ulong memoryBytes)
    {
        var map = FirmwareMemoryMap.Build(memoryBytes);
        var file = new byte[20 * map.Count];
        for (int i = 0; i < map.Count; i++)
        {
            var e = file.AsSpan(20 * i);
            BinaryPrimitives.WriteUInt64LittleEndian(e, map[i].Start);
            BinaryPrimitives.WriteUInt64LittleEndian(e[8..], map[i].Length);
            BinaryPrimitives.WriteUInt32LittleEndian(e[16..], map[i].Type);
        }
        return file;
    }
}
