using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Techniques;

/// <summary>How the VMM virtualizes the CPU on the software machine.</summary>
public enum Technique
{
    /// <summary>No VMM: the guest runs on the bare (modelled) machine, its physical memory the machine's.</summary>
    Native,
    /// <summary>Hardware assistance (VT-x style): non-root operation, VM exits, a VMCS.</summary>
    HardwareAssist,
    /// <summary>Classic trap-and-emulate: the guest kernel in ring 1, privileged instructions trapping to the VMM.</summary>
    TrapAndEmulate,
    /// <summary>Binary translation of the guest kernel's code (VMware's software VMM).</summary>
    BinaryTranslation,
    /// <summary>Paravirtualization: the guest kernel knows, and makes hypercalls (Xen).</summary>
    Paravirtual,
}

/// <summary>The software machine's configuration: technique, memory virtualization and the MMU's caches.</summary>
public sealed record SimOptions
{
    public Technique Technique { get; init; } = Technique.Native;

    /// <summary>Shadow or nested paging, for <see cref="Technique.HardwareAssist"/> (the software techniques always
    /// use shadow paging).</summary>
    public MemoryVirtualization Memory { get; init; } = MemoryVirtualization.Nested;

    /// <summary>Map guest RAM with 2 MiB nested pages where possible (else 4 KiB).</summary>
    public bool LargeNestedPages { get; init; }

    /// <summary>Stop the run once this many instructions have retired (a breakpoint, to inspect the machine).</summary>
    public long? StopAtInstruction { get; init; }

    /// <summary>Check every shadow against the guest's tables after each guest page-table write (slow; for tests).</summary>
    public bool VerifyShadowPaging { get; init; }

    /// <summary>TLBs, page-walk caches, nested TLB.</summary>
    public MmuConfiguration Mmu { get; init; } = MmuConfiguration.Default;

    /// <summary>A short description, such as "hw+nested".</summary>
    public string Name => Technique switch
    {
        Technique.Native => "native",
        Technique.TrapAndEmulate => "trap",
        Technique.BinaryTranslation => "bt",
        Technique.Paravirtual => "pv",
        _ => Memory == MemoryVirtualization.Nested ? "hw+nested" : "hw+shadow",
    };
}
