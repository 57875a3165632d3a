using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Memory;

/// <summary>One contiguous range of guest RAM.</summary>
public readonly record struct RamRegion(GuestPhysical Start, ulong Length)
{
    public GuestPhysical End => Start + Length;

    public bool Contains(GuestPhysical address, ulong length) =>
        address >= Start && length <= Length && address.Value - Start.Value <= Length - length;
}

/// <summary>The guest-physical address map every Nestor VM has (docs/boot-protocol.md, "Memory layout").
/// RAM starts at 0; RAM beyond 3 GiB continues at 4 GiB so that [3 GiB, 4 GiB) stays free for devices (MMIO),
/// as on a PC.</summary>
public static class GuestMemoryLayout
{
    /// <summary>Start of the device hole below 4 GiB.</summary>
    public const ulong MmioHoleStart = 0xC000_0000;

    /// <summary>Where RAM continues above the hole.</summary>
    public const ulong HighRamStart = 0x1_0000_0000;

    /// <summary>The page Nestor never hands out as RAM: page 0, so that null pointers stay visible.</summary>
    public static readonly GuestPhysical NullPage = new(0);

    /// <summary>The boot GDT (null, 64-bit code 0x08, data 0x10, TSS 0x18).</summary>
    public static readonly GuestPhysical BootGdt = new(0x1000);

    /// <summary>The boot TSS, required by VM entry in long mode (Intel SDM Vol. 3C §27.3.1.2: TR must be usable).</summary>
    public static readonly GuestPhysical BootTss = new(0x1080);

    /// <summary>The boot-information block the kernel receives in RDI.</summary>
    public static readonly GuestPhysical BootInformation = new(0x2000);

    /// <summary>The kernel command line, NUL-terminated.</summary>
    public static readonly GuestPhysical CommandLine = new(0x3000);

    /// <summary>Longest command line (one page less its terminating NUL).</summary>
    public const int MaximumCommandLineBytes = 4095;

    /// <summary>The boot page tables: PML4, then one PDPT, then page directories.</summary>
    public static readonly GuestPhysical PageTables = new(0x10000);

    /// <summary>End of the region reserved for page tables (32 pages).</summary>
    public static readonly GuestPhysical PageTablesEnd = new(0x30000);

    /// <summary>Initial RSP: the boot stack grows down from here to <see cref="PageTablesEnd"/>.</summary>
    public static readonly GuestPhysical StackTop = new(0x80000);

    /// <summary>Everything in [<see cref="BootGdt"/>, <see cref="BootDataEnd"/>) is boot data; kernels load above it.</summary>
    public static readonly GuestPhysical BootDataEnd = StackTop;

    /// <summary>Where raw (<c>--flat</c>) code is loaded unless told otherwise.</summary>
    public static readonly GuestPhysical DefaultFlatLoadAddress = new(0x100000);

    /// <summary>The RAM regions of a VM with <paramref name="memoryBytes"/> of RAM.</summary>
    public static IReadOnlyList<RamRegion> RamRegions(ulong memoryBytes)
    {
        if (memoryBytes <= MmioHoleStart)
        {
            return [new RamRegion(new GuestPhysical(0), memoryBytes)];
        }
        return
        [
            new RamRegion(new GuestPhysical(0), MmioHoleStart),
            new RamRegion(new GuestPhysical(HighRamStart), memoryBytes - MmioHoleStart),
        ];
    }

    /// <summary>The identity map covers the first 4 GiB (RAM and the device hole) and all RAM above it.</summary>
    public static ulong IdentityMapEnd(ulong memoryBytes)
    {
        ulong top = RamRegions(memoryBytes)[^1].End.Value;
        return Math.Max(top, HighRamStart);
    }
}
