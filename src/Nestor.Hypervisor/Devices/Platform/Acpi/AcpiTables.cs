using System.Buffers.Binary;
using System.Text;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Platform.Timers;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Platform.Acpi;

/// <summary>Where each table went.</summary>
/// <param name="Dmar">The DMAR table (VT-d §8.1), 0 when the VM has no VT-d unit.</param>
public sealed record AcpiTableAddresses(ulong Rsdp, ulong Rsdt, ulong Xsdt, ulong Fadt, ulong Facs, ulong Dsdt, ulong Madt, ulong Hpet, ulong Dmar = 0);

/// <summary>The ACPI tables of a Nestor VM (ACPI Specification 6.5), written where a PC BIOS leaves them, in the BIOS
/// area [0xE0000, 0x100000) that the firmware memory map reserves: the RSDP (§5.2.5, revision 2) at 0xE0000, on the
/// 16-byte boundary an OS's scan of that area finds first (§5.2.5.1), then the RSDT (§5.2.7) and XSDT (§5.2.8), each
/// listing the FADT, the MADT and the HPET table; the FADT (§5.2.9, revision 6.5) with the FACS (§5.2.10) and the
/// DSDT (§5.2.11.1), whose AML declares \_SB.PCI0, the PCI host bridge (PNP0A03); the MADT (§5.2.12) with one
/// processor local APIC per vCPU, the I/O APIC, the interrupt source overrides of QEMU's PC (ISA IRQ 0 to GSI 2; IRQ 9,
/// the SCI, level-triggered active-high) and the local APICs' NMI on LINT1; and the HPET description table (IA-PC
/// HPET Specification 1.0a §3.2.4). Every table's checksum makes its bytes sum to zero.</summary>
public static class AcpiTables
{
    /// <summary>Where the tables start (the RSDP first).</summary>
    public const ulong Base = 0xE_0000;

    /// <summary>The end of the area they may use.</summary>
    public const ulong End = 0x10_0000;

    public const string OemId = "NESTOR", OemTableId = "NESTORVM", CreatorId = "NSTR";

    /// <summary>The SCI's ISA IRQ (and GSI), as QEMU's PIIX4.</summary>
    public const int SciInterrupt = 9;

    private const int HeaderSize = 36;

    /// <summary>Builds the tables for <paramref name="cpus"/> vCPUs (APIC IDs 0 to cpus - 1) and writes them into
    /// <paramref name="memory"/>; with <paramref name="remappingUnit"/> (the guest's VT-d unit: its register base and
    /// DMA address width) a DMAR table too (<see cref="DmarTable"/>), listed after the HPET table.</summary>
    public static AcpiTableAddresses Write(GuestMemory memory, int cpus, byte ioApicId, (ulong RegisterBase, int AddressWidth)? remappingUnit = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(cpus, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(cpus, 255);
        ulong cursor = Base;
        ulong Next(int length, int alignment)
        {
            cursor = (cursor + (ulong)alignment - 1) & ~((ulong)alignment - 1);
            ulong at = cursor;
            cursor += (ulong)length;
            if (cursor > End)
            {
                throw new InvalidOperationException("the ACPI tables do not fit in the BIOS area");
            }
            return at;
        }
        byte[] dsdt = Dsdt(), madt = Madt(cpus, ioApicId), hpet = HpetTable();
        ulong rsdp = Next(36, 16);
        byte[]? dmar = remappingUnit is { } unit ? DmarTable.Build(unit.RegisterBase, unit.AddressWidth, ioApicId) : null;
        int listed = dmar is null ? 3 : 4;
        ulong rsdt = Next(HeaderSize + listed * 4, 16);
        ulong xsdt = Next(HeaderSize + listed * 8, 16);
        ulong facs = Next(64, 64); // the FACS is 64-byte aligned (§5.2.10)
        ulong dsdtAt = Next(dsdt.Length, 16);
        ulong fadt = Next(276, 16);
        ulong madtAt = Next(madt.Length, 16);
        ulong hpetAt = Next(hpet.Length, 16);
        memory.Write(new GuestPhysical(facs), Facs());
        memory.Write(new GuestPhysical(dsdtAt), dsdt);
        memory.Write(new GuestPhysical(fadt), Fadt((uint)facs, (uint)dsdtAt));
        memory.Write(new GuestPhysical(madtAt), madt);
        memory.Write(new GuestPhysical(hpetAt), hpet);
        ulong dmarAt = dmar is null ? 0 : Next(dmar.Length, 16);
        if (dmar is not null)
        {
            memory.Write(new GuestPhysical(dmarAt), dmar);
        }
        ulong[] entries = dmar is null ? [fadt, madtAt, hpetAt] : [fadt, madtAt, hpetAt, dmarAt];
        memory.Write(new GuestPhysical(rsdt), Rsdt(entries));
        memory.Write(new GuestPhysical(xsdt), Xsdt(entries));
        memory.Write(new GuestPhysical(rsdp), Rsdp((uint)rsdt, xsdt));
        return new AcpiTableAddresses(rsdp, rsdt, xsdt, fadt, facs, dsdtAt, madtAt, hpetAt, dmarAt);
    }

    /// <summary>The sum of <paramref name="bytes"/> modulo 256 (zero for a table whose checksum is right).</summary>
    public static byte Sum(ReadOnlySpan<byte> bytes)
    {
        byte sum = 0;
        foreach (byte b in bytes)
        {
            sum += b;
        }
        return sum;
    }

    /// <summary>§5.2.5.3: signature, checksum over the first 20 bytes, OEM ID, revision 2, the RSDT's address, the
    /// length (36), the XSDT's address, the extended checksum over all 36 bytes.</summary>
    private static byte[] Rsdp(uint rsdt, ulong xsdt)
    {
        var t = new byte[36];
        "RSD PTR "u8.CopyTo(t);
        Encoding.ASCII.GetBytes(OemId).CopyTo(t, 9);
        t[15] = 2;
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(16), rsdt);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(20), 36);
        BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(24), xsdt);
        t[8] = (byte)-Sum(t.AsSpan(0, 20));
        t[32] = (byte)-Sum(t);
        return t;
    }

    /// <summary>The system description table header (§5.2.6) for a table of <paramref name="length"/> bytes; the
    /// checksum is set by <see cref="Seal"/> once the body is in.</summary>
    internal static byte[] Table(string signature, int length, byte revision)
    {
        var t = new byte[length];
        Encoding.ASCII.GetBytes(signature).CopyTo(t, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), (uint)length);
        t[8] = revision;
        Encoding.ASCII.GetBytes(OemId).CopyTo(t, 10);
        Encoding.ASCII.GetBytes(OemTableId).CopyTo(t, 16);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(24), 1);
        Encoding.ASCII.GetBytes(CreatorId).CopyTo(t, 28);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(32), 1);
        return t;
    }

    /// <summary>Sets the checksum (§5.2.6) so that the table's bytes sum to zero.</summary>
    internal static byte[] Seal(byte[] table)
    {
        table[9] = 0;
        table[9] = (byte)-Sum(table);
        return table;
    }

    private static byte[] Rsdt(ulong[] entries)
    {
        var t = Table("RSDT", HeaderSize + 4 * entries.Length, 1);
        for (int i = 0; i < entries.Length; i++)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(HeaderSize + 4 * i), (uint)entries[i]);
        }
        return Seal(t);
    }

    private static byte[] Xsdt(ulong[] entries)
    {
        var t = Table("XSDT", HeaderSize + 8 * entries.Length, 1);
        for (int i = 0; i < entries.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(HeaderSize + 8 * i), entries[i]);
        }
        return Seal(t);
    }

    /// <summary>A Generic Address Structure (§5.2.3.2) in system I/O space (1) of <paramref name="bits"/> bits.</summary>
    private static void IoAddress(Span<byte> at, ushort port, byte bits, byte accessSize)
    {
        at[0] = 1;
        at[1] = bits;
        at[2] = 0;
        at[3] = accessSize;
        BinaryPrimitives.WriteUInt64LittleEndian(at[4..], port);
    }

    /// <summary>§5.2.9, Table 5.9 (FADT revision 6, minor 5: 276 bytes). The fixed hardware is
    /// <see cref="AcpiPowerManagement"/>'s: PM1a event and control blocks and a 24-bit PM timer (TMR_VAL_EXT clear);
    /// no SMI command port (always in ACPI mode), no GPE blocks, no C2/C3 (latencies above 100 and 1000 µs), no
    /// fixed power and sleep buttons.</summary>
    private static byte[] Fadt(uint facs, uint dsdt)
    {
        var t = Table("FACP", 276, 6);
        var s = t.AsSpan();
        BinaryPrimitives.WriteUInt32LittleEndian(s[36..], facs);
        BinaryPrimitives.WriteUInt32LittleEndian(s[40..], dsdt);
        BinaryPrimitives.WriteUInt16LittleEndian(s[46..], SciInterrupt);
        BinaryPrimitives.WriteUInt32LittleEndian(s[56..], AcpiPowerManagement.EventBlock);
        BinaryPrimitives.WriteUInt32LittleEndian(s[64..], AcpiPowerManagement.ControlBlock);
        BinaryPrimitives.WriteUInt32LittleEndian(s[76..], AcpiPowerManagement.TimerPort);
        s[88] = AcpiPowerManagement.EventBlockLength;
        s[89] = AcpiPowerManagement.ControlBlockLength;
        s[91] = AcpiPowerManagement.TimerLength;
        BinaryPrimitives.WriteUInt16LittleEndian(s[96..], 0x0FFF);  // P_LVL2_LAT > 100: no C2
        BinaryPrimitives.WriteUInt16LittleEndian(s[98..], 0x0FFF);  // P_LVL3_LAT > 1000: no C3
        BinaryPrimitives.WriteUInt16LittleEndian(s[109..], 1 << 2); // IAPC_BOOT_ARCH: VGA not present
        // Flags: WBINVD (bit 0), PWR_BUTTON and SLP_BUTTON (bits 4, 5: no fixed-feature buttons).
        BinaryPrimitives.WriteUInt32LittleEndian(s[112..], (1u << 0) | (1u << 4) | (1u << 5));
        s[131] = 5; // FADT minor version: ACPI 6.5
        BinaryPrimitives.WriteUInt64LittleEndian(s[140..], dsdt); // X_DSDT
        IoAddress(s[148..], AcpiPowerManagement.EventBlock, (byte)(AcpiPowerManagement.EventBlockLength * 8), 2);
        IoAddress(s[172..], AcpiPowerManagement.ControlBlock, (byte)(AcpiPowerManagement.ControlBlockLength * 8), 2);
        IoAddress(s[208..], AcpiPowerManagement.TimerPort, 32, 3);
        "Nestor\0\0"u8.CopyTo(s[268..]); // Hypervisor Vendor Identity
        return Seal(t);
    }

    /// <summary>§5.2.10, Table 5.14: 64 bytes, version 2, no waking vector, no global lock owner.</summary>
    private static byte[] Facs()
    {
        var t = new byte[64];
        "FACS"u8.CopyTo(t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), 64);
        t[32] = 2;
        return t;
    }

    /// <summary>The DSDT's AML (§20.2): <c>Scope (\_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03"))
    /// Name (_UID, Zero) } }</c>.</summary>
    public static byte[] DsdtAml()
    {
        byte[] device =
        [
            .. "PCI0"u8,
            0x08, .. "_HID"u8, 0x0C, 0x41, 0xD0, 0x0A, 0x03, // NameOp, DWordPrefix, EISA ID PNP0A03 (§19.6.35)
            0x08, .. "_UID"u8, 0x00,                          // NameOp, ZeroOp
        ];
        byte[] deviceOp = [0x5B, 0x82, (byte)(device.Length + 1), .. device]; // DeviceOp, PkgLength (one byte, < 64)
        byte[] scope = [0x5C, .. "_SB_"u8, .. deviceOp];                     // RootChar, NameSeg
        return [0x10, (byte)(scope.Length + 1), .. scope];                  // ScopeOp, PkgLength
    }

    private static byte[] Dsdt()
    {
        byte[] aml = DsdtAml();
        var t = Table("DSDT", HeaderSize + aml.Length, 2); // revision 2: 64-bit AML integers
        aml.CopyTo(t, HeaderSize);
        return Seal(t);
    }

    /// <summary>§5.2.12: the local APIC address and PCAT_COMPAT (the 8259s are there, masked), then the
    /// interrupt controller structures.</summary>
    private static byte[] Madt(int cpus, byte ioApicId)
    {
        var body = new List<byte>();
        for (int i = 0; i < cpus; i++)
        {
            body.AddRange([0, 8, (byte)i, (byte)i, 1, 0, 0, 0]); // Processor Local APIC (§5.2.12.2): UID, APIC ID, Enabled
        }
        var ioApic = new byte[12];
        ioApic[0] = 1;
        ioApic[1] = 12;
        ioApic[2] = ioApicId;
        BinaryPrimitives.WriteUInt32LittleEndian(ioApic.AsSpan(4), (uint)IoApic.DefaultBase);
        body.AddRange(ioApic); // I/O APIC (§5.2.12.3), GSI base 0
        void Override(byte irq, uint gsi, ushort flags)
        {
            var o = new byte[10];
            o[0] = 2;
            o[1] = 10;
            o[3] = irq;
            BinaryPrimitives.WriteUInt32LittleEndian(o.AsSpan(4), gsi);
            BinaryPrimitives.WriteUInt16LittleEndian(o.AsSpan(8), flags);
            body.AddRange(o); // Interrupt Source Override (§5.2.12.5), bus 0 (ISA)
        }
        Override(0, Pit8254.Gsi, 0);                   // the PIT's IRQ 0 is wired to pin 2, conforming polarity/trigger
        Override(SciInterrupt, SciInterrupt, 0x000D);  // active high (01), level-triggered (11)
        body.AddRange([4, 6, 0xFF, 0, 0, 1]);          // Local APIC NMI (§5.2.12.7): all processors, LINT1
        var t = Table("APIC", HeaderSize + 8 + body.Count, 5);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(36), 0xFEE0_0000);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(40), 1); // PCAT_COMPAT
        body.CopyTo(t, HeaderSize + 8);
        return Seal(t);
    }

    /// <summary>IA-PC HPET 1.0a §3.2.4, Table 3: the event timer block ID (the low half of the capabilities
    /// register), its base address in system memory, HPET number 0, a minimum periodic tick of 128.</summary>
    private static byte[] HpetTable()
    {
        var t = Table("HPET", 56, 1);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(36), (uint)Hpet.Capabilities);
        t[40] = 0;  // system memory
        t[41] = 64; // register width
        BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(44), Hpet.BaseAddress);
        t[52] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(t.AsSpan(53), 128);
        return Seal(t);
    }
}
