namespace Nestor.Hypervisor.Devices.Platform.Pci.Edu;

/// <summary>The configuration header of QEMU's <c>edu</c> device (QEMU docs/specs/edu.rst, as fact): vendor 0x1234,
/// device 0x11E8, revision 0x10, class 0x00FF00; BAR0 a 1 MiB 32-bit non-prefetchable memory BAR (PCI 3.0 §6.2.5.1:
/// bits 19:4 read as zero, so writing all ones reads 0xFFF00000), placed where SeaBIOS leaves it on QEMU's q35 with
/// <c>-nodefaults</c> (0xFEA00000, measured); interrupt pin A with the line SeaBIOS assigns to slot 1 (IRQ 10); a
/// 64-bit MSI capability at 0x40 (PCI 3.0 §6.8.1: control bit 7 64-bit, bit 0 enable; address 0x44/0x48, data 0x4C).
/// Command's memory space and bus master bits are set, as the firmware leaves them.</summary>
public sealed class EduConfiguration : PciConfigurationHeader
{
    public const ushort VendorQemu = 0x1234, DeviceEdu = 0x11E8;

    /// <summary>BAR0's address and size.</summary>
    public const uint BarAddress = 0xFEA0_0000, BarSize = 0x10_0000;

    /// <summary>The interrupt line (the I/O APIC input INTx reaches).</summary>
    public const byte InterruptLine = 10;

    /// <summary>The MSI capability's offset.</summary>
    public const int MsiCapability = 0x40;

    private const ushort MemorySpace = 1 << 1, BusMaster = 1 << 2, InterruptDisable = 1 << 10;

    public EduConfiguration() : base("edu", "EDUC", VendorQemu, DeviceEdu, 0x10, 0x00_FF_00)
    {
        Set16(0x04, MemorySpace | BusMaster);
        AllowWrites32(0x04, 0x0000_0407); // command: I/O, memory, bus master, interrupt disable
        Set16(0x06, 1 << 4);              // status: capabilities list
        Set32(0x10, BarAddress);
        AllowWrites32(0x10, ~(BarSize - 1));
        Set16(0x2C, 0x1AF4);              // subsystem vendor and ID, QEMU's defaults
        Set16(0x2E, 0x1100);
        Set8(0x34, MsiCapability);
        Set8(0x3C, InterruptLine);
        AllowWrites(0x3C, 1);
        Set8(0x3D, 1);                    // INTA#
        Set8(MsiCapability, 0x05);        // capability ID: MSI; next 0
        Set16(MsiCapability + 2, 1 << 7); // 64-bit address capable, one vector
        AllowWrites32(MsiCapability, 0x0001_0000); // the enable bit (control bit 0)
        AllowWrites32(MsiCapability + 4, 0xFFFF_FFFC);
        AllowWrites32(MsiCapability + 8, 0xFFFF_FFFF);
        AllowWrites32(MsiCapability + 12, 0x0000_FFFF);
    }

    /// <summary>Command.MSE: the BAR decodes.</summary>
    public bool MemoryEnabled => (ReadConfiguration(0x04, 2) & MemorySpace) != 0;

    /// <summary>Command.BME: the device may master the bus (DMA, MSI).</summary>
    public bool BusMasterEnabled => (ReadConfiguration(0x04, 2) & BusMaster) != 0;

    /// <summary>Command.ID: INTx is disabled.</summary>
    public bool IntxDisabled => (ReadConfiguration(0x04, 2) & InterruptDisable) != 0;

    /// <summary>BAR0's base now.</summary>
    public uint Bar0 => ReadConfiguration(0x10, 4) & ~0xFu;

    /// <summary>The line register's value.</summary>
    public int Line => (int)ReadConfiguration(0x3C, 1);

    /// <summary>MSI control bit 0.</summary>
    public bool MsiEnabled => (ReadConfiguration(MsiCapability + 2, 2) & 1) != 0;

    /// <summary>The MSI message address and data.</summary>
    public ulong MsiAddress => ReadConfiguration(MsiCapability + 4, 4) | ((ulong)ReadConfiguration(MsiCapability + 8, 4) << 32);

    /// <inheritdoc cref="MsiAddress"/>
    public uint MsiData => ReadConfiguration(MsiCapability + 12, 2);

    /// <summary>Called after any configuration write (the device re-evaluates its INTx line).</summary>
    public Action? Changed { get; set; }

    protected override void ConfigurationWritten(int offset, int size) => Changed?.Invoke();
}
