using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.State;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;

namespace Nestor.Hypervisor.Boot;

/// <summary>Builds what the Nestor boot protocol promises at the kernel's first instruction: long mode, CPL 0,
/// interrupts off, paging on with an identity map, a flat GDT and a TSS (Intel SDM Vol. 3A §9.8.5, "Initializing
/// IA-32e Mode", done by the VMM instead of by the guest).</summary>
public static class LongModeSetup
{
    public const ushort CodeSelector = 0x08;
    public const ushort DataSelector = 0x10;
    public const ushort TssSelector = 0x18;
    private const ushort GdtLimit = 0x27; // five 8-byte slots: null, code, data, TSS (two slots)
    private const uint TssLimit = 0x67;

    /// <summary>Writes the GDT, TSS and identity-mapping page tables into guest memory and returns the initial vCPU
    /// state for entering <paramref name="entry"/> with RDI = <paramref name="bootInformation"/>.</summary>
    /// <param name="noExecuteSupported">Whether the CPU has NX (CPUID.80000001h:EDX[20]); EFER.NXE is set if so.</param>
    public static VcpuState Prepare(GuestMemory memory, GuestPhysical entry, GuestPhysical bootInformation, bool noExecuteSupported)
    {
        WriteGdt(memory);
        GuestPhysical pml4 = BuildIdentityMap(memory);
        var state = new VcpuState
        {
            Rip = entry.Value,
            Rdi = bootInformation.Value,
            Rsp = GuestMemoryLayout.StackTop.Value,
            Rflags = 0x2, // bit 1 is always set; IF clear
            Cr0 = Cr0.ProtectionEnable | Cr0.MonitorCoprocessor | Cr0.ExtensionType | Cr0.NumericError |
                  Cr0.WriteProtect | Cr0.Paging,
            Cr3 = pml4.Value,
            Cr4 = Cr4.PhysicalAddressExtension,
            Efer = Efer.LongModeEnable | Efer.LongModeActive | (noExecuteSupported ? Efer.NoExecuteEnable : 0),
            Cs = new SegmentState(CodeSelector, 0, 0xFFFF_FFFF, 0xB, true, 0, true, true, false, true),
            Tr = new SegmentState(TssSelector, GuestMemoryLayout.BootTss.Value, TssLimit, 0xB, false, 0, true, false, false, false),
            Ldt = SegmentState.Null,
            Gdtr = new DescriptorTableState(GuestMemoryLayout.BootGdt.Value, GdtLimit),
            Idtr = new DescriptorTableState(0, 0),
        };
        var data = new SegmentState(DataSelector, 0, 0xFFFF_FFFF, 0x3, true, 0, true, false, true, true);
        state.Ds = state.Es = state.Fs = state.Gs = state.Ss = data;
        return state;
    }

    private static void WriteGdt(GuestMemory memory)
    {
        var gdt = GuestMemoryLayout.BootGdt;
        memory.WriteUInt64(gdt, 0);
        // Accessed bit preset (type 0xB / 0x3) so the CPU never needs to write the GDT.
        memory.WriteUInt64(gdt + 0x08, SegmentDescriptor.Flat(0xB, 0, longMode: true));
        memory.WriteUInt64(gdt + 0x10, SegmentDescriptor.Flat(0x3, 0, longMode: false));
        var (low, high) = SegmentDescriptor.TaskState(GuestMemoryLayout.BootTss.Value, TssLimit);
        // Busy type (0xB) in the GDT matches the loaded TR, as after LTR.
        memory.WriteUInt64(gdt + 0x18, low | (0x2UL << 40));
        memory.WriteUInt64(gdt + 0x20, high);
        memory.Span(GuestMemoryLayout.BootTss, (int)TssLimit + 1).Clear();
        // I/O map base beyond the limit: no I/O permission bitmap (SDM Vol. 1 §19.5.2).
        memory.Span(GuestMemoryLayout.BootTss + 0x66, 2)[0] = (byte)(TssLimit + 1);
    }

    /// <summary>Identity-maps [0, <see cref="GuestMemoryLayout.IdentityMapEnd"/>) with 2 MiB pages, supervisor-only,
    /// writable: one PML4, one PDPT, one page directory per GiB (SDM Vol. 3A §4.5, Figure 4-9).</summary>
    public static GuestPhysical BuildIdentityMap(GuestMemory memory)
    {
        ulong end = GuestMemoryLayout.IdentityMapEnd(memory.Size);
        int directories = (int)((end + (1UL << 30) - 1) >> 30);
        var pml4 = GuestMemoryLayout.PageTables;
        var pdpt = pml4 + 0x1000;
        var firstDirectory = pdpt + 0x1000;
        if (firstDirectory.Value + (ulong)directories * 0x1000 > GuestMemoryLayout.PageTablesEnd.Value)
        {
            throw new InvalidOperationException($"identity map of {directories} GiB does not fit the page-table area");
        }
        memory.Span(pml4, 0x2000 + directories * 0x1000).Clear();
        const ulong table = PageTableEntry.Present | PageTableEntry.Writable;
        memory.WriteUInt64(pml4, pdpt.Value | table);
        for (int g = 0; g < directories; g++)
        {
            var directory = firstDirectory + (ulong)g * 0x1000;
            memory.WriteUInt64(pdpt + (ulong)g * 8, directory.Value | table);
            for (int e = 0; e < 512; e++)
            {
                ulong physical = ((ulong)g << 30) | ((ulong)e << 21);
                memory.WriteUInt64(directory + (ulong)e * 8, physical | table | PageTableEntry.LargePage);
            }
        }
        return pml4;
    }
}
