using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform.Pci;

/// <summary>A PCI function's configuration space as the configuration mechanism sees it (PCI Local Bus
/// Specification 3.0, §6.1): 256 bytes, read and written at an offset with 1, 2 or 4 bytes inside one dword.</summary>
public interface IPciFunction
{
    /// <summary>Short name for diagnostics (e.g. <c>i440fx</c>).</summary>
    string Name { get; }

    /// <summary>Reads <paramref name="size"/> bytes at <paramref name="offset"/> (aligned to the size).</summary>
    uint ReadConfiguration(int offset, int size);

    /// <summary>Writes <paramref name="size"/> bytes at <paramref name="offset"/>; read-only bits keep their value.</summary>
    void WriteConfiguration(int offset, int size, uint value);
}

/// <summary>A 256-byte configuration header with a mask of the bits software may write (PCI 3.0 §6.2: vendor,
/// device, class code, header type and revision are read-only), for functions whose registers are plain storage.</summary>
public class PciConfigurationHeader : IPciFunction, ISnapshottable
{
    private readonly byte[] bytes = new byte[256];
    private readonly byte[] writable = new byte[256];

    /// <param name="name">For diagnostics.</param>
    /// <param name="tag">The snapshot section's tag.</param>
    /// <param name="vendor">Vendor ID (offset 0x00).</param>
    /// <param name="device">Device ID (0x02).</param>
    /// <param name="revision">Revision ID (0x08).</param>
    /// <param name="classCode">Class code, subclass and programming interface (0x09–0x0B), as 0xCCSSPP.</param>
    /// <param name="headerType">Header type (0x0E).</param>
    public PciConfigurationHeader(string name, string tag, ushort vendor, ushort device, byte revision, uint classCode, byte headerType = 0)
    {
        Name = name;
        SectionTag = tag;
        Set16(0x00, vendor);
        Set16(0x02, device);
        bytes[0x08] = revision;
        bytes[0x09] = (byte)classCode;
        bytes[0x0A] = (byte)(classCode >> 8);
        bytes[0x0B] = (byte)(classCode >> 16);
        bytes[0x0E] = headerType;
        // Command (0x04): I/O space, memory space, bus master (bits 0-2); latency timer (0x0D).
        writable[0x04] = 0x07;
        writable[0x0D] = 0xFF;
    }

    public string Name { get; }

    /// <summary>Makes [<paramref name="offset"/>, +<paramref name="length"/>) writable (device-specific registers).</summary>
    protected void AllowWrites(int offset, int length) => writable.AsSpan(offset, length).Fill(0xFF);

    /// <summary>Makes the bits of <paramref name="mask"/> writable in the dword at <paramref name="offset"/> (a BAR's
    /// address bits above its size, PCI 3.0 §6.2.5.1, so that writing all ones reads back the size mask).</summary>
    protected void AllowWrites32(int offset, uint mask)
    {
        for (int i = 0; i < 4; i++)
        {
            writable[offset + i] = (byte)(mask >> (8 * i));
        }
    }

    /// <summary>Sets an 8-bit register's reset value.</summary>
    protected void Set8(int offset, byte value) => bytes[offset] = value;

    /// <summary>Sets a 32-bit register's reset value.</summary>
    protected void Set32(int offset, uint value)
    {
        Set16(offset, (ushort)value);
        Set16(offset + 2, (ushort)(value >> 16));
    }

    /// <summary>Sets a 16-bit register's reset value.</summary>
    protected void Set16(int offset, ushort value)
    {
        bytes[offset] = (byte)value;
        bytes[offset + 1] = (byte)(value >> 8);
    }

    public uint ReadConfiguration(int offset, int size)
    {
        uint value = 0;
        for (int i = 0; i < size; i++)
        {
            value |= (uint)bytes[offset + i] << (8 * i);
        }
        return value;
    }

    public void WriteConfiguration(int offset, int size, uint value)
    {
        for (int i = 0; i < size; i++)
        {
            byte b = (byte)(value >> (8 * i));
            bytes[offset + i] = (byte)((bytes[offset + i] & ~writable[offset + i]) | (b & writable[offset + i]));
        }
        ConfigurationWritten(offset, size);
    }

    /// <summary>Called after a configuration write (a function that acts on its registers, e.g. MSI enable).</summary>
    protected virtual void ConfigurationWritten(int offset, int size)
    {
    }

    public string SectionTag { get; }

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer) => writer.WriteBytes(bytes);

    public void Restore(SnapshotReader reader, ushort version)
    {
        var saved = reader.ReadBytes(256);
        for (int i = 0; i < 256; i++)
        {
            if (((saved[i] ^ bytes[i]) & ~writable[i]) != 0)
            {
                throw reader.Invalid($"PCI {Name}: read-only configuration byte 0x{i:x2} differs ({saved[i]:x2}, not {bytes[i]:x2})");
            }
        }
        saved.CopyTo(bytes);
    }
}

/// <summary>The host bridge at 00:00.0: an Intel 440FX PCI and memory controller (82441FX PMC, vendor 0x8086,
/// device 0x1237, revision 2, class 0x060000 host bridge), the chipset of QEMU's <c>pc</c> machine. Its PAM
/// registers (0x59–0x5F) and SMRAM register (0x72) are storage only: Nestor's RAM below 1 MiB is always RAM.</summary>
public sealed class I440fxHostBridge : PciConfigurationHeader
{
    public const ushort VendorIntel = 0x8086, Device440fx = 0x1237;

    public I440fxHostBridge() : base("i440fx", "PCI0", VendorIntel, Device440fx, 0x02, 0x06_00_00)
    {
        AllowWrites(0x59, 7);
        AllowWrites(0x72, 1);
    }
}

/// <summary>PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, §3.2.2.3.2): a dword write to
/// CONFIG_ADDRESS at port 0xCF8 (bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2) chooses a
/// dword of a function's configuration space, which CONFIG_DATA at 0xCFC–0xCFF reads and writes by byte, word or
/// dword. A function that is not there reads all ones (the host bridge's master abort) and ignores writes, so
/// probing every device number finds just what is registered. Bus 0 only; devices register with
/// <see cref="Add"/>.</summary>
public sealed class PciBus : IPortDevice, ISnapshottable
{
    /// <summary>CONFIG_ADDRESS.</summary>
    public const ushort AddressPort = 0xCF8;

    /// <summary>CONFIG_DATA, four ports.</summary>
    public const ushort DataPort = 0xCFC;

    private readonly IPciFunction?[] functions = new IPciFunction?[32 * 8];
    private uint address;

    public string Name => "pci";

    /// <summary>Configuration accesses to functions that are not there (all ones read, writes dropped).</summary>
    public long AbsentAccesses { get; private set; }

    /// <summary>Registers <paramref name="function"/> at 00:<paramref name="device"/>.<paramref name="number"/>.</summary>
    /// <exception cref="InvalidOperationException">The place is taken.</exception>
    public void Add(int device, int number, IPciFunction function)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)device, 31u, nameof(device));
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)number, 7u, nameof(number));
        ref var slot = ref functions[device * 8 + number];
        if (slot is not null)
        {
            throw new InvalidOperationException($"PCI 00:{device:x2}.{number} is taken by {slot.Name}");
        }
        slot = function;
    }

    /// <summary>The function at 00:<paramref name="device"/>.<paramref name="number"/>, or null.</summary>
    public IPciFunction? Function(int device, int number) => functions[device * 8 + number];

    /// <summary>The CONFIG_ADDRESS register as software reads it (bits 1:0 clear).</summary>
    public uint Address => address & 0x80FF_FFFC;

    public uint Read(ushort port, int size)
    {
        uint ones = size == 4 ? 0xFFFF_FFFF : (1u << (8 * size)) - 1;
        if (port < DataPort)
        {
            // Only a dword access at 0xCF8 is CONFIG_ADDRESS (§3.2.2.3.2); narrower ones are other I/O, not here.
            return port == AddressPort && size == 4 ? Address : ones;
        }
        var function = Selected(out int offset);
        offset |= port - DataPort;
        if (function is null || offset + size > (offset & ~3) + 4)
        {
            AbsentAccesses += function is null ? 1 : 0;
            return ones;
        }
        return function.ReadConfiguration(offset, size);
    }

    public void Write(ushort port, int size, uint value)
    {
        if (port < DataPort)
        {
            if (port == AddressPort && size == 4)
            {
                // Reserved bits 30:24 and 1:0 read as 0, but bits 1:0 are kept: QEMU's host bridge (the reference
                // machine) ORs them into the register a CONFIG_DATA access reaches, and kvm-unit-tests' lib/x86 reads
                // a word at register 2 by selecting register 2 and reading port 0xCFC.
                address = value & 0x80FF_FFFF;
            }
            return;
        }
        var function = Selected(out int offset);
        offset |= port - DataPort;
        if (function is null || offset + size > (offset & ~3) + 4)
        {
            AbsentAccesses += function is null ? 1 : 0;
            return;
        }
        function.WriteConfiguration(offset, size, value);
    }

    private IPciFunction? Selected(out int offset)
    {
        offset = (int)(address & 0xFF); // the dword's register, ORed with bits 1:0 written to CONFIG_ADDRESS
        if ((address & 0x8000_0000) == 0 || ((address >> 16) & 0xFF) != 0)
        {
            return null; // disabled, or a bus behind no bridge
        }
        return functions[(address >> 8) & 0xFF];
    }

    public string SectionTag => "PCIB";

    public ushort SectionVersion => 1;

    /// <summary>CONFIG_ADDRESS; each function with state is its own section.</summary>
    public void Save(SnapshotWriter writer) => writer.WriteUInt32(address);

    public void Restore(SnapshotReader reader, ushort version) => address = reader.ReadUInt32() & 0x80FF_FFFF;
}
