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

    /// <summary>Shadow or nested paging as asked for; null for the technique's default (<see cref="TechniqueRules"/>:
    /// nested paging for <see cref="Technique.HardwareAssist"/>, shadow paging for the software techniques, which
    /// cannot use nested paging, and none for <see cref="Technique.Native"/>).</summary>
    public MemoryVirtualization? Memory { get; init; }

    /// <summary>The memory virtualization the VMM uses (null: no VMM).</summary>
    public MemoryVirtualization? EffectiveMemory => TechniqueRules.MemoryOf(Choice);

    /// <summary>These options as a choice for <see cref="TechniqueRules"/>.</summary>
    public TechniqueChoice Choice => new(Technique, Memory, LargeNestedPages, VerifyShadowPaging);

    /// <summary>Throws an <see cref="ArgumentException"/> naming the broken rule when the technique, memory
    /// virtualization, nested page size and shadow verification do not go together (<see cref="TechniqueRules"/>);
    /// returns these options otherwise.</summary>
    public SimOptions Validate()
    {
        TechniqueRules.Validate(Choice);
        return this;
    }

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
        _ => EffectiveMemory == MemoryVirtualization.Nested ? "hw+nested" : "hw+shadow",
    };
}
