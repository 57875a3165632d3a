using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.DmaRemapping;

/// <summary>The outcome of translating one DMA address: the output address, or the fault reason the VT-d
/// specification (rev. 4, Appendix A, "Non-Recoverable Fault Reason Encodings") gives for a request it blocks.</summary>
/// <param name="Address">The translated address (valid when <paramref name="Reason"/> is 0).</param>
/// <param name="Reason">0 when translated; else the fault reason (1 root not present, 2 context not present, 3 invalid
/// context entry, 4 input address beyond the address width, 5 write without permission, 6 read without permission).</param>
public readonly record struct DmaTranslation(ulong Address, byte Reason)
{
    /// <summary>True when the request may proceed.</summary>
    public bool Translated => Reason == 0;
}

/// <summary>Where a remapping unit's tables are: reads one 64-bit entry at an address of that space. A struct, so that
/// a walk through it is a direct call and allocates nothing.</summary>
public interface IRemappingTables
{
    /// <summary>The entry at <paramref name="address"/> (0, not present, where the space has no memory).</summary>
    ulong ReadEntry(ulong address);
}

/// <summary>Tables in a VM's guest-physical memory: those a guest's driver writes for the emulated VT-d unit. A table
/// outside RAM reads as not present (the unit's read of it would be an error; blocking the request is the conservative
/// outcome).</summary>
public readonly struct GuestMemoryTables(GuestMemory memory) : IRemappingTables
{
    /// <inheritdoc/>
    public ulong ReadEntry(ulong address) =>
        memory.IsRam(new GuestPhysical(address), 8) ? memory.ReadUInt64(new GuestPhysical(address)) : 0;
}

/// <summary>Legacy-mode DMA remapping (VT-d rev. 4, §3.4.2 and §9.1–§9.3, §9.8), the one walk of both remapping units
/// (the emulated one a guest programs, Devices/Platform/Iommu, and the VMM's own for an assigned device,
/// Devices/Assigned/Iommu): the root table (256 16-byte entries, one per bus; bit 0 present, bits 63:12 the context
/// table), the context table (256 entries, one per device and function; low quadword bit 0 present, bit 1 fault
/// processing disable, bits 3:2 translation type, bits 63:12 the second-level table; high quadword bits 2:0 address
/// width, 23:8 domain), and the second-level table: 3 levels for a 39-bit width (AW 001b), 4 for 48 bits (AW 010b),
/// each entry read bit 0, write bit 1, page size bit 7 (a 2 MiB page at level 2, 1 GiB at level 3), the next table or
/// page in bits 51:12. An entry that lacks the access's right blocks it at any level, a not-present entry (neither
/// right) included: VT-d has no "not present" reason for second-level entries, only reasons 5 and 6.</summary>
public static class SecondLevelWalk
{
    /// <summary>Entry bits (§9.8).</summary>
    public const ulong Read = 1, Write = 2, PageSize = 1 << 7, AddressMask = 0x000F_FFFF_FFFF_F000;

    /// <summary>Fault reasons (Appendix A).</summary>
    public const byte RootNotPresent = 1, ContextNotPresent = 2, InvalidContext = 3, BeyondAddressWidth = 4,
        WriteDenied = 5, ReadDenied = 6;

    /// <summary>Translates <paramref name="address"/> of the device <paramref name="source"/> (bus 15:8, device and
    /// function 7:0) with the root table at <paramref name="rootTable"/> in guest memory.</summary>
    public static DmaTranslation Translate(GuestMemory memory, ulong rootTable, ushort source, ulong address, bool write,
        out bool faultsSuppressed, out int references) =>
        Translate(new GuestMemoryTables(memory), rootTable, source, address, write, out faultsSuppressed, out references);

    /// <summary>Translates <paramref name="address"/> of the device <paramref name="source"/> (bus 15:8, device and
    /// function 7:0) with the root table at <paramref name="rootTable"/> in <paramref name="tables"/>;
    /// <paramref name="faultsSuppressed"/> tells whether the context entry's FPD bit asks for its faults not to be
    /// recorded (§7.2.1), <paramref name="references"/> how many entries the walk read (the context entry's two
    /// quadwords count as one).</summary>
    public static DmaTranslation Translate<TTables>(in TTables tables, ulong rootTable, ushort source, ulong address, bool write,
        out bool faultsSuppressed, out int references) where TTables : struct, IRemappingTables
    {
        faultsSuppressed = false;
        references = 1;
        ulong rootEntry = tables.ReadEntry((rootTable & AddressMask) + (ulong)(source >> 8) * 16);
        if ((rootEntry & 1) == 0)
        {
            return new(0, RootNotPresent);
        }
        ulong contextAt = (rootEntry & AddressMask) + (ulong)(source & 0xFF) * 16;
        ulong context = tables.ReadEntry(contextAt);
        references++;
        if ((context & 1) == 0)
        {
            return new(0, ContextNotPresent);
        }
        ulong contextHigh = tables.ReadEntry(contextAt + 8);
        faultsSuppressed = (context & 2) != 0;
        int levels = (contextHigh & 7) switch { 1 => 3, 2 => 4, _ => 0 };
        if (((context >> 2) & 3) != 0 || levels == 0)
        {
            return new(0, InvalidContext); // only translation type 00b (untranslated requests) is offered (ECAP.PT = 0)
        }
        int width = 12 + 9 * levels;
        if ((address >> width) != 0)
        {
            return new(0, BeyondAddressWidth);
        }
        ulong table = context & AddressMask;
        for (int level = levels; level >= 1; level--)
        {
            int shift = 12 + 9 * (level - 1);
            ulong entry = tables.ReadEntry(table + ((address >> shift) & 0x1FF) * 8);
            references++;
            if ((entry & (write ? Write : Read)) == 0)
            {
                return new(0, write ? WriteDenied : ReadDenied);
            }
            if (level == 1 || (level <= 3 && (entry & PageSize) != 0))
            {
                ulong pageMask = (1UL << shift) - 1;
                return new(((entry & AddressMask) & ~pageMask) | (address & pageMask), 0);
            }
            table = entry & AddressMask;
        }
        return new(0, InvalidContext); // not reached
    }
}
