namespace Nestor.Hypervisor.Techniques;

/// <summary>A choice of technique and memory virtualization to check against <see cref="TechniqueRules"/>.</summary>
/// <param name="Technique">How the CPU is virtualized.</param>
/// <param name="Memory">The memory virtualization asked for; null for the technique's default.</param>
/// <param name="NestedPageSizeChosen">A page size for the nested page table was asked for (2 MiB, or 4 KiB explicitly).</param>
/// <param name="VerifyShadowPaging">The shadow verification after each guest page-table write was asked for.</param>
public readonly record struct TechniqueChoice(Technique Technique, MemoryVirtualization? Memory = null, bool NestedPageSizeChosen = false,
    bool VerifyShadowPaging = false);

/// <summary>Why a <see cref="TechniqueChoice"/> is refused, and what to do instead.</summary>
public sealed record TechniqueRuleViolation(string Message, string Hint);

/// <summary>The one home of the rules between techniques and memory virtualizations, used by <see cref="SimOptions"/>,
/// the VMM and the CLI: nested paging is a hardware feature, so only hardware assistance may use it and the software
/// techniques use shadow paging; the native machine has no VMM to virtualize memory; nested page sizes exist only with
/// nested paging, and the shadow verification only with shadow paging.</summary>
public static class TechniqueRules
{
    /// <summary>Whether <paramref name="technique"/> has a VMM (everything but <see cref="Technique.Native"/>).</summary>
    public static bool HasMonitor(Technique technique) => technique != Technique.Native;

    /// <summary>Whether a VM run under <paramref name="technique"/> virtualizing memory with <paramref name="memory"/>
    /// (null: the technique's default) may have several vCPUs: the one rule <c>nestor run --cpus</c>
    /// (<see cref="Configuration.VmConfig"/>, through <see cref="SeveralVcpusRefusal"/>) checks, and a host's
    /// <c>vcpus</c> is to check. The native machine, and hardware assistance with nested
    /// paging: the VMM keeps a VMCS per vCPU (Intel SDM Vol. 3C §25.1: one VMCS per logical processor a VMM runs a
    /// guest vCPU on) over one nested page table for the VM, whose changes shoot down every vCPU's nested TLB
    /// (INVEPT, §29.4.3). Shadow paging and the software techniques keep one vCPU so far: shadow paging keeps one
    /// current shadow root, and a guest page-table write seen through write protection would have to reach every vCPU's
    /// shadows (<see cref="SeveralVcpusRefusal"/> says so).</summary>
    public static bool AllowsSeveralVcpus(Technique technique, MemoryVirtualization? memory) =>
        technique == Technique.Native ||
        (technique == Technique.HardwareAssist && (memory ?? DefaultMemory(technique)) == MemoryVirtualization.Nested);

    /// <summary>Why <paramref name="technique"/> with <paramref name="memory"/> cannot run several vCPUs and what to do
    /// instead, or null when it can (<see cref="AllowsSeveralVcpus(Technique, MemoryVirtualization?)"/>).</summary>
    public static TechniqueRuleViolation? SeveralVcpusRefusal(Technique technique, MemoryVirtualization? memory) =>
        AllowsSeveralVcpus(technique, memory)
            ? null
            : new TechniqueRuleViolation(
                $"several vCPUs under --technique {ShortName(technique)} with {((memory ?? DefaultMemory(technique)) == MemoryVirtualization.Nested ? "nested" : "shadow")} paging: " +
                "the VMM keeps a VMCS per vCPU only with nested paging so far (its shadow paging keeps one shadow root, for one vCPU)",
                "Use --technique hw --mmu nested (or --technique native) for several vCPUs, or --cpus 1");

    /// <summary>Whether <paramref name="technique"/> may virtualize memory with <paramref name="memory"/>.</summary>
    public static bool Allows(Technique technique, MemoryVirtualization memory) =>
        technique == Technique.HardwareAssist || (HasMonitor(technique) && memory == MemoryVirtualization.Shadow);

    /// <summary>The memory virtualization <paramref name="technique"/> uses when none is asked for (null: no VMM).</summary>
    public static MemoryVirtualization? DefaultMemory(Technique technique) => technique switch
    {
        Technique.Native => null,
        Technique.HardwareAssist => MemoryVirtualization.Nested,
        _ => MemoryVirtualization.Shadow,
    };

    /// <summary>The memory virtualization a valid <paramref name="choice"/> ends with (null: none, native).</summary>
    public static MemoryVirtualization? MemoryOf(TechniqueChoice choice) => choice.Memory ?? DefaultMemory(choice.Technique);

    /// <summary>The first rule <paramref name="choice"/> breaks, or null when it is allowed.</summary>
    public static TechniqueRuleViolation? Check(TechniqueChoice choice)
    {
        var technique = choice.Technique;
        if (!HasMonitor(technique))
        {
            return choice.Memory is not null || choice.NestedPageSizeChosen || choice.VerifyShadowPaging
                ? new TechniqueRuleViolation(
                    "--mmu and --nested-pages choose how a VMM virtualizes memory, and --technique native has no VMM (so no memory virtualization, nested page size or shadow verification)",
                    "Add --technique hw, or drop --mmu and --nested-pages")
                : null;
        }
        if (choice.Memory is { } asked && !Allows(technique, asked))
        {
            return new TechniqueRuleViolation(
                $"--technique {ShortName(technique)} virtualizes memory with shadow paging: nested paging is a hardware feature",
                "Drop --mmu, or use --technique hw for nested paging");
        }
        var memory = MemoryOf(choice);
        if (choice.NestedPageSizeChosen && memory != MemoryVirtualization.Nested)
        {
            return new TechniqueRuleViolation(
                "--nested-pages sizes the pages of the nested page table, and shadow paging has none: the VMM builds shadows of the guest's own tables",
                "Drop --nested-pages, or use --technique hw --mmu nested");
        }
        if (choice.VerifyShadowPaging && memory != MemoryVirtualization.Shadow)
        {
            return new TechniqueRuleViolation(
                "the shadow verification checks shadow page tables against the guest's, and nested paging keeps none",
                "Verify with shadow paging (--technique hw --mmu shadow, or a software technique), or drop the verification");
        }
        return null;
    }

    /// <summary>Throws an <see cref="ArgumentException"/> with the broken rule's message when <paramref name="choice"/>
    /// is refused.</summary>
    public static void Validate(TechniqueChoice choice)
    {
        if (Check(choice) is { } violation)
        {
            throw new ArgumentException($"{violation.Message}. {violation.Hint}.");
        }
    }

    /// <summary>The technique's name on the command line (--technique).</summary>
    public static string ShortName(Technique technique) => technique switch
    {
        Technique.Native => "native",
        Technique.HardwareAssist => "hw",
        Technique.TrapAndEmulate => "trap",
        Technique.BinaryTranslation => "bt",
        Technique.Paravirtual => "pv",
        _ => technique.ToString(),
    };
}
