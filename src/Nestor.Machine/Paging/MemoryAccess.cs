namespace Nestor.Machine.Paging;

/// <summary>What an access does with the memory it translates.</summary>
public enum AccessKind : byte
{
    Read,
    Write,
    Execute,
}

/// <summary>The page-fault error code (Intel SDM Vol. 3A §4.7, Figure 4-12).</summary>
[Flags]
public enum PageFaultError : uint
{
    None = 0,
    /// <summary>P: 0 = the page was not present, 1 = a protection violation.</summary>
    Present = 1 << 0,
    /// <summary>W/R: the access was a write.</summary>
    Write = 1 << 1,
    /// <summary>U/S: the access was a user-mode access.</summary>
    User = 1 << 2,
    /// <summary>RSVD: a reserved bit was set in some paging-structure entry.</summary>
    ReservedBit = 1 << 3,
    /// <summary>I/D: the access was an instruction fetch (reported when NX or SMEP is enabled).</summary>
    InstructionFetch = 1 << 4,
}

/// <summary>The paging controls the MMU obeys: CR0.WP, CR0.PG, CR3, CR4.PGE/PCIDE/SMEP/SMAP, EFER.NXE/LMA. The CPU
/// model keeps them current through <see cref="Mmu.SetControlRegisters"/>.</summary>
public readonly record struct PagingControls(
    bool Paging, bool LongMode, bool WriteProtect, bool NoExecute, bool GlobalPages, bool ProcessContextIdentifiers,
    bool SupervisorExecutionPrevention, bool SupervisorAccessPrevention, ulong Cr3)
{
    /// <summary>Controls as in 64-bit long mode with 4-level paging, everything optional off.</summary>
    public static PagingControls LongMode4Level(ulong cr3) => new(true, true, true, true, false, false, false, false, cr3);

    /// <summary>The current PCID (CR3[11:0]) when PCIDs are enabled, else 0.</summary>
    public ushort ProcessContext => ProcessContextIdentifiers ? (ushort)(Cr3 & 0xFFF) : (ushort)0;
}
