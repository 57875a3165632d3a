using Nestor.Hypervisor.Memory;

namespace Nestor.Hypervisor.Boot;

/// <summary>A range of the PC memory map a firmware reports (the E820 view the Multiboot <c>mmap_*</c> fields and
/// the ACPI specification's "System Address Map Interfaces", ACPI 6.5 §15, describe): type 1 is RAM the OS may use,
/// type 2 reserved.</summary>
public readonly record struct FirmwareMemoryRange(ulong Start, ulong End, uint Type)
{
    /// <summary>AddressRangeMemory (ACPI 6.5 §15.1, Table 15.1).</summary>
    public const uint Ram = 1;

    /// <summary>AddressRangeReserved.</summary>
    public const uint Reserved = 2;

    /// <summary>Bytes in the range.</summary>
    public ulong Length => End - Start;
}

/// <summary>The memory map of a Nestor VM as a PC firmware (SeaBIOS under QEMU) describes it, for kernels booted
/// the PC way (Multiboot): conventional memory up to the extended BIOS data area, the EBDA and the BIOS area
/// reserved, the 128 KiB VGA window and the option-ROM area not listed at all (a hole), RAM from 1 MiB to the
/// device hole and above 4 GiB. Nestor's RAM is contiguous underneath; the reserved parts hold what a BIOS
/// would put there (the ACPI tables).</summary>
public static class FirmwareMemoryMap
{
    /// <summary>Where the extended BIOS data area starts (QEMU/SeaBIOS: 639 KiB of conventional memory).</summary>
    public const ulong EbdaStart = 0x9_FC00;

    /// <summary>The end of conventional memory; [0xA0000, 0xC0000) is the VGA window.</summary>
    public const ulong ConventionalEnd = 0xA_0000;

    /// <summary>The BIOS read-only area, where the ACPI tables and the RSDP lie (ACPI 6.5 §5.2.5.1: the RSDP is
    /// searched for on 16-byte boundaries in [0xE0000, 0xFFFFF]).</summary>
    public const ulong BiosAreaStart = 0xE_0000;

    /// <summary>1 MiB: where extended memory starts.</summary>
    public const ulong ExtendedStart = 0x10_0000;

    /// <summary>The ranges of the map for <paramref name="memoryBytes"/> of RAM, in address order.</summary>
    public static IReadOnlyList<FirmwareMemoryRange> Build(ulong memoryBytes)
    {
        var regions = GuestMemoryLayout.RamRegions(memoryBytes);
        var map = new List<FirmwareMemoryRange>
        {
            new(0, EbdaStart, FirmwareMemoryRange.Ram),
            new(EbdaStart, ConventionalEnd, FirmwareMemoryRange.Reserved),
            new(BiosAreaStart, ExtendedStart, FirmwareMemoryRange.Reserved),
            new(ExtendedStart, regions[0].End.Value, FirmwareMemoryRange.Ram),
        };
        for (int i = 1; i < regions.Count; i++)
        {
            map.Add(new FirmwareMemoryRange(regions[i].Start.Value, regions[i].End.Value, FirmwareMemoryRange.Ram));
        }
        return map;
    }

    /// <summary>Whether [<paramref name="start"/>, +<paramref name="length"/>) lies inside one RAM range of the map.</summary>
    public static bool IsRam(IReadOnlyList<FirmwareMemoryRange> map, ulong start, ulong length)
    {
        foreach (var range in map)
        {
            if (range.Type == FirmwareMemoryRange.Ram && start >= range.Start && start < range.End && length <= range.End - start)
            {
                return true;
            }
        }
        return false;
    }
}
