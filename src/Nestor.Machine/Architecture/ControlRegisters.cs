namespace Nestor.Machine.Architecture;

/// <summary>CR0 bits (Intel SDM Vol. 3A §2.5).</summary>
public static class Cr0
{
    public const ulong ProtectionEnable = 1UL << 0;
    public const ulong MonitorCoprocessor = 1UL << 1;
    public const ulong Emulation = 1UL << 2;
    public const ulong TaskSwitched = 1UL << 3;
    public const ulong ExtensionType = 1UL << 4;
    public const ulong NumericError = 1UL << 5;
    public const ulong WriteProtect = 1UL << 16;
    public const ulong AlignmentMask = 1UL << 18;
    public const ulong NotWriteThrough = 1UL << 29;
    public const ulong CacheDisable = 1UL << 30;
    public const ulong Paging = 1UL << 31;
}

/// <summary>CR4 bits (Intel SDM Vol. 3A §2.5).</summary>
public static class Cr4
{
    /// <summary>TSD: RDTSC and RDTSCP are privileged (#GP at CPL &gt; 0).</summary>
    public const ulong TimeStampDisable = 1UL << 2;
    /// <summary>DE: debugging extensions: DR4/DR5 are #UD instead of DR6/DR7, and DR7 R/W = 10 is an I/O breakpoint
    /// (SDM Vol. 3B §17.2.2, §17.2.4).</summary>
    public const ulong DebuggingExtensions = 1UL << 3;
    public const ulong PageSizeExtensions = 1UL << 4;
    public const ulong PhysicalAddressExtension = 1UL << 5;
    /// <summary>MCE: the machine-check exception (vector 18) is enabled (else a machine check shuts down).</summary>
    public const ulong MachineCheckEnable = 1UL << 6;
    public const ulong PageGlobalEnable = 1UL << 7;
    public const ulong OsFxsr = 1UL << 9;
    public const ulong OsXmmExceptions = 1UL << 10;
    public const ulong ProcessContextIdentifiers = 1UL << 17;
    public const ulong SupervisorExecutionPrevention = 1UL << 20;
    public const ulong SupervisorAccessPrevention = 1UL << 21;
}

/// <summary>IA32_EFER bits (Intel SDM Vol. 3A §2.2.1) and the MSR numbers a 64-bit kernel uses.</summary>
public static class Efer
{
    public const ulong SystemCallEnable = 1UL << 0;
    public const ulong LongModeEnable = 1UL << 8;
    public const ulong LongModeActive = 1UL << 10;
    public const ulong NoExecuteEnable = 1UL << 11;
}

/// <summary>Model-specific register numbers (Intel SDM Vol. 4).</summary>
public static class Msr
{
    public const uint TimeStampCounter = 0x10;
    public const uint ApicBase = 0x1B;
    public const uint SysenterCs = 0x174;
    public const uint SysenterEsp = 0x175;
    public const uint SysenterEip = 0x176;
    /// <summary>The machine-check architecture's global registers (SDM Vol. 3B §16.3.1): IA32_MCG_CAP (read-only),
    /// IA32_MCG_STATUS, IA32_MCG_CTL (present only with MCG_CAP.MCG_CTL_P); the error-reporting banks start at
    /// IA32_MC0_CTL, four MSRs each (CTL, STATUS, ADDR, MISC).</summary>
    public const uint MachineCheckCapabilities = 0x179, MachineCheckStatus = 0x17A, MachineCheckControl = 0x17B;
    public const uint MachineCheckBank0Control = 0x400;
    public const uint TscDeadline = 0x6E0;
    /// <summary>The x2APIC registers (SDM Vol. 3A §10.12.1.2, Table 10-6): MSR 0x800 + (xAPIC offset >> 4).</summary>
    public const uint X2ApicFirst = 0x800, X2ApicLast = 0x8FF;
    public const uint MiscEnable = 0x1A0;
    public const uint PageAttributeTable = 0x277;
    public const uint Efer = 0xC000_0080;
    public const uint Star = 0xC000_0081;
    public const uint LongStar = 0xC000_0082;
    public const uint CompatibilityStar = 0xC000_0083;
    public const uint SyscallFlagMask = 0xC000_0084;
    public const uint FsBase = 0xC000_0100;
    public const uint GsBase = 0xC000_0101;
    public const uint KernelGsBase = 0xC000_0102;
    public const uint TscAux = 0xC000_0103;
}

/// <summary>Paging-structure entry bits for 4-level paging (Intel SDM Vol. 3A §4.5, Tables 4-15 to 4-20).</summary>
public static class PageTableEntry
{
    public const ulong Present = 1UL << 0;
    public const ulong Writable = 1UL << 1;
    public const ulong User = 1UL << 2;
    public const ulong WriteThrough = 1UL << 3;
    public const ulong CacheDisable = 1UL << 4;
    public const ulong Accessed = 1UL << 5;
    public const ulong Dirty = 1UL << 6;
    /// <summary>PS: the entry maps a 2 MiB (PDE) or 1 GiB (PDPTE) page instead of pointing to a table.</summary>
    public const ulong LargePage = 1UL << 7;
    public const ulong Global = 1UL << 8;
    public const ulong NoExecute = 1UL << 63;
    public const ulong AddressMask = 0x000F_FFFF_FFFF_F000;
}

/// <summary>Exception vectors (Intel SDM Vol. 3A §6.3.1, Table 6-1).</summary>
public enum ExceptionVector : byte
{
    DivideError = 0,
    Debug = 1,
    NonMaskableInterrupt = 2,
    Breakpoint = 3,
    Overflow = 4,
    BoundRangeExceeded = 5,
    InvalidOpcode = 6,
    DeviceNotAvailable = 7,
    DoubleFault = 8,
    InvalidTss = 10,
    SegmentNotPresent = 11,
    StackFault = 12,
    GeneralProtection = 13,
    PageFault = 14,
    FloatingPointError = 16,
    AlignmentCheck = 17,
    MachineCheck = 18,
    SimdFloatingPoint = 19,
    Virtualization = 20,
    ControlProtection = 21,
}
