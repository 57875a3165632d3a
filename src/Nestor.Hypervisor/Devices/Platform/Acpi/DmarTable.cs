using System.Buffers.Binary;

namespace Nestor.Hypervisor.Devices.Platform.Acpi;

/// <summary>The DMA Remapping Reporting table (VT-d specification rev. 4, §8.1 "DMA Remapping Reporting Structure",
/// §8.3 "DMA Remapping Hardware Unit Definition Structure", §8.3.1 "Device Scope Structure") of a VM with the
/// guest's VT-d unit (<c>--device intel-iommu</c>): the host address width (MGAW + 1 bits, as CAP says), the flags
/// (bit 0 INTR_REMAP: the unit remaps interrupts), and one DRHD for segment 0 with INCLUDE_PCI_ALL, the unit's register
/// base, and the I/O APIC in its device scope (§8.3.1: a DRHD that includes all PCI devices lists the I/O APICs it
/// remaps), at bus 0xFF device 0 function 0 as QEMU's q35 reports it.</summary>
public static class DmarTable
{
    private const int HeaderSize = 36, DmarHeaderSize = 48, DrhdSize = 16, IoApicScopeSize = 8;

    /// <summary>The table for a unit at <paramref name="registerBase"/> with <paramref name="addressWidth"/>-bit DMA
    /// addressing and the I/O APIC <paramref name="ioApicId"/>.</summary>
    public static byte[] Build(ulong registerBase, int addressWidth, byte ioApicId)
    {
        int length = DmarHeaderSize + DrhdSize + IoApicScopeSize;
        var t = AcpiTables.Table("DMAR", length, 1);
        t[HeaderSize] = (byte)(addressWidth - 1);   // host address width: N - 1
        t[HeaderSize + 1] = 1;                       // INTR_REMAP
        var drhd = t.AsSpan(DmarHeaderSize);
        BinaryPrimitives.WriteUInt16LittleEndian(drhd, 0);                        // type 0: DRHD
        BinaryPrimitives.WriteUInt16LittleEndian(drhd[2..], DrhdSize + IoApicScopeSize);
        drhd[4] = 1;                                                              // INCLUDE_PCI_ALL
        drhd[5] = 0;                                                              // size: one 4 KiB page
        BinaryPrimitives.WriteUInt16LittleEndian(drhd[6..], 0);                   // segment 0
        BinaryPrimitives.WriteUInt64LittleEndian(drhd[8..], registerBase);
        var scope = drhd[DrhdSize..];
        scope[0] = 3;                 // an I/O APIC
        scope[1] = IoApicScopeSize;
        scope[4] = ioApicId;          // enumeration ID: the I/O APIC's ID, as the MADT gives it
        scope[5] = 0xFF;              // start bus
        scope[6] = 0;                 // path: device 0, function 0
        scope[7] = 0;
        return AcpiTables.Seal(t);
    }
}
