namespace Nestor.Hypervisor.State;

/// <summary>A segment register as the CPU holds it: the visible selector and the hidden descriptor cache.</summary>
public record struct SegmentState(ushort Selector, ulong Base, uint Limit, byte Type, bool CodeOrData, byte PrivilegeLevel,
    bool Present, bool LongMode, bool DefaultBig, bool Granularity, bool Unusable = false)
{
    /// <summary>A null (unusable) segment.</summary>
    public static SegmentState Null => new(0, 0, 0, 0, false, 0, false, false, false, false, true);
}

/// <summary>GDTR or IDTR.</summary>
public record struct DescriptorTableState(ulong Base, ushort Limit);

/// <summary>The architectural state of one vCPU, independent of the engine that runs it: what
/// <c>nestor run --dump-state</c> writes, and what the boot loader sets before the first instruction.</summary>
public sealed class VcpuState
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp, R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer;
    public SegmentState Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public DescriptorTableState Gdtr, Idtr;

    /// <summary>FS.base, GS.base and IA32_KERNEL_GS_BASE, and the SYSCALL MSRs, when the engine could read them.</summary>
    public ulong FsBase, GsBase, KernelGsBase, Star, LongStar, SyscallFlagMask;

    /// <summary>Current privilege level (CS.RPL in long mode).</summary>
    public int PrivilegeLevel => Cs.Selector & 3;

    /// <summary>True when RFLAGS.IF is set (maskable interrupts enabled).</summary>
    public bool InterruptsEnabled => (Rflags & (1UL << 9)) != 0;

    /// <summary>The 16 general-purpose registers by name, in encoding order.</summary>
    public IEnumerable<(string Name, ulong Value)> GeneralRegisters =>
    [
        ("rax", Rax), ("rcx", Rcx), ("rdx", Rdx), ("rbx", Rbx), ("rsp", Rsp), ("rbp", Rbp), ("rsi", Rsi), ("rdi", Rdi),
        ("r8", R8), ("r9", R9), ("r10", R10), ("r11", R11), ("r12", R12), ("r13", R13), ("r14", R14), ("r15", R15),
    ];

    /// <summary>The segment registers by name.</summary>
    public IEnumerable<(string Name, SegmentState Segment)> Segments =>
        [("cs", Cs), ("ds", Ds), ("es", Es), ("fs", Fs), ("gs", Gs), ("ss", Ss), ("tr", Tr), ("ldtr", Ldt)];
}
