using Iced.Intel;
using Nestor.Machine.Processor;

namespace Nestor.Machine.Virtualization;

/// <summary>How a VMM without hardware assistance deprivileges the guest kernel (ring compression; Robin &amp; Irvine,
/// USENIX Security 2000): the kernel, at CPL 0 as far as it knows, runs in hardware ring 1. Then
/// <list type="bullet">
/// <item>privileged instructions (MOV CR, LGDT, WRMSR, HLT, SYSRET, ...) raise #GP, and so do CLI, STI, IN and OUT
/// (CPL &gt; IOPL): the VMM traps and emulates them (<see cref="TrappingInstructions"/>);</item>
/// <item>the sensitive but unprivileged ones run with ring 1's outcome, and nobody can catch them: CS shows RPL 1, POPF
/// and IRET cannot change IF, and SGDT, SIDT, SLDT, STR and SMSW reveal the VMM's own registers
/// (<see cref="UncaughtInstructions"/>).</item>
/// </list>
/// With <see cref="Translated"/> the kernel's code runs through the VMM's binary translator instead (VMware's software
/// VMM): each privileged or sensitive instruction of kernel code is replaced by a callout that emulates it as bare metal
/// would, so the kernel sees CPL 0 and its own tables; user code still runs directly.</summary>
public sealed class RingCompression
{
    /// <summary>The instructions (by mnemonic) that trap when the kernel runs directly in ring 1: the privileged ones
    /// and those that fault at CPL &gt; IOPL (the VMM keeps IOPL 0). From <see cref="InstructionTable"/>; MOV to or
    /// from a control register also traps (<see cref="Traps"/> looks at the form).</summary>
    public static readonly IReadOnlyList<Mnemonic> TrappingInstructions =
        [.. InstructionTable.Rows.Where(r => r.Sensitivity is Sensitivity.Privileged or Sensitivity.IoPrivileged).Select(r => r.Mnemonic)];

    /// <summary>The sensitive but unprivileged instructions (by mnemonic): in ring 1 they run without a fault and with
    /// ring 1's outcome, so only binary translation (or paravirtualization) can deal with them. From
    /// <see cref="InstructionTable"/>, with the ones the machine does not model (they raise #UD); reads of CS and SS
    /// and far JMP and CALL are sensitive by form (<see cref="Uncaught"/>).</summary>
    public static readonly IReadOnlyList<Mnemonic> UncaughtInstructions =
    [
        .. InstructionTable.Rows.Where(r => r.Sensitivity == Sensitivity.SensitiveUnprivileged).Select(r => r.Mnemonic),
        .. InstructionTable.UnmodelledSensitive,
    ];

    /// <summary>Whether <paramref name="instruction"/>, run directly by a ring-1 kernel, traps to the VMM.</summary>
    public static bool Traps(in Instruction instruction) =>
        InstructionTable.SensitivityOf(instruction) is Sensitivity.Privileged or Sensitivity.IoPrivileged;

    /// <summary>Whether <paramref name="instruction"/> is sensitive but runs in ring 1 without trapping (what a binary
    /// translator must replace with a callout).</summary>
    public static bool Uncaught(in Instruction instruction) =>
        InstructionTable.SensitivityOf(instruction) == Sensitivity.SensitiveUnprivileged;

    /// <summary>The hardware ring the guest kernel runs in.</summary>
    public int KernelRing { get; init; } = 1;

    /// <summary>Kernel code is binary-translated (callouts) rather than run directly (traps).</summary>
    public bool Translated { get; init; }

    /// <summary>The VMM's own descriptor-table, task and LDT registers and CR0, which the sensitive instructions reveal
    /// to code that runs directly.</summary>
    public ulong VmmGdtBase { get; init; } = 0xFFFF_FE00_0000_0000;
    public ushort VmmGdtLimit { get; init; } = 0x7F;
    public ulong VmmIdtBase { get; init; } = 0xFFFF_FE00_0000_1000;
    public ushort VmmIdtLimit { get; init; } = 0xFFF;
    public ushort VmmTaskRegister { get; init; } = 0x40;
    public ushort VmmLocalDescriptorTable { get; init; }
    public ulong VmmCr0 { get; init; } = 0x8005_003B; // PG, WP, NE, ET, TS, MP, PE: TS as a VMM switching FPU state lazily

    /// <summary>Privileged or sensitive instructions of kernel code that became callouts (with <see cref="Translated"/>).</summary>
    public long Callouts { get; internal set; }

    // The translation cache (with Translated). The model's translation unit is the basic block; its cache is the CPU
    // model's decoded-instruction cache, which already holds one decode per instruction and drops a page's when the
    // page is written.

    /// <summary>Kernel instructions translated (decoded into the translation cache).</summary>
    public long InstructionsTranslated { get; internal set; }

    /// <summary>Basic blocks translated: translated kernel instructions that end a block (control transfers).</summary>
    public long BlocksTranslated { get; internal set; }

    /// <summary>Entries into blocks of kernel code (kernel control transfers executed).</summary>
    public long BlockEntries { get; internal set; }

    /// <summary>Block entries that found their block already translated.</summary>
    public long CacheHits => Math.Max(0, BlockEntries - BlocksTranslated);

    /// <summary>Kernel returns and indirect branches: each looks its target up in the translation cache.</summary>
    public long IndirectBranches { get; internal set; }

    /// <summary>Pages of translated kernel code dropped because the code was written (retranslated on next use).</summary>
    public long PagesInvalidated { get; internal set; }

    /// <summary>Sensitive but unprivileged instructions the guest kernel ran directly, with ring 1's outcome (not caught).</summary>
    public long UncaughtSensitive { get; internal set; }
}
