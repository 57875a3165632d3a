using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.State;

/// <summary>Converts between the machine's <see cref="CpuState"/> (the vCPU's state, kept by <see cref="Vcpu"/>)
/// and <see cref="VcpuState"/>, its view for people and JSON (<c>--dump-state</c>) and the loaders' description of the
/// first instruction's state.</summary>
public static class CpuStateConversion
{
    /// <summary>A reset CPU with the registers <paramref name="s"/> names (the rest as after reset).</summary>
    public static CpuState ToCpuState(VcpuState s)
    {
        var c = CpuState.Reset;
        (c.Registers[0], c.Registers[1], c.Registers[2], c.Registers[3]) = (s.Rax, s.Rcx, s.Rdx, s.Rbx);
        (c.Registers[4], c.Registers[5], c.Registers[6], c.Registers[7]) = (s.Rsp, s.Rbp, s.Rsi, s.Rdi);
        (c.Registers[8], c.Registers[9], c.Registers[10], c.Registers[11]) = (s.R8, s.R9, s.R10, s.R11);
        (c.Registers[12], c.Registers[13], c.Registers[14], c.Registers[15]) = (s.R12, s.R13, s.R14, s.R15);
        c.Rip = s.Rip;
        c.Rflags = s.Rflags | FlagBits.Reserved1;
        (c.Cr0, c.Cr2, c.Cr3, c.Cr4, c.Cr8, c.Efer) = (s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Cr8, s.Efer);
        c.Cs = ToSegment(s.Cs);
        c.Ds = ToSegment(s.Ds);
        c.Es = ToSegment(s.Es);
        c.Fs = ToSegment(s.Fs);
        c.Gs = ToSegment(s.Gs);
        c.Ss = ToSegment(s.Ss);
        c.Tr = ToSegment(s.Tr);
        c.Ldtr = ToSegment(s.Ldt);
        (c.GdtBase, c.GdtLimit, c.IdtBase, c.IdtLimit) = (s.Gdtr.Base, s.Gdtr.Limit, s.Idtr.Base, s.Idtr.Limit);
        (c.KernelGsBase, c.Star, c.LongStar, c.SyscallFlagMask) = (s.KernelGsBase, s.Star, s.LongStar, s.SyscallFlagMask);
        return c;
    }

    /// <summary><paramref name="previous"/> with the registers <paramref name="s"/> holds (what an engine that
    /// cannot see the rest, KVM, read back at the end of a run); the clock, the APIC, CSTAR, TSC_AUX, APIC base, the
    /// SYSENTER MSRs, PAT, MISC_ENABLE, MCG_STATUS, the debug registers, NMI blocking, the interrupt shadow and halted stay as they were.</summary>
    public static CpuState WithRegisters(in CpuState previous, VcpuState s)
    {
        var c = ToCpuState(s);
        c.CompatibilityStar = previous.CompatibilityStar;
        c.TscAux = previous.TscAux;
        c.ApicBase = previous.ApicBase;
        c.InstructionsRetired = previous.InstructionsRetired;
        c.IdleCycles = previous.IdleCycles;
        c.InterruptShadowUntil = previous.InterruptShadowUntil;
        c.Halted = previous.Halted;
        c.Apic = previous.Apic;
        (c.SysenterCs, c.SysenterEsp, c.SysenterEip) = (previous.SysenterCs, previous.SysenterEsp, previous.SysenterEip);
        (c.PageAttributeTable, c.MiscEnable, c.NmiBlocked) = (previous.PageAttributeTable, previous.MiscEnable, previous.NmiBlocked);
        c.MachineCheckStatus = previous.MachineCheckStatus;
        (c.Dr0, c.Dr1, c.Dr2, c.Dr3) = (previous.Dr0, previous.Dr1, previous.Dr2, previous.Dr3);
        (c.Dr6, c.Dr7, c.PendingDebugExceptions) = (previous.Dr6, previous.Dr7, previous.PendingDebugExceptions);
        return c;
    }

    /// <summary>The view of <paramref name="c"/> (FS.base and GS.base are the segments' bases).</summary>
    public static VcpuState ToVcpuState(in CpuState c) => new()
    {
        Rax = c.Registers[0],
        Rcx = c.Registers[1],
        Rdx = c.Registers[2],
        Rbx = c.Registers[3],
        Rsp = c.Registers[4],
        Rbp = c.Registers[5],
        Rsi = c.Registers[6],
        Rdi = c.Registers[7],
        R8 = c.Registers[8],
        R9 = c.Registers[9],
        R10 = c.Registers[10],
        R11 = c.Registers[11],
        R12 = c.Registers[12],
        R13 = c.Registers[13],
        R14 = c.Registers[14],
        R15 = c.Registers[15],
        Rip = c.Rip,
        Rflags = c.Rflags,
        Cr0 = c.Cr0,
        Cr2 = c.Cr2,
        Cr3 = c.Cr3,
        Cr4 = c.Cr4,
        Cr8 = c.Cr8,
        Efer = c.Efer,
        Cs = FromSegment(c.Cs),
        Ds = FromSegment(c.Ds),
        Es = FromSegment(c.Es),
        Fs = FromSegment(c.Fs),
        Gs = FromSegment(c.Gs),
        Ss = FromSegment(c.Ss),
        Tr = FromSegment(c.Tr),
        Ldt = FromSegment(c.Ldtr),
        Gdtr = new DescriptorTableState(c.GdtBase, c.GdtLimit),
        Idtr = new DescriptorTableState(c.IdtBase, c.IdtLimit),
        FsBase = c.Fs.Base,
        GsBase = c.Gs.Base,
        KernelGsBase = c.KernelGsBase,
        Star = c.Star,
        LongStar = c.LongStar,
        SyscallFlagMask = c.SyscallFlagMask,
    };

    /// <summary>A segment's hidden part as the machine holds it (access byte and flags packed as in a descriptor).</summary>
    public static Segment ToSegment(SegmentState s) => new()
    {
        Selector = s.Selector,
        Base = s.Base,
        Limit = s.Limit,
        Attributes = (ushort)(s.Type | (s.CodeOrData ? 0x10 : 0) | (s.PrivilegeLevel << 5) | (s.Present ? 0x80 : 0) |
                              (s.LongMode ? 0x2000 : 0) | (s.DefaultBig ? 0x4000 : 0) | (s.Granularity ? 0x8000 : 0)),
    };

    /// <summary>The machine's segment as a <see cref="SegmentState"/> (a segment not present is unusable).</summary>
    public static SegmentState FromSegment(Segment s) => new(s.Selector, s.Base, s.Limit, (byte)(s.Attributes & 0xF),
        (s.Attributes & 0x10) != 0, (byte)((s.Attributes >> 5) & 3), (s.Attributes & 0x80) != 0, (s.Attributes & 0x2000) != 0,
        (s.Attributes & 0x4000) != 0, (s.Attributes & 0x8000) != 0, (s.Attributes & 0x80) == 0);
}
