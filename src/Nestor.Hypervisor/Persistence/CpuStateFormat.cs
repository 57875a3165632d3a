using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Persistence;

/// <summary>The binary layout of a <see cref="CpuState"/> inside a vCPU section: every field in declaration order,
/// little-endian, segments as selector, base, limit, attributes. Version 2 appends the SYSENTER MSRs and the local
/// APIC's other LVT entries, LDR, DFR, ICR, TSC deadline, hardware-disable flag, IPI counters, the pending NMI and NMI blocking, IA32_PAT and IA32_MISC_ENABLE; a version-1 section
/// reads them as at reset. Version 3 appends the APIC ID, the wait-for-SIPI state and the interprocessor-interrupt
/// counters (several processors); an older section reads as APIC ID 0, running. Version 4 appends the x87 FPU (FCW, FSW,
/// FTW, FOP, the pointer selectors and offsets, R0–R7); an older section reads it as after RESET. Version 5 appends
/// IA32_MCG_STATUS (the machine-check architecture); an older section reads it as 0, its reset value. Version 6 appends the
/// debug registers DR0–DR3, DR6, DR7 and the debug traps a MOV SS holds (the debug architecture); an older section reads
/// them as at reset (no breakpoint armed, nothing held).</summary>
public static class CpuStateFormat
{
    /// <summary>Writes every field of <paramref name="s"/>.</summary>
    public static void Write(SnapshotWriter w, in CpuState s)
    {
        for (int i = 0; i < 16; i++)
        {
            w.WriteUInt64(s.Registers[i]);
        }
        w.WriteUInt64(s.Rip);
        w.WriteUInt64(s.Rflags);
        foreach (ulong control in (ReadOnlySpan<ulong>)[s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Cr8, s.Efer])
        {
            w.WriteUInt64(control);
        }
        foreach (var segment in (ReadOnlySpan<Segment>)[s.Cs, s.Ds, s.Es, s.Fs, s.Gs, s.Ss, s.Tr, s.Ldtr])
        {
            w.WriteUInt16(segment.Selector);
            w.WriteUInt64(segment.Base);
            w.WriteUInt32(segment.Limit);
            w.WriteUInt16(segment.Attributes);
        }
        w.WriteUInt64(s.GdtBase);
        w.WriteUInt16(s.GdtLimit);
        w.WriteUInt64(s.IdtBase);
        w.WriteUInt16(s.IdtLimit);
        foreach (ulong msr in (ReadOnlySpan<ulong>)[s.KernelGsBase, s.Star, s.LongStar, s.CompatibilityStar, s.SyscallFlagMask, s.TscAux, s.ApicBase])
        {
            w.WriteUInt64(msr);
        }
        w.WriteInt64(s.InstructionsRetired);
        w.WriteInt64(s.IdleCycles);
        w.WriteInt64(s.InterruptShadowUntil);
        w.WriteBoolean(s.Halted);
        var a = s.Apic;
        w.WriteUInt32(a.SpuriousVector);
        w.WriteUInt32(a.TaskPriority);
        w.WriteUInt32(a.LvtTimer);
        w.WriteUInt32(a.InitialCount);
        w.WriteUInt32(a.DivideConfiguration);
        w.WriteInt64(a.Period);
        w.WriteInt64(a.Deadline);
        WriteBitmap(w, a.Requests);
        WriteBitmap(w, a.InService);
        WriteBitmap(w, a.TriggerMode);
        w.WriteInt64(a.TimerInterrupts);
        w.WriteInt64(a.ExternalRequests);
        w.WriteInt64(a.Refused);
        w.WriteInt64(a.EndOfInterrupts);
        // Version 2.
        w.WriteUInt64(s.SysenterCs);
        w.WriteUInt64(s.SysenterEsp);
        w.WriteUInt64(s.SysenterEip);
        foreach (uint register in (ReadOnlySpan<uint>)[a.LvtThermal, a.LvtPerformance, a.LvtLint0, a.LvtLint1, a.LvtError,
                     a.LogicalDestination, a.DestinationFormat, a.CommandHigh, a.CommandLow])
        {
            w.WriteUInt32(register);
        }
        w.WriteUInt64(a.TscDeadline);
        w.WriteBoolean(a.HardwareDisabled);
        w.WriteInt64(a.SelfInterrupts);
        w.WriteInt64(a.UndeliveredCommands);
        w.WriteBoolean(a.NmiPending);
        w.WriteBoolean(s.NmiBlocked);
        w.WriteUInt64(s.PageAttributeTable);
        w.WriteUInt64(s.MiscEnable);
        // Version 3: several processors (the APIC ID, the wait-for-SIPI state, the IPI counters).
        w.WriteUInt32(a.Id);
        w.WriteBoolean(s.WaitingForStartup);
        w.WriteInt64(a.InterprocessorInterruptsSent);
        w.WriteInt64(a.InterprocessorInterruptsReceived);
        // Version 4: the x87 FPU.
        var x = s.X87;
        foreach (ushort word in (ReadOnlySpan<ushort>)[x.Control, x.Status, x.Tag, x.Opcode, x.InstructionSelector, x.OperandSelector])
        {
            w.WriteUInt16(word);
        }
        w.WriteUInt64(x.InstructionPointer);
        w.WriteUInt64(x.OperandPointer);
        for (int i = 0; i < 8; i++)
        {
            w.WriteUInt64(x.Registers[i].Significand);
            w.WriteUInt16(x.Registers[i].SignExponent);
        }
        // Version 5: the machine-check architecture.
        w.WriteUInt64(s.MachineCheckStatus);
        // Version 6: the debug architecture.
        foreach (ulong debug in (ReadOnlySpan<ulong>)[s.Dr0, s.Dr1, s.Dr2, s.Dr3, s.Dr6, s.Dr7, s.PendingDebugExceptions])
        {
            w.WriteUInt64(debug);
        }
    }

    /// <summary>The layout version <see cref="Write"/> writes.</summary>
    public const ushort Version = 6;

    private static void WriteBitmap(SnapshotWriter w, in InterruptBitmap bitmap)
    {
        for (int i = 0; i < 4; i++)
        {
            w.WriteUInt64(bitmap[i]);
        }
    }

    private static InterruptBitmap ReadBitmap(SnapshotReader r)
    {
        var bitmap = new InterruptBitmap();
        for (int i = 0; i < 4; i++)
        {
            bitmap[i] = r.ReadUInt64();
        }
        return bitmap;
    }

    /// <summary>Reads what <see cref="Write"/> wrote.</summary>
    public static CpuState Read(SnapshotReader r, ushort version = Version)
    {
        var s = new CpuState();
        for (int i = 0; i < 16; i++)
        {
            s.Registers[i] = r.ReadUInt64();
        }
        s.Rip = r.ReadUInt64();
        s.Rflags = r.ReadUInt64();
        s.Cr0 = r.ReadUInt64();
        s.Cr2 = r.ReadUInt64();
        s.Cr3 = r.ReadUInt64();
        s.Cr4 = r.ReadUInt64();
        s.Cr8 = r.ReadUInt64();
        s.Efer = r.ReadUInt64();
        s.Cs = ReadSegment(r);
        s.Ds = ReadSegment(r);
        s.Es = ReadSegment(r);
        s.Fs = ReadSegment(r);
        s.Gs = ReadSegment(r);
        s.Ss = ReadSegment(r);
        s.Tr = ReadSegment(r);
        s.Ldtr = ReadSegment(r);
        s.GdtBase = r.ReadUInt64();
        s.GdtLimit = r.ReadUInt16();
        s.IdtBase = r.ReadUInt64();
        s.IdtLimit = r.ReadUInt16();
        s.KernelGsBase = r.ReadUInt64();
        s.Star = r.ReadUInt64();
        s.LongStar = r.ReadUInt64();
        s.CompatibilityStar = r.ReadUInt64();
        s.SyscallFlagMask = r.ReadUInt64();
        s.TscAux = r.ReadUInt64();
        s.ApicBase = r.ReadUInt64();
        s.InstructionsRetired = r.ReadInt64();
        s.IdleCycles = r.ReadInt64();
        s.InterruptShadowUntil = r.ReadInt64();
        s.Halted = r.ReadBoolean();
        s.Apic = new LocalApicState
        {
            SpuriousVector = r.ReadUInt32(),
            TaskPriority = r.ReadUInt32(),
            LvtTimer = r.ReadUInt32(),
            InitialCount = r.ReadUInt32(),
            DivideConfiguration = r.ReadUInt32(),
            Period = r.ReadInt64(),
            Deadline = r.ReadInt64(),
            Requests = ReadBitmap(r),
            InService = ReadBitmap(r),
            TriggerMode = ReadBitmap(r),
            TimerInterrupts = r.ReadInt64(),
            ExternalRequests = r.ReadInt64(),
            Refused = r.ReadInt64(),
            EndOfInterrupts = r.ReadInt64(),
        };
        var reset = LocalApicState.Reset;
        (s.Apic.LvtThermal, s.Apic.LvtPerformance, s.Apic.LvtLint0, s.Apic.LvtLint1, s.Apic.LvtError,
         s.Apic.LogicalDestination, s.Apic.DestinationFormat) =
            (reset.LvtThermal, reset.LvtPerformance, reset.LvtLint0, reset.LvtLint1, reset.LvtError, 0, reset.DestinationFormat);
        (s.PageAttributeTable, s.MiscEnable) = (CpuState.Reset.PageAttributeTable, CpuState.Reset.MiscEnable);
        if (version >= 2)
        {
            s.SysenterCs = r.ReadUInt64();
            s.SysenterEsp = r.ReadUInt64();
            s.SysenterEip = r.ReadUInt64();
            s.Apic.LvtThermal = r.ReadUInt32();
            s.Apic.LvtPerformance = r.ReadUInt32();
            s.Apic.LvtLint0 = r.ReadUInt32();
            s.Apic.LvtLint1 = r.ReadUInt32();
            s.Apic.LvtError = r.ReadUInt32();
            s.Apic.LogicalDestination = r.ReadUInt32();
            s.Apic.DestinationFormat = r.ReadUInt32();
            s.Apic.CommandHigh = r.ReadUInt32();
            s.Apic.CommandLow = r.ReadUInt32();
            s.Apic.TscDeadline = r.ReadUInt64();
            s.Apic.HardwareDisabled = r.ReadBoolean();
            s.Apic.SelfInterrupts = r.ReadInt64();
            s.Apic.UndeliveredCommands = r.ReadInt64();
            s.Apic.NmiPending = r.ReadBoolean();
            s.NmiBlocked = r.ReadBoolean();
            s.PageAttributeTable = r.ReadUInt64();
            s.MiscEnable = r.ReadUInt64();
        }
        if (version >= 3)
        {
            s.Apic.Id = r.ReadUInt32();
            s.WaitingForStartup = r.ReadBoolean();
            s.Apic.InterprocessorInterruptsSent = r.ReadInt64();
            s.Apic.InterprocessorInterruptsReceived = r.ReadInt64();
        }
        s.X87 = X87State.PowerUp;
        if (version >= 4)
        {
            s.X87.Control = r.ReadUInt16();
            s.X87.Status = r.ReadUInt16();
            s.X87.Tag = r.ReadUInt16();
            s.X87.Opcode = r.ReadUInt16();
            s.X87.InstructionSelector = r.ReadUInt16();
            s.X87.OperandSelector = r.ReadUInt16();
            s.X87.InstructionPointer = r.ReadUInt64();
            s.X87.OperandPointer = r.ReadUInt64();
            for (int i = 0; i < 8; i++)
            {
                s.X87.Registers[i].Significand = r.ReadUInt64();
                s.X87.Registers[i].SignExponent = r.ReadUInt16();
            }
        }
        s.MachineCheckStatus = version >= 5 ? r.ReadUInt64() : 0;
        (s.Dr6, s.Dr7) = (CpuState.DebugStatusFixed, CpuState.DebugControlFixed);
        if (version >= 6)
        {
            s.Dr0 = r.ReadUInt64();
            s.Dr1 = r.ReadUInt64();
            s.Dr2 = r.ReadUInt64();
            s.Dr3 = r.ReadUInt64();
            s.Dr6 = r.ReadUInt64() | CpuState.DebugStatusFixed;
            s.Dr7 = r.ReadUInt64() | CpuState.DebugControlFixed;
            s.PendingDebugExceptions = r.ReadUInt64();
        }
        if (s.InstructionsRetired < 0 || s.IdleCycles < 0)
        {
            throw r.Invalid("a negative clock");
        }
        return s;
    }

    private static Segment ReadSegment(SnapshotReader r) => new()
    {
        Selector = r.ReadUInt16(),
        Base = r.ReadUInt64(),
        Limit = r.ReadUInt32(),
        Attributes = r.ReadUInt16(),
    };
}
