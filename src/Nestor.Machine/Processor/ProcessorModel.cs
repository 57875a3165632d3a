namespace Nestor.Machine.Processor;

/// <summary>Which processor the software machine says it is, and the architectural checks that follow from what it
/// has. A value, one per VM (<see cref="Cpu.Model"/>, <c>nestor run --cpu-model intel|amd</c>): the identity (vendor,
/// signature, brand, the CPUID leaves a vendor defines) and the few behaviours where Intel's and AMD's processors differ
/// and the machine meets them (SYSCALL/SYSRET outside 64-bit mode, SYSENTER/SYSEXIT in long mode, SYSRET with a
/// non-canonical RCX). The features are the same for both: the ones the machine implements
/// (<see cref="CpuidFeatures.Reported"/>, the static members below), never a real part's, so the machine shows fewer
/// than the part it is named after (no x87, SSE, AVX, XSAVE). CPUID (Nestor.Hypervisor's SoftwareCpuid) and the
/// CPU's own checks (MOV CR4, WRMSR, SYSCALL) read it.</summary>
public sealed class ProcessorModel
{
    /// <summary>The default, an Intel part (so that standard software takes the Intel paths: vendor <c>GenuineIntel</c>,
    /// Intel SDM Vol. 2A "CPUID", leaf 0): family 6, model 0x3D, stepping 4, the signature 0x000306D4 of the
    /// 5th-generation Core (Broadwell-U, e.g. the Core i7-5500U), the first client part with SMAP, the newest feature
    /// the model advertises. SYSCALL and SYSRET are #UD outside 64-bit mode and SYSENTER/SYSEXIT valid in IA-32e mode
    /// (SDM Vol. 2B SYSCALL, SYSRET, SYSENTER); SYSRET to a non-canonical RCX is #GP(0) in ring 0 (Vol. 2B SYSRET).</summary>
    public static readonly ProcessorModel Intel = new(ProcessorVendor.Intel, "intel", "GenuineIntel", 0x0003_06D4, 6, 0x3D, 4,
        "Nestor software CPU (Intel Broadwell-class)", highestBasicLeaf: 0xB);

    /// <summary>An AMD part, what kvm-unit-tests' <c>syscall</c> asks QEMU for (x86/unittests.cfg: <c>-cpu
    /// Opteron_G1,vendor=AuthenticAMD</c>): vendor <c>AuthenticAMD</c>, family 0xF model 6 stepping 1 (signature
    /// 0x00000F61), QEMU's Opteron_G1 ("AMD Opteron 240 (Gen 1 Class Opteron)", target/i386/cpu.c builtin_x86_defs:
    /// family 15, model 6, stepping 1). AMD64 APM Vol. 3: SYSCALL and SYSRET are valid in compatibility and legacy
    /// mode (SYSCALL from compatibility mode enters 64-bit mode at IA32_CSTAR), SYSENTER and SYSEXIT are #UD in long
    /// mode, and SYSRET does not check RCX: a non-canonical return faults at CPL 3, on the fetch. Leaf 0x80000001
    /// repeats the signature in EAX and the leaf-1 EDX bits AMD defines there (APM Vol. 3 Appendix E.4.2).</summary>
    public static readonly ProcessorModel Amd = new(ProcessorVendor.Amd, "amd", "AuthenticAMD", 0x0000_0F61, 0xF, 6, 1,
        "Nestor software CPU (AMD Opteron-class)", highestBasicLeaf: 7);

    /// <summary>Every model, for option parsing and listings.</summary>
    public static readonly IReadOnlyList<ProcessorModel> All = [Intel, Amd];

    private ProcessorModel(ProcessorVendor vendor, string name, string vendorString, uint signature, int family, int model,
        int stepping, string brand, uint highestBasicLeaf)
    {
        Kind = vendor;
        Name = name;
        Vendor = vendorString;
        Signature = signature;
        Family = family;
        Model = model;
        Stepping = stepping;
        BrandString = brand;
        HighestBasicLeaf = highestBasicLeaf;
        IsAmd = vendor == ProcessorVendor.Amd;
    }

    /// <summary>The model by its option name (<c>intel</c>, <c>amd</c>), or null.</summary>
    public static ProcessorModel? Named(string name) => All.FirstOrDefault(m => string.Equals(m.Name, name, StringComparison.OrdinalIgnoreCase));

    /// <summary>Whose processor it is.</summary>
    public ProcessorVendor Kind { get; }

    /// <summary>True for the AMD model: one field read where the behaviours differ.</summary>
    public bool IsAmd { get; }

    /// <summary>The option name: <c>intel</c> or <c>amd</c> (<c>--cpu-model</c>, snapshots' <c>cpu-model=</c>).</summary>
    public string Name { get; }

    /// <summary>The vendor string (CPUID leaf 0, EBX:EDX:ECX).</summary>
    public string Vendor { get; }

    /// <summary>The processor signature (CPUID leaf 1, EAX: stepping 3:0, model 7:4, family 11:8, extended model
    /// 19:16, extended family 27:20; SDM Vol. 2A Figure 3-6, APM Vol. 3 E.3.2); also EDX after INIT.</summary>
    public uint Signature { get; }

    /// <summary>The display family.</summary>
    public int Family { get; }

    /// <summary>The display model.</summary>
    public int Model { get; }

    /// <summary>The stepping.</summary>
    public int Stepping { get; }

    /// <summary>The brand string (CPUID leaves 0x80000002–0x80000004, 48 bytes with the terminating zero): says what it
    /// is, not the part's marketing name, since its features are not the part's.</summary>
    public string BrandString { get; }

    /// <summary>The highest basic CPUID leaf: 0xB on Intel (extended topology, <see cref="ExtendedTopology"/>, which
    /// every x2APIC part has: it is where software finds its x2APIC ID; 0xA, the architectural PMU leaf, says there
    /// is none); 7 on AMD, which has no leaf 0xA (nor Intel's 4 and 0xB).</summary>
    public uint HighestBasicLeaf { get; }

    /// <inheritdoc/>
    public override string ToString() => Name;

    /// <summary>CPUID leaf 0BH, extended topology enumeration (SDM Vol. 2A CPUID, Table 3-8 "Extended Topology
    /// Enumeration Leaf"), for the logical processor whose x2APIC ID is <paramref name="x2ApicId"/> among
    /// <paramref name="processors"/>: each vCPU is one core of one package, with one thread, and APIC IDs are 0 to
    /// N − 1. Subleaf 0 is the SMT level (type 1): one logical processor, no bits to shift off the x2APIC ID to get
    /// the core; subleaf 1 the core level (type 2): all N, and as many bits as the highest ID needs to get the package
    /// (ID 0); a higher subleaf is invalid (type 0, EAX = EBX = 0). ECX[7:0] echoes the subleaf and EDX is the x2APIC
    /// ID at every subleaf, the ID software compares with its APIC's (Vol. 3A §10.12.8.1).</summary>
    public static (uint Eax, uint Ebx, uint Ecx, uint Edx) ExtendedTopology(uint subleaf, uint x2ApicId, int processors)
    {
        uint level = subleaf & 0xFF;
        uint coreBits = processors <= 1 ? 0 : 32 - (uint)System.Numerics.BitOperations.LeadingZeroCount((uint)processors - 1);
        return level switch
        {
            0 => (0, 1, (1u << 8) | level, x2ApicId),
            1 => (coreBits, (uint)processors, (2u << 8) | level, x2ApicId),
            _ => (0, 0, level, x2ApicId),
        };
    }

    /// <summary>Physical-address width (CPUID 0x80000008 EAX[7:0]): the page walker takes every bit of a
    /// paging-structure entry up to bit 51 as address (Vol. 3A §4.5.4), so the machine's MAXPHYADDR is 52.</summary>
    public const int PhysicalAddressBits = 52;

    /// <summary>Linear-address width (CPUID 0x80000008 EAX[15:8]): 4-level paging, 48 bits.</summary>
    public const int LinearAddressBits = 48;

    /// <summary>Bytes per cache line CLFLUSH reports (CPUID.1:EBX[15:8] counts 8-byte units).</summary>
    public const int CacheLineBytes = 64;

    /// <summary>Whether the machine implements <paramref name="feature"/> (and so reports it in CPUID).</summary>
    public static bool Has(CpuFeature feature) => Implemented[(int)feature];

    private static readonly bool[] Implemented = BuildImplemented();

    private static bool[] BuildImplemented()
    {
        var implemented = new bool[Enum.GetValues<CpuFeature>().Max(f => (int)f) + 1];
        implemented[(int)CpuFeature.None] = true;
        foreach (var f in CpuidFeatures.Reported)
        {
            implemented[(int)f.Feature] = true;
        }
        return implemented;
    }

    /// <summary>CR4's bits (SDM Vol. 3A §2.5, Figure 2-7) and the feature each belongs to; a bit whose feature the
    /// machine lacks is reserved: MOV to CR4 setting it raises #GP(0) (Vol. 2B, MOV—Move to/from Control Registers).
    /// PCE has no CPUID flag (it only lets CPL &gt; 0 run RDPMC).</summary>
    public static readonly IReadOnlyList<(int Bit, string Name, CpuFeature Feature)> Cr4Bits =
    [
        (0, "VME", CpuFeature.Virtual8086ModeExtensions),
        (1, "PVI", CpuFeature.Virtual8086ModeExtensions),
        (2, "TSD", CpuFeature.TimeStampCounter),
        (3, "DE", CpuFeature.DebuggingExtensions),
        (4, "PSE", CpuFeature.PageSizeExtension),
        (5, "PAE", CpuFeature.PhysicalAddressExtension),
        (6, "MCE", CpuFeature.MachineCheckException),
        (7, "PGE", CpuFeature.PageGlobal),
        (8, "PCE", CpuFeature.None),
        (9, "OSFXSR", CpuFeature.FxsaveFxrstor),
        (10, "OSXMMEXCPT", CpuFeature.Sse),
        (11, "UMIP", CpuFeature.UserModeInstructionPrevention),
        (12, "LA57", CpuFeature.FiveLevelPaging),
        (13, "VMXE", CpuFeature.VirtualMachineExtensions),
        (14, "SMXE", CpuFeature.SaferModeExtensions),
        (16, "FSGSBASE", CpuFeature.FsGsBase),
        (17, "PCIDE", CpuFeature.ProcessContextIdentifiers),
        (18, "OSXSAVE", CpuFeature.Xsave),
        (20, "SMEP", CpuFeature.SupervisorModeExecutionPrevention),
        (21, "SMAP", CpuFeature.SupervisorModeAccessPrevention),
        (22, "PKE", CpuFeature.ProtectionKeys),
        (23, "CET", CpuFeature.ControlFlowEnforcement),
        (24, "PKS", CpuFeature.ProtectionKeysSupervisor),
    ];

    /// <summary>The CR4 bits software may set on this machine: those of <see cref="Cr4Bits"/> whose feature it has.</summary>
    public static readonly ulong Cr4Writable = Cr4Bits.Where(b => Has(b.Feature)).Aggregate(0UL, (m, b) => m | (1UL << b.Bit));

    /// <summary>IA32_EFER bits software may set (SDM Vol. 3A §2.2.1, Table 2-1): SCE with SYSCALL, LME and LMA with long
    /// mode (LMA is read-only), NXE with NX; every other bit is reserved (WRMSR raises #GP).</summary>
    public static readonly ulong EferWritable =
        (Has(CpuFeature.SystemCall) ? Architecture.Efer.SystemCallEnable : 0) |
        (Has(CpuFeature.LongMode) ? Architecture.Efer.LongModeEnable | Architecture.Efer.LongModeActive : 0) |
        (Has(CpuFeature.NoExecute) ? Architecture.Efer.NoExecuteEnable : 0);

    /// <summary>IA32_MISC_ENABLE at reset (SDM Vol. 4 Table 2-2): fast strings (bit 0), and the read-only bits saying
    /// branch trace storage (bit 11) and PEBS (bit 12) are unavailable; bit 7 (performance monitoring available)
    /// is clear, as leaf 0xA says.</summary>
    public const ulong MiscEnableReset = 1UL | (1UL << 11) | (1UL << 12);

    /// <summary>The read-only bits of IA32_MISC_ENABLE: 7, 11, 12.</summary>
    public const ulong MiscEnableReadOnly = (1UL << 7) | (1UL << 11) | (1UL << 12);

    /// <summary>IA32_MCG_CAP (SDM Vol. 3B §16.3.1.1, Figure 16-2): bits 7:0 the number of error-reporting banks, 0
    /// here; bit 8 MCG_CTL_P clear (no IA32_MCG_CTL); and none of the extended, CMCI, threshold, software-recovery
    /// or local-machine-check capabilities (bits 9, 10, 11, 24, 27). The model has no hardware that can fail, so a
    /// bank would have nothing to log; every bank MSR (0x400 and up) and IA32_MCG_CTL raise #GP(0).</summary>
    public const ulong MachineCheckCapabilities = 0;

    /// <summary>The bits of IA32_MCG_STATUS software may write (§16.3.1.2, Figure 16-3): RIPV, EIPV and MCIP
    /// ("software can set or clear this flag"); LMCE_S (bit 3) exists only with MCG_CAP.MCG_LMCE_P and the rest is
    /// reserved, so setting them is #GP(0) (SDM Vol. 2B WRMSR).</summary>
    public const ulong MachineCheckStatusWritable = 0b111;

    /// <summary>The bits of a physical address above <see cref="PhysicalAddressBits"/> (reserved in CR3 and
    /// IA32_APIC_BASE).</summary>
    public const ulong AboveMaxPhysicalAddress = ~((1UL << PhysicalAddressBits) - 1);
}

/// <summary>Whose processor a <see cref="ProcessorModel"/> is.</summary>
public enum ProcessorVendor
{
    /// <summary>GenuineIntel.</summary>
    Intel,

    /// <summary>AuthenticAMD.</summary>
    Amd,
}
