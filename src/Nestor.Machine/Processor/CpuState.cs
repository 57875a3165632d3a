using System.Runtime.CompilerServices;

namespace Nestor.Machine.Processor;

/// <summary>A segment register: selector and the descriptor cache the CPU loaded with it.</summary>
public struct Segment
{
    public ushort Selector;
    public ulong Base;
    public uint Limit;
    /// <summary>Access byte (type, S, DPL, P) in bits 0–7 and flags (AVL, L, D/B, G) in bits 12–15, as a descriptor
    /// holds them in bits 40–55.</summary>
    public ushort Attributes;

    public readonly bool LongMode => (Attributes & 0x2000) != 0;
    public readonly int PrivilegeLevel => (Attributes >> 5) & 3;
}

/// <summary>RFLAGS bits (Intel SDM Vol. 1 §3.4.3).</summary>
public static class FlagBits
{
    public const ulong Carry = 1 << 0, Reserved1 = 1 << 1, Parity = 1 << 2, Adjust = 1 << 4, Zero = 1 << 6, Sign = 1 << 7,
        Trap = 1 << 8, Interrupt = 1 << 9, Direction = 1 << 10, Overflow = 1 << 11, IoPrivilege = 3 << 12, Nested = 1 << 14,
        Resume = 1 << 16, Virtual8086 = 1 << 17, AlignmentCheck = 1 << 18, Identification = 1 << 21;

    /// <summary>The six arithmetic status flags.</summary>
    public const ulong Status = Carry | Parity | Adjust | Zero | Sign | Overflow;
}

/// <summary>The 16 general-purpose registers in encoding order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8–R15),
/// stored inline so that a <see cref="CpuState"/> copied is a copy, not a shared array.</summary>
[InlineArray(16)]
public struct GeneralRegisters
{
    private ulong element;
}

/// <summary>Everything architectural about one x86-64 CPU of Nestor's model, as a value: what a snapshot saves and
/// what <see cref="Cpu.LoadState"/> restores. Copying it copies it all (no array or object inside).
/// <para>Modelled and here: the GPRs, RIP, RFLAGS (the lazy status flags materialised), the eight segment registers with
/// their hidden descriptor caches, GDTR, IDTR, CR0, CR2, CR3, CR4, CR8, EFER, every MSR RDMSR/WRMSR handle
/// (IA32_APIC_BASE, STAR, LSTAR, CSTAR, SFMASK, FS/GS base as the segments' bases, KERNEL_GS_BASE, TSC_AUX, the SYSENTER MSRs; the TSC is the
/// clock), the clock (retired instructions and idle cycles), the STI/MOV-SS interrupt shadow, the debug registers and the debug
/// traps a MOV SS holds, halted, and the local
/// APIC.</para>
/// <para>The x87 FPU's state (<see cref="X87State"/>: the machine executes its control instructions, not its
/// arithmetic). Not modelled, hence not here: MMX, SSE/AVX registers and MXCSR (the model executes no vector
/// instruction), MTRRs, performance counters, and
/// NMI/SMI/INIT state. Not state but rebuildable caches, which <see cref="Cpu.LoadState"/> drops: the TLBs and
/// page-walk caches of the MMU, the decoded-instruction cache, and the fetch, read and write fast-path translations.</para></summary>
public struct CpuState
{
    /// <summary>General-purpose registers in encoding order.</summary>
    public GeneralRegisters Registers;
    public ulong Rip;
    /// <summary>RFLAGS with every status flag computed.</summary>
    public ulong Rflags;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer;
    public Segment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldtr;
    public ulong GdtBase, IdtBase;
    public ushort GdtLimit, IdtLimit;
    /// <summary>IA32_KERNEL_GS_BASE, IA32_STAR, IA32_LSTAR, IA32_CSTAR, IA32_FMASK, IA32_TSC_AUX, IA32_APIC_BASE.</summary>
    public ulong KernelGsBase, Star, LongStar, CompatibilityStar, SyscallFlagMask, TscAux, ApicBase;
    /// <summary>IA32_SYSENTER_CS, IA32_SYSENTER_ESP, IA32_SYSENTER_EIP (SDM Vol. 3A §5.8.7.1).</summary>
    public ulong SysenterCs, SysenterEsp, SysenterEip;
    /// <summary>IA32_PAT (SDM Vol. 3A §12.12.2) and IA32_MISC_ENABLE (Vol. 4 Table 2-2): stored, without effect on a
    /// model that has no caches, no thermal control and no fast-string choice.</summary>
    public ulong PageAttributeTable, MiscEnable;
    /// <summary>IA32_MCG_STATUS (SDM Vol. 3B §16.3.1.2): RIPV, EIPV and MCIP as software last wrote them (the model
    /// signals no machine check, so only software sets them); 0 at reset.</summary>
    public ulong MachineCheckStatus;
    /// <summary>The debug registers DR0–DR3 (breakpoint addresses), DR6 (status) and DR7 (control) as MOV DR reads and
    /// writes them (SDM Vol. 3B §17.2); the breakpoints DR7 enables are matched (Cpu.Debug.cs).</summary>
    public ulong Dr0, Dr1, Dr2, Dr3, Dr6, Dr7;
    /// <summary>Debug traps a MOV SS or POP SS held past the next instruction (SDM Vol. 3A §6.8.3), in DR6's layout
    /// (B0–B3, BS), as the VMCS's "pending debug exceptions" field holds them (Vol. 3C §25.4.2); 0 when none.</summary>
    public ulong PendingDebugExceptions;
    /// <summary>Instructions retired: with <see cref="IdleCycles"/>, the clock the TSC and the APIC timer count.</summary>
    public long InstructionsRetired;
    /// <summary>Clock ticks skipped while halted waiting for the timer.</summary>
    public long IdleCycles;
    /// <summary>Interrupts are blocked while <see cref="InstructionsRetired"/> is at most this (STI, MOV SS; SDM Vol. 3A
    /// §6.8.3), else -1.</summary>
    public long InterruptShadowUntil;
    /// <summary>The CPU executed HLT and stopped for good (no timer to wake it).</summary>
    public bool Halted;
    /// <summary>An NMI was delivered and no IRET has run since: further NMIs wait (SDM Vol. 3A §6.7.1).</summary>
    public bool NmiBlocked;
    /// <summary>The processor is in the wait-for-SIPI state (SDM Vol. 3A §8.4.1): an application processor after
    /// power-up or INIT, which executes nothing until a start-up IPI gives it a real-mode entry point.</summary>
    public bool WaitingForStartup;
    /// <summary>The local APIC.</summary>
    public LocalApicState Apic;
    /// <summary>The x87 FPU's registers (Cpu.X87: which x87 instructions the machine executes).</summary>
    public X87State X87;

    /// <summary>The state of a CPU after reset as this model has it (RFLAGS bit 1 set, APIC at its default base,
    /// enabled, bootstrap processor), before a loader sets long mode up.</summary>
    /// <summary>DR6's bits that read as 1 (4–11, 16–31) and DR7's (10) (SDM Vol. 3B §17.2.3, §17.2.4).</summary>
    public const ulong DebugStatusFixed = 0xFFFF_0FF0, DebugControlFixed = 0x400;

    public static CpuState Reset => new()
    {
        Rflags = FlagBits.Reserved1,
        ApicBase = 0xFEE0_0900,
        PageAttributeTable = 0x0007_0406_0007_0406,
        MiscEnable = ProcessorModel.MiscEnableReset,
        Dr6 = DebugStatusFixed,
        Dr7 = DebugControlFixed,
        InterruptShadowUntil = -1,
        Apic = LocalApicState.Reset,
        X87 = X87State.PowerUp,
    };
}
