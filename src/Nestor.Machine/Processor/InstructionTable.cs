using System.Runtime.CompilerServices;
using Iced.Intel;

[assembly: InternalsVisibleTo("Nestor.Machine.Tests")]

namespace Nestor.Machine.Processor;

/// <summary>How an instruction behaves when a guest kernel is deprivileged to ring 1 (ring compression), in Popek and
/// Goldberg's terms (CACM 17(7), 1974): an instruction is <em>sensitive</em> if it reads or changes the machine's
/// privileged state or depends on the privilege level, <em>privileged</em> if it traps outside ring 0. A machine is
/// classically virtualizable when every sensitive instruction is privileged; x86 is not (Robin &amp; Irvine, USENIX
/// Security 2000, list the sensitive but unprivileged ones).</summary>
public enum Sensitivity : byte
{
    /// <summary>Neither reads nor changes privileged state: runs directly, the same in any ring.</summary>
    Innocuous,
    /// <summary>Sensitive and privileged: #GP (or #UD) outside ring 0, so a ring-1 kernel traps to the VMM.</summary>
    Privileged,
    /// <summary>Sensitive, and faults when CPL &gt; IOPL (CLI, STI, IN, OUT; SDM Vol. 1 §18.2.1): with IOPL 0, as a
    /// VMM keeps it, a ring-1 kernel traps as for a privileged instruction.</summary>
    IoPrivileged,
    /// <summary>Sensitive but not privileged: runs in ring 1 without a fault, with ring 1's outcome or revealing the
    /// VMM's registers (POPF, PUSHF, SGDT, SIDT, SLDT, STR, SMSW, IRET, far RET, INT n, reads of CS): nobody catches it.</summary>
    SensitiveUnprivileged,
}

/// <summary>A CPUID feature flag an instruction (or a part of the machine model) needs. <see cref="None"/> for the
/// base architecture. The bits are in <see cref="CpuidFeatures"/>.</summary>
public enum CpuFeature : byte
{
    None,
    // Instruction features: reported when every instruction of the feature has a row needing it.
    TimeStampCounter,
    ModelSpecificRegisters,
    CompareExchange8Bytes,
    ConditionalMove,
    CompareExchange16Bytes,
    PopulationCount,
    LahfSahf64,
    LeadingZeroCount,
    SystemCall,
    ReadTimeStampCounterAndProcessor,
    SupervisorModeAccessPrevention,
    SystemEnter,
    CacheLineFlush,
    CacheLineFlushOptimized,
    InvalidateProcessContext,
    ReadProcessorId,
    FloatingPointUnit,
    // Instruction features the machine does not model (no rows): never reported.
    Mmx,
    FxsaveFxrstor,
    Sse,
    Sse2,
    Sse3,
    Xsave,
    MoveBigEndian,
    RandomNumber,
    RandomSeed,
    BitManipulation1,
    BitManipulation2,
    ProtectionKeys,
    FsGsBase,
    VirtualMachineExtensions,
    // Features of the machine model it does not have (ModelledBy null: never reported). Each has a CR4 bit that is
    // then reserved (Cpu.System's MOV CR4), or a mode the model lacks.
    Virtual8086ModeExtensions,
    DebuggingExtensions,
    PageSizeExtension,
    UserModeInstructionPrevention,
    FiveLevelPaging,
    SaferModeExtensions,
    ControlFlowEnforcement,
    ProtectionKeysSupervisor,
    // Features of the machine model rather than of instructions (the paging structures, the APIC, modes).
    PhysicalAddressExtension,
    /// <summary>CR4.MCE and the machine-check exception (CPUID.1:EDX.MCE).</summary>
    MachineCheckException,
    /// <summary>The machine-check architecture's registers (CPUID.1:EDX.MCA): IA32_MCG_CAP and IA32_MCG_STATUS.</summary>
    MachineCheckArchitecture,
    Apic,
    PageGlobal,
    Hypervisor,
    PageAttributeTable,
    ProcessContextIdentifiers,
    TscDeadline,
    X2Apic,
    SupervisorModeExecutionPrevention,
    NoExecute,
    Pages1GB,
    LongMode,
}

/// <summary>The register of a CPUID leaf a feature bit is in.</summary>
public enum CpuidRegister : byte
{
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// <summary>Where a feature's bit is (Intel SDM Vol. 2A "CPUID", Tables 3-8 to 3-11; AMD APM Vol. 3 E.3), its name in
/// those tables, the instructions that make it up (empty for a feature of the machine model), and what of the
/// model backs it when it is not (only) instructions.</summary>
public sealed record CpuidFeatureInfo(CpuFeature Feature, uint Leaf, CpuidRegister Register, int Bit, string Name,
    IReadOnlyList<Mnemonic> Instructions, string? ModelledBy = null);

/// <summary>The CPUID feature flags the machine knows of: where each bit is, and which instructions it stands for.
/// Whether the machine reports one is derived from <see cref="InstructionTable"/>, never written down here.</summary>
public static class CpuidFeatures
{
    /// <summary>Every known feature (each <see cref="CpuFeature"/> but <see cref="CpuFeature.None"/>, once).</summary>
    public static readonly IReadOnlyList<CpuidFeatureInfo> All =
    [
        new(CpuFeature.TimeStampCounter, 1, CpuidRegister.Edx, 4, "TSC", [Mnemonic.Rdtsc],
            "the time-stamp counter (one tick per retired instruction)"),
        new(CpuFeature.ModelSpecificRegisters, 1, CpuidRegister.Edx, 5, "MSR", [Mnemonic.Rdmsr, Mnemonic.Wrmsr]),
        new(CpuFeature.PhysicalAddressExtension, 1, CpuidRegister.Edx, 6, "PAE", [], "PAE and 4-level paging (the page walker)"),
        new(CpuFeature.CompareExchange8Bytes, 1, CpuidRegister.Edx, 8, "CX8", [Mnemonic.Cmpxchg8b]),
        new(CpuFeature.Apic, 1, CpuidRegister.Edx, 9, "APIC", [], "the local APIC at IA32_APIC_BASE (its timer)"),
        new(CpuFeature.PageGlobal, 1, CpuidRegister.Edx, 13, "PGE", [], "global pages (CR4.PGE, TLB entries kept across CR3 loads)"),
        // The debugging extensions (SDM Vol. 3B §17.2.2, §17.2.4): CR4.DE makes DR4/DR5 #UD and DR7's R/W = 10 an I/O
        // breakpoint, matched by IN, OUT, INS and OUTS (Cpu.Debug.cs).
        new(CpuFeature.DebuggingExtensions, 1, CpuidRegister.Edx, 2, "DE", [],
            "CR4.DE: DR4/DR5 #UD and I/O breakpoints (DR7 R/W = 10) with the hardware breakpoints of DR0-DR3"),
        // The machine-check exception and architecture (SDM Vol. 3B ch. 16). The model has no hardware that can fail,
        // so it detects no machine-check error: MCG_CAP reports no error-reporting bank and no IA32_MCG_CTL, which
        // the SDM's count field allows, and CR4.MCE is a stored enable with nothing to enable.
        new(CpuFeature.MachineCheckException, 1, CpuidRegister.Edx, 7, "MCE", [],
            "CR4.MCE and vector 18 (the model detects no hardware error, so it signals none)"),
        new(CpuFeature.MachineCheckArchitecture, 1, CpuidRegister.Edx, 14, "MCA", [],
            "IA32_MCG_CAP (no error-reporting banks, no IA32_MCG_CTL) and IA32_MCG_STATUS"),
        new(CpuFeature.PageAttributeTable, 1, CpuidRegister.Edx, 16, "PAT", [],
            "IA32_PAT with its checks; memory types have no effect (the model has no caches)"),
        new(CpuFeature.ConditionalMove, 1, CpuidRegister.Edx, 15, "CMOV",
            [Mnemonic.Cmovo, Mnemonic.Cmovno, Mnemonic.Cmovb, Mnemonic.Cmovae, Mnemonic.Cmove, Mnemonic.Cmovne,
             Mnemonic.Cmovbe, Mnemonic.Cmova, Mnemonic.Cmovs, Mnemonic.Cmovns, Mnemonic.Cmovp, Mnemonic.Cmovnp,
             Mnemonic.Cmovl, Mnemonic.Cmovge, Mnemonic.Cmovle, Mnemonic.Cmovg]),
        new(CpuFeature.CompareExchange16Bytes, 1, CpuidRegister.Ecx, 13, "CX16", [Mnemonic.Cmpxchg16b]),
        new(CpuFeature.SystemEnter, 1, CpuidRegister.Edx, 11, "SEP", [Mnemonic.Sysenter, Mnemonic.Sysexit, Mnemonic.Sysexitq],
            "IA32_SYSENTER_CS, IA32_SYSENTER_ESP and IA32_SYSENTER_EIP"),
        new(CpuFeature.CacheLineFlush, 1, CpuidRegister.Edx, 19, "CLFSH", [Mnemonic.Clflush],
            "a 64-byte line size in CPUID.1:EBX[15:8] (the model has no caches: a flush only checks the address)"),
        new(CpuFeature.ProcessContextIdentifiers, 1, CpuidRegister.Ecx, 17, "PCID", [],
            "CR4.PCIDE and PCID-tagged TLB entries (MOV CR3 bit 63 keeps them)"),
        new(CpuFeature.PopulationCount, 1, CpuidRegister.Ecx, 23, "POPCNT", [Mnemonic.Popcnt]),
        new(CpuFeature.TscDeadline, 1, CpuidRegister.Ecx, 24, "TSC-Deadline", [],
            "the local APIC timer's TSC-deadline mode and IA32_TSC_DEADLINE"),
        new(CpuFeature.X2Apic, 1, CpuidRegister.Ecx, 21, "x2APIC", [],
            "the local APIC's x2APIC mode: IA32_APIC_BASE.EXTD and the registers as MSRs 0x800-0x8FF"),
        new(CpuFeature.Hypervisor, 1, CpuidRegister.Ecx, 31, "hypervisor", [],
            "the machine is virtual: leaves 0x40000000 and up describe Nestor"),
        new(CpuFeature.SupervisorModeExecutionPrevention, 7, CpuidRegister.Ebx, 7, "SMEP", [], "CR4.SMEP in the page walker"),
        new(CpuFeature.InvalidateProcessContext, 7, CpuidRegister.Ebx, 10, "INVPCID", [Mnemonic.Invpcid]),
        new(CpuFeature.SupervisorModeAccessPrevention, 7, CpuidRegister.Ebx, 20, "SMAP", [Mnemonic.Clac, Mnemonic.Stac],
            "CR4.SMAP with RFLAGS.AC in the page walker"),
        new(CpuFeature.CacheLineFlushOptimized, 7, CpuidRegister.Ebx, 23, "CLFLUSHOPT", [Mnemonic.Clflushopt]),
        new(CpuFeature.ReadProcessorId, 7, CpuidRegister.Ecx, 22, "RDPID", [Mnemonic.Rdpid], "IA32_TSC_AUX"),
        new(CpuFeature.LahfSahf64, 0x8000_0001, CpuidRegister.Ecx, 0, "LAHF-SAHF", [Mnemonic.Lahf, Mnemonic.Sahf]),
        new(CpuFeature.LeadingZeroCount, 0x8000_0001, CpuidRegister.Ecx, 5, "LZCNT", [Mnemonic.Lzcnt]),
        new(CpuFeature.SystemCall, 0x8000_0001, CpuidRegister.Edx, 11, "SYSCALL", [Mnemonic.Syscall, Mnemonic.Sysretq, Mnemonic.Sysret],
            "their MSRs (STAR, LSTAR, CSTAR, SFMASK)"),
        new(CpuFeature.NoExecute, 0x8000_0001, CpuidRegister.Edx, 20, "NX", [], "EFER.NXE and the execute-disable bit in the page walker"),
        new(CpuFeature.Pages1GB, 0x8000_0001, CpuidRegister.Edx, 26, "Page1GB", [], "1 GiB pages in the page walker"),
        new(CpuFeature.ReadTimeStampCounterAndProcessor, 0x8000_0001, CpuidRegister.Edx, 27, "RDTSCP", [Mnemonic.Rdtscp],
            "IA32_TSC_AUX"),
        new(CpuFeature.LongMode, 0x8000_0001, CpuidRegister.Edx, 29, "LM", [], "long mode"),
        // The x87 FPU: its control instructions and data moves (Cpu.X87); its arithmetic has no rows (#UD, counted).
        new(CpuFeature.FloatingPointUnit, 1, CpuidRegister.Edx, 0, "FPU",
            [Mnemonic.Fld, Mnemonic.Fld1, Mnemonic.Fstp, Mnemonic.Fninit, Mnemonic.Finit, Mnemonic.Fnclex, Mnemonic.Fclex, Mnemonic.Fnstsw,
             Mnemonic.Fstsw, Mnemonic.Fnstcw, Mnemonic.Fstcw, Mnemonic.Fldcw, Mnemonic.Fnstenv, Mnemonic.Fstenv, Mnemonic.Fldenv,
             Mnemonic.Fnsave, Mnemonic.Fsave, Mnemonic.Frstor, Mnemonic.Fnop, Mnemonic.Ffree, Mnemonic.Fincstp, Mnemonic.Fdecstp,
             Mnemonic.Fldz, Mnemonic.Fst, Mnemonic.Fxch, Mnemonic.Fchs, Mnemonic.Fabs],
            "the x87 control instructions and data moves, not its arithmetic (FADD, FMUL, FCOM, ... raise #UD, counted as not modelled)"),
        // Not modelled (the instructions have no rows, so they raise #UD and the bits stay clear). A few of each
        // feature's instructions suffice: one missing row keeps the bit clear.
        new(CpuFeature.Mmx, 1, CpuidRegister.Edx, 23, "MMX", [Mnemonic.Emms, Mnemonic.Paddb]),
        new(CpuFeature.FxsaveFxrstor, 1, CpuidRegister.Edx, 24, "FXSR", [Mnemonic.Fxsave, Mnemonic.Fxrstor]),
        new(CpuFeature.Sse, 1, CpuidRegister.Edx, 25, "SSE", [Mnemonic.Addps, Mnemonic.Movaps, Mnemonic.Ldmxcsr]),
        new(CpuFeature.Sse2, 1, CpuidRegister.Edx, 26, "SSE2", [Mnemonic.Addpd, Mnemonic.Movdqa]),
        new(CpuFeature.Sse3, 1, CpuidRegister.Ecx, 0, "SSE3", [Mnemonic.Addsubps, Mnemonic.Haddps]),
        new(CpuFeature.MoveBigEndian, 1, CpuidRegister.Ecx, 22, "MOVBE", [Mnemonic.Movbe]),
        new(CpuFeature.Xsave, 1, CpuidRegister.Ecx, 26, "XSAVE", [Mnemonic.Xsave, Mnemonic.Xrstor, Mnemonic.Xgetbv, Mnemonic.Xsetbv]),
        new(CpuFeature.RandomNumber, 1, CpuidRegister.Ecx, 30, "RDRAND", [Mnemonic.Rdrand]),
        // TZCNT has a row, but ANDN, BEXTR and BLSI/BLSMSK/BLSR do not, so BMI1 is not claimed (a guest using TZCNT's
        // encoding as REP BSF, as compilers do for a count that is never of zero, gets the same result).
        new(CpuFeature.BitManipulation1, 7, CpuidRegister.Ebx, 3, "BMI1",
            [Mnemonic.Andn, Mnemonic.Bextr, Mnemonic.Blsi, Mnemonic.Blsmsk, Mnemonic.Blsr, Mnemonic.Tzcnt]),
        new(CpuFeature.BitManipulation2, 7, CpuidRegister.Ebx, 8, "BMI2",
            [Mnemonic.Bzhi, Mnemonic.Mulx, Mnemonic.Pdep, Mnemonic.Pext, Mnemonic.Rorx, Mnemonic.Sarx, Mnemonic.Shlx, Mnemonic.Shrx]),
        new(CpuFeature.RandomSeed, 7, CpuidRegister.Ebx, 18, "RDSEED", [Mnemonic.Rdseed]),
        new(CpuFeature.ProtectionKeys, 7, CpuidRegister.Ecx, 3, "PKU", [Mnemonic.Rdpkru, Mnemonic.Wrpkru]),
        new(CpuFeature.FsGsBase, 7, CpuidRegister.Ebx, 0, "FSGSBASE", [Mnemonic.Rdfsbase, Mnemonic.Rdgsbase, Mnemonic.Wrfsbase, Mnemonic.Wrgsbase]),
        new(CpuFeature.VirtualMachineExtensions, 1, CpuidRegister.Ecx, 5, "VMX", [Mnemonic.Vmxon, Mnemonic.Vmxoff, Mnemonic.Vmlaunch]),
        // Parts of a processor the model does not have (no ModelledBy, so never reported; their CR4 bits are reserved).
        new(CpuFeature.Virtual8086ModeExtensions, 1, CpuidRegister.Edx, 1, "VME", []),
        new(CpuFeature.PageSizeExtension, 1, CpuidRegister.Edx, 3, "PSE", []),
        new(CpuFeature.SaferModeExtensions, 1, CpuidRegister.Ecx, 6, "SMX", []),
        new(CpuFeature.UserModeInstructionPrevention, 7, CpuidRegister.Ecx, 2, "UMIP", []),
        new(CpuFeature.FiveLevelPaging, 7, CpuidRegister.Ecx, 16, "LA57", []),
        new(CpuFeature.ControlFlowEnforcement, 7, CpuidRegister.Ecx, 7, "CET_SS", []),
        new(CpuFeature.ProtectionKeysSupervisor, 7, CpuidRegister.Ecx, 31, "PKS", []),
    ];

    /// <summary>The information of one feature.</summary>
    public static CpuidFeatureInfo Of(CpuFeature feature) => All.First(f => f.Feature == feature);

    /// <summary>Whether the machine implements <paramref name="info"/> and so reports its bit: a feature of the model
    /// (no instructions) is implemented by the model; an instruction feature when each of its instructions has a row
    /// of the instruction table that needs it.</summary>
    public static bool Implemented(CpuidFeatureInfo info) => info.Instructions.Count == 0
        ? info.ModelledBy is not null
        : info.Instructions.All(m => InstructionTable.Find(m) is { } row && row.Feature == info.Feature);

    /// <summary>The features the machine reports, in <see cref="All"/>'s order.</summary>
    public static IEnumerable<CpuidFeatureInfo> Reported => All.Where(Implemented);
}

/// <summary>Runs one instruction on <paramref name="cpu"/> (RIP already past it); a stop reason or null.</summary>
internal delegate StopReason? InstructionHandler(Cpu cpu, in Instruction instruction);

/// <summary>One row of <see cref="InstructionTable"/>: everything the machine says about one mnemonic.</summary>
public sealed class InstructionRow
{
    internal InstructionRow(Mnemonic mnemonic, InstructionClass instructionClass, CpuFeature feature, Sensitivity sensitivity,
        InstructionHandler handler)
    {
        Mnemonic = mnemonic;
        Class = instructionClass;
        Feature = feature;
        Sensitivity = sensitivity;
        Handler = handler;
    }

    /// <summary>The mnemonic (Iced's decoder names it; all its encodings share the row).</summary>
    public Mnemonic Mnemonic { get; }

    /// <summary>The retired-instruction class the counters and the cost model charge it as.</summary>
    public InstructionClass Class { get; }

    /// <summary>The CPUID feature it needs, or <see cref="CpuFeature.None"/>.</summary>
    public CpuFeature Feature { get; }

    /// <summary>How it behaves in a deprivileged kernel (for most of its forms; see
    /// <see cref="InstructionTable.SensitivityOf"/> for the forms that differ).</summary>
    public Sensitivity Sensitivity { get; }

    /// <summary>Its semantics: the interpreter's method for it.</summary>
    internal InstructionHandler Handler { get; }

    public override string ToString() => $"{Mnemonic} {Class} {Feature} {Sensitivity}";
}

/// <summary>The one place that says which instructions the software machine implements (after Bochs's
/// <c>ia_opcodes.def</c>): one row per mnemonic with its handler, class, CPUID feature and sensitivity. The
/// interpreter's dispatch, the class counted per retired instruction, the CPUID bits the machine reports
/// (<see cref="CpuidFeatures.Reported"/>) and ring compression's list of sensitive instructions derive from it. To
/// add an instruction: write its semantics as a method of <see cref="Cpu"/>, and add its row (Cpu.InstructionTable.cs).</summary>
public static class InstructionTable
{
    private static readonly InstructionRow?[] ByMnemonic = Index(Cpu.BuildInstructionRows());

    /// <summary>Every row, in mnemonic order.</summary>
    public static readonly IReadOnlyList<InstructionRow> Rows = [.. ByMnemonic.Where(r => r is not null).Select(r => r!)];

    /// <summary>The number of Iced mnemonics (arrays indexed by mnemonic have this length).</summary>
    internal static int MnemonicCount => ByMnemonic.Length;

    /// <summary>Classes by mnemonic, for counting at one lookup; a mnemonic without a row (not modelled, #UD) is
    /// <see cref="InstructionClass.System"/>.</summary>
    internal static readonly byte[] ClassByMnemonic = [.. ByMnemonic.Select(r => (byte)(r?.Class ?? InstructionClass.System))];

    /// <summary>The row of <paramref name="mnemonic"/>, or null: the machine does not model it (it raises #UD).</summary>
    public static InstructionRow? Find(Mnemonic mnemonic) => (uint)mnemonic < (uint)ByMnemonic.Length ? ByMnemonic[(int)mnemonic] : null;

    /// <summary>Sensitive instructions the machine does not model (no row: they raise #UD), by Robin &amp; Irvine's
    /// list: a kernel that used them in ring 1 would see ring 1's descriptor-access rights without a fault.</summary>
    public static readonly IReadOnlyList<Mnemonic> UnmodelledSensitive = [Mnemonic.Lar, Mnemonic.Lsl, Mnemonic.Verr, Mnemonic.Verw];

    /// <summary>The sensitivity of one decoded instruction: its row's, refined for the forms whose operands decide
    /// (MOV to or from a control or debug register is privileged; reading CS or SS by MOV or PUSH is sensitive, the
    /// selector's RPL showing the hardware ring; far JMP and CALL compare privilege levels). Innocuous without a row.</summary>
    public static Sensitivity SensitivityOf(in Instruction instruction)
    {
        var row = Find(instruction.Mnemonic);
        if (row is null)
        {
            return UnmodelledSensitive.Contains(instruction.Mnemonic) ? Sensitivity.SensitiveUnprivileged : Sensitivity.Innocuous;
        }
        switch (instruction.Mnemonic)
        {
            case Mnemonic.Mov:
                for (int n = 0; n < instruction.OpCount; n++)
                {
                    if (instruction.GetOpKind(n) == OpKind.Register && instruction.GetOpRegister(n) is var r && (r.IsCR() || r.IsDR()))
                    {
                        return Sensitivity.Privileged;
                    }
                }
                return ReadsCodeOrStackSelector(instruction, 1);
            case Mnemonic.Push:
                return ReadsCodeOrStackSelector(instruction, 0);
            case Mnemonic.Jmp:
            case Mnemonic.Call:
                return instruction.GetOpKind(0) is OpKind.FarBranch16 or OpKind.FarBranch32 ||
                       (instruction.GetOpKind(0) == OpKind.Memory && instruction.MemorySize is MemorySize.SegPtr16 or MemorySize.SegPtr32 or MemorySize.SegPtr64)
                    ? Sensitivity.SensitiveUnprivileged : Sensitivity.Innocuous;
            default:
                return row.Sensitivity;
        }
    }

    private static Sensitivity ReadsCodeOrStackSelector(in Instruction instruction, int operand) =>
        operand < instruction.OpCount && instruction.GetOpKind(operand) == OpKind.Register &&
        instruction.GetOpRegister(operand) is Register.CS or Register.SS
            ? Sensitivity.SensitiveUnprivileged : Sensitivity.Innocuous;

    private static InstructionRow?[] Index(InstructionRow[] rows)
    {
        var table = new InstructionRow?[Enum.GetValues<Mnemonic>().Max(m => (int)m) + 1];
        foreach (var row in rows)
        {
            if (table[(int)row.Mnemonic] is not null)
            {
                throw new InvalidOperationException($"two rows for {row.Mnemonic} in the instruction table");
            }
            table[(int)row.Mnemonic] = row;
        }
        return table;
    }
}
