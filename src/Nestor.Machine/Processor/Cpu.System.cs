using Nestor.Machine.Addresses;
using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Paging;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

// System instructions: control registers, descriptor tables, MSRs, CPUID, TSC, port I/O, HLT, flags with IF/IOPL.
public sealed partial class Cpu
{
    private StopReason? SystemInstruction(in Instruction i)
    {
        switch (i.Mnemonic)
        {
            case Mnemonic.Hlt:
                RequirePrivilege0();
                if (nonRoot is { HltExiting: true } && ExitOnInstruction(ExitReason.Hlt, 0, i))
                {
                    return null;
                }
                return StopReason.Halted;
            case Mnemonic.Cli:
            case Mnemonic.Sti:
                // Sensitive: allowed when CPL ≤ IOPL, else #GP (SDM Vol. 2A CLI).
                if (IoplDenies())
                {
                    throw GuestFault.GeneralProtection();
                }
                if (i.Mnemonic == Mnemonic.Sti && (Rflags & FlagBits.Interrupt) == 0)
                {
                    // STI's interrupt shadow: no interrupt before the next instruction completes (so `sti; hlt` works).
                    interruptShadowUntil = Counters.InstructionsRetired + 1;
                }
                Rflags = i.Mnemonic == Mnemonic.Cli ? Rflags & ~FlagBits.Interrupt : Rflags | FlagBits.Interrupt;
                return null;
            case Mnemonic.Clac:
            case Mnemonic.Stac:
                // SMAP's override: clear or set RFLAGS.AC; #UD outside CPL 0 (SDM Vol. 2A CLAC, Vol. 2B STAC). The
                // machine advertises SMAP (CPUID.7.0:EBX[20]), so they exist whether or not CR4.SMAP is set.
                if (PrivilegeLevel != 0)
                {
                    throw GuestFault.InvalidOpcode();
                }
                Rflags = i.Mnemonic == Mnemonic.Clac ? Rflags & ~FlagBits.AlignmentCheck : Rflags | FlagBits.AlignmentCheck;
                return null;
            case Mnemonic.Pushfq:
            case Mnemonic.Pushfd:
            case Mnemonic.Pushf:
                Push(Rflags & ~(FlagBits.Resume | FlagBits.Virtual8086), i.Mnemonic == Mnemonic.Pushf ? 2 : i.Mnemonic == Mnemonic.Pushfd ? 4 : 8);
                return null;
            case Mnemonic.Popfq:
            case Mnemonic.Popfd:
            case Mnemonic.Popf:
                {
                    ulong value = Pop(i.Mnemonic == Mnemonic.Popf ? 2 : i.Mnemonic == Mnemonic.Popfd ? 4 : 8);
                    // POPF is sensitive but not privileged: at CPL > 0 IOPL is kept, and IF is kept unless CPL ≤ IOPL —
                    // silently, without a fault (Robin & Irvine; SDM Vol. 2B POPF).
                    ulong changeable = FlagBits.Status | FlagBits.Trap | FlagBits.Direction |
                                       FlagBits.Nested | FlagBits.AlignmentCheck |
                                       FlagBits.Identification;
                    bool ring1 = DeprivilegedKernel(sensitiveOnly: true);
                    int cpl = ring1 ? ringCompression!.KernelRing : PrivilegeLevel;
                    if (cpl == 0)
                    {
                        changeable |= FlagBits.IoPrivilege;
                    }
                    if (cpl <= (int)((Rflags >> 12) & 3))
                    {
                        changeable |= FlagBits.Interrupt;
                    }
                    if (i.Mnemonic == Mnemonic.Popf)
                    {
                        changeable &= 0xFFFF;
                    }
                    Rflags = (Rflags & ~changeable) | (value & changeable) | Rflags_Reserved;
                    return null;
                }
            case Mnemonic.In:
                {
                    int size = OperandSize(i, 0);
                    ushort port = (ushort)ReadOperand(i, 1, i.GetOpKind(1) == OpKind.Register ? 2 : 1);
                    CheckIoPermission();
                    MatchIoBreakpoints(port, size);
                    if (nonRoot is { IoExiting: true } &&
                        ExitOnInstruction(ExitReason.IoInstruction, IoQualification(port, size, input: true, i.GetOpKind(1) != OpKind.Register), i))
                    {
                        return null;
                    }
                    Counters.PortReads++;
                    WriteOperand(i, 0, size, platform.PortRead(port, size));
                    return null;
                }
            case Mnemonic.Out:
                {
                    int size = OperandSize(i, 1);
                    ushort port = (ushort)ReadOperand(i, 0, i.GetOpKind(0) == OpKind.Register ? 2 : 1);
                    CheckIoPermission();
                    MatchIoBreakpoints(port, size);
                    if (nonRoot is { IoExiting: true } &&
                        ExitOnInstruction(ExitReason.IoInstruction, IoQualification(port, size, input: false, i.GetOpKind(0) != OpKind.Register), i))
                    {
                        return null;
                    }
                    Counters.PortWrites++;
                    platform.PortWrite(port, size, (uint)ReadOperand(i, 1, size));
                    return platform.StopRequested ? StopReason.PlatformStop : null;
                }
            case Mnemonic.Cpuid:
                {
                    // CPUID always exits in non-root operation (SDM §26.1.2).
                    if (nonRoot is not null && ExitOnInstruction(ExitReason.Cpuid, 0, i))
                    {
                        return null;
                    }
                    uint leaf = (uint)Registers[Rax];
                    var (a, b, c, d) = platform.Cpuid(leaf, (uint)Registers[Rcx]);
                    if (leaf == 1)
                    {
                        b = (b & 0x00FF_FFFF) | (Apic.Id << 24); // this processor's initial APIC ID (SDM Vol. 2A CPUID)
                        if (!Apic.HardwareEnabled)
                        {
                            d &= ~(1u << 9); // EDX.APIC follows IA32_APIC_BASE.EN (SDM Vol. 3A §10.4.3)
                        }
                    }
                    else if (!Model.IsAmd && (leaf == 0xB || (leaf > Model.HighestBasicLeaf && leaf < 0x4000_0000) ||
                                              leaf is (>= 0x5000_0000 and < 0x8000_0000) or > 0x8000_0008))
                    {
                        // Extended topology (also for the leaves past either range, which Intel answers with the
                        // highest basic leaf's data): this processor's x2APIC ID and the VM's processor count.
                        (a, b, c, d) = ProcessorModel.ExtendedTopology((uint)Registers[Rcx], Apic.Id, Apic.Bus?.Apics.Count ?? 1);
                    }
                    Registers[Rax] = a;
                    Registers[Rbx] = b;
                    Registers[Rcx] = c;
                    Registers[Rdx] = d;
                    return null;
                }
            case Mnemonic.Rdtsc:
            case Mnemonic.Rdtscp:
                {
                    // CR4.TSD makes the TSC privileged (SDM Vol. 2B RDTSC: #GP(0) if TSD and CPL > 0).
                    if ((Cr4 & Architecture.Cr4.TimeStampDisable) != 0 && PrivilegeLevel != 0)
                    {
                        throw GuestFault.GeneralProtection();
                    }
                    if (nonRoot is { RdtscExiting: true } && ExitOnInstruction(ExitReason.Rdtsc, 0, i))
                    {
                        return null;
                    }
                    ulong t = Tsc;
                    Registers[Rax] = (uint)t;
                    Registers[Rdx] = t >> 32;
                    if (i.Mnemonic == Mnemonic.Rdtscp)
                    {
                        Registers[Rcx] = (uint)TscAux;
                    }
                    return null;
                }
            case Mnemonic.Rdpid:
                // IA32_TSC_AUX into the register (SDM Vol. 2B RDPID), at any privilege level.
                WriteOperand(i, 0, 8, TscAux);
                return null;
            case Mnemonic.Rdpmc:
                // The machine has no performance counters (CPUID leaf 0xA reports version 0, no counters), so every
                // counter ECX could name is invalid: #GP(0) (SDM Vol. 2B RDPMC), at CPL 0 too; and at CPL > 0 without
                // CR4.PCE it is #GP(0) before that.
                throw GuestFault.GeneralProtection();
            case Mnemonic.Clflush:
            case Mnemonic.Clflushopt:
                {
                    // The model has no caches, so flushing a line only checks its address: CLFLUSH and CLFLUSHOPT
                    // fault as a byte load from it would (SDM Vol. 2A CLFLUSH: #PF, #GP), and do nothing else.
                    ulong linear = EffectiveAddress(i);
                    Translate(linear, AccessKind.Read);
                    return null;
                }
            case Mnemonic.Rdmsr:
                RequirePrivilege0();
                if (nonRoot is { MsrExiting: true } && ExitOnInstruction(ExitReason.Rdmsr, 0, i))
                {
                    return null;
                }
                {
                    ulong v = ReadMsr((uint)Registers[Rcx]);
                    Registers[Rax] = (uint)v;
                    Registers[Rdx] = v >> 32;
                    return null;
                }
            case Mnemonic.Wrmsr:
                RequirePrivilege0();
                if (nonRoot is { MsrExiting: true } && ExitOnInstruction(ExitReason.Wrmsr, 0, i))
                {
                    return null;
                }
                WriteMsr((uint)Registers[Rcx], ((Registers[Rdx] & 0xFFFF_FFFF) << 32) | (uint)Registers[Rax]);
                return null;
            case Mnemonic.Lgdt:
            case Mnemonic.Lidt:
                {
                    RequirePrivilege0();
                    ulong address = EffectiveAddress(i);
                    ushort limit = (ushort)ReadLinear(address, 2);
                    ulong baseAddress = Bitness == 64 ? ReadLinear(address + 2, 8) : ReadLinear(address + 2, 4);
                    if (i.Code is Code.Lgdt_m1632_16 or Code.Lidt_m1632_16)
                    {
                        baseAddress &= 0xFF_FFFF; // a 16-bit operand size loads a 24-bit base (SDM Vol. 2A LGDT/LIDT)
                    }
                    if (!IsCanonical(baseAddress))
                    {
                        throw GuestFault.GeneralProtection(); // a non-canonical table base (SDM Vol. 2A LGDT/LIDT, 64-bit mode)
                    }
                    if (i.Mnemonic == Mnemonic.Lgdt)
                    {
                        (GdtBase, GdtLimit) = (baseAddress, limit);
                    }
                    else
                    {
                        (IdtBase, IdtLimit) = (baseAddress, limit);
                    }
                    return null;
                }
            case Mnemonic.Sgdt:
            case Mnemonic.Sidt:
                {
                    // Sensitive but not privileged (without CR4.UMIP): any code can read the tables' location, and code
                    // a software VMM runs directly reads the VMM's.
                    ulong address = EffectiveAddress(i);
                    bool gdt = i.Mnemonic == Mnemonic.Sgdt;
                    var vmm = RevealsVmm() ? ringCompression : null;
                    WriteLinear(address, 2, vmm is null ? (gdt ? GdtLimit : IdtLimit) : gdt ? vmm.VmmGdtLimit : vmm.VmmIdtLimit);
                    ulong tableBase = vmm is null ? (gdt ? GdtBase : IdtBase) : gdt ? vmm.VmmGdtBase : vmm.VmmIdtBase;
                    if (Bitness != 64)
                    {
                        // Outside 64-bit mode a 4-byte base; with a 16-bit operand size 24 bits of it and a zero byte
                        // (SDM Vol. 2B SGDT).
                        WriteLinear(address + 2, 4, i.Code is Code.Sgdt_m1632_16 or Code.Sidt_m1632_16 ? tableBase & 0xFF_FFFF : tableBase);
                        return null;
                    }
                    WriteLinear(address + 2, 8, tableBase);
                    return null;
                }
            case Mnemonic.Sldt:
                WriteOperand(i, 0, OperandSize(i, 0), RevealsVmm() ? ringCompression!.VmmLocalDescriptorTable : Ldtr.Selector);
                return null;
            case Mnemonic.Str:
                WriteOperand(i, 0, OperandSize(i, 0), RevealsVmm() ? ringCompression!.VmmTaskRegister : Tr.Selector);
                return null;
            case Mnemonic.Smsw:
                {
                    ulong cr0 = RevealsVmm() ? ringCompression!.VmmCr0 : Cr0;
                    WriteOperand(i, 0, OperandSize(i, 0), i.GetOpKind(0) == OpKind.Memory ? cr0 & 0xFFFF : cr0);
                    return null;
                }
            case Mnemonic.Lmsw:
                return LoadMachineStatusWord(i);
            case Mnemonic.Ltr:
                {
                    RequirePrivilege0();
                    ushort selector = (ushort)ReadOperand(i, 0, 2);
                    ulong entry = GdtBase + (ulong)(selector & ~7);
                    ulong low = ReadSupervisor(entry, 8), high = ReadSupervisor(entry + 8, 8);
                    var tr = LoadDescriptor(selector);
                    tr.Base |= high << 32;
                    if (!IsCanonical(tr.Base))
                    {
                        throw GuestFault.GeneralProtection((uint)(selector & ~7)); // SDM Vol. 2A LTR, 64-bit mode
                    }
                    Tr = tr;
                    // Mark the descriptor busy (type 9 → 11).
                    WriteLinear(entry, 8, low | (2UL << 40));
                    return null;
                }
            case Mnemonic.Lldt:
                RequirePrivilege0();
                Ldtr = new Segment { Selector = (ushort)ReadOperand(i, 0, 2) };
                return null;
            case Mnemonic.Invlpg:
                {
                    RequirePrivilege0();
                    ulong linear = EffectiveAddress(i);
                    if (nonRoot is { InvlpgExiting: true } && ExitOnInstruction(ExitReason.Invlpg, linear, i, linear))
                    {
                        return null;
                    }
                    Mmu.InvalidatePage(new GuestVirtual(linear));
                    return null;
                }
            case Mnemonic.Invpcid:
                {
                    RequirePrivilege0();
                    ulong type = ReadOperand(i, 0, 8);
                    ulong address = EffectiveAddress(i);
                    ulong pcid = ReadLinear(address, 8), linear = ReadLinear(address + 8, 8);
                    // A non-canonical address of an individual-address invalidation is #GP(0) too (SDM Vol. 2B INVPCID).
                    // And with CR4.PCIDE clear, a single-context or individual-address invalidation of a PCID
                    // other than 0 (that PCID cannot be in use).
                    if (type > 3 || pcid > 0xFFF || (type == 0 && (ulong)((long)(linear << 16) >> 16) != linear) ||
                        (type <= 1 && pcid != 0 && (Cr4 & Architecture.Cr4.ProcessContextIdentifiers) == 0))
                    {
                        throw GuestFault.GeneralProtection();
                    }
                    if (nonRoot is { InvlpgExiting: true } && ExitOnInstruction(ExitReason.Invpcid, 0, i, linear))
                    {
                        return null;
                    }
                    Mmu.InvalidateProcessContext((int)type, (ushort)pcid, new GuestVirtual(linear));
                    return null;
                }
            case Mnemonic.Swapgs:
                RequirePrivilege0();
                (Gs.Base, KernelGsBase) = (KernelGsBase, Gs.Base);
                return null;
            case Mnemonic.Wbinvd:
            case Mnemonic.Invd:
            case Mnemonic.Clts:
                RequirePrivilege0();
                if (i.Mnemonic == Mnemonic.Clts)
                {
                    Cr0 &= ~Architecture.Cr0.TaskSwitched;
                }
                return null;
            case Mnemonic.Vmcall:
                // A hypercall: an exit to the VMM in non-root operation (and the model's hypercall gate under the
                // software techniques); #UD on bare metal, as outside VMX.
                if (nonRoot is not null && ExitOnInstruction(ExitReason.Vmcall, 0, i))
                {
                    return null;
                }
                throw GuestFault.InvalidOpcode();
            default:
                return Unimplemented(i);
        }
    }

    /// <summary>The last instruction the machine does not model that the guest executed (the CPU raised #UD for it, as
    /// a processor without the feature does, and the guest's handler may deal with it); null if none.</summary>
    public UnmodelledInstruction? LastUnmodelledInstruction { get; private set; }

    private CpuidFeature[]? lastUnmodelledFeatures;
    private string? lastUnmodelledFeature;

    /// <summary>Counts an instruction (or a form of one) the model does not implement and remembers it for the run's
    /// report; the caller raises the exception a CPU without it would. Allocates only when the feature set differs
    /// from the last one's (Iced's feature arrays are shared), so a guest looping on #UD costs no garbage here.</summary>
    private void RecordUnmodelled(string name, CpuidFeature[]? features)
    {
        Counters.UnimplementedByMnemonic[name] = Counters.UnimplementedByMnemonic.GetValueOrDefault(name) + 1;
        if (!ReferenceEquals(features, lastUnmodelledFeatures))
        {
            lastUnmodelledFeatures = features;
            lastUnmodelledFeature = features is null or [] or [CpuidFeature.INTEL386] or [CpuidFeature.X64] ? null
                : string.Join("/", features.Where(f => f is not (CpuidFeature.INTEL386 or CpuidFeature.X64)));
        }
        LastUnmodelledInstruction = new UnmodelledInstruction(name, instructionStart, lastUnmodelledFeature,
            (LastUnmodelledInstruction?.Count ?? 0) + 1);
    }

    private void CheckIoPermission()
    {
        // Port I/O is sensitive: allowed when CPL ≤ IOPL; the TSS I/O bitmap is not modelled, so otherwise #GP.
        if (IoplDenies())
        {
            throw GuestFault.GeneralProtection();
        }
    }

    /// <summary>CPL &gt; IOPL, with the hardware's CPL (ring 1 for a ring-compressed kernel): CLI, STI, IN and OUT fault.</summary>
    private bool IoplDenies()
    {
        int iopl = (int)((Rflags >> 12) & 3);
        if (PrivilegeLevel > iopl)
        {
            return true;
        }
        return ringCompression is not null && PrivilegeLevel == 0 && ringCompression.KernelRing > iopl && DeprivilegedKernel(sensitiveOnly: false);
    }

    /// <summary>Whether a sensitive read (SGDT, SIDT, SLDT, STR, SMSW) sees the VMM's registers: code a software VMM
    /// runs directly (user code, or a kernel in ring 1) does; translated kernel code gets a callout instead.</summary>
    private bool RevealsVmm() => ringCompression is not null && (PrivilegeLevel != 0 || DeprivilegedKernel(sensitiveOnly: true));

    private StopReason? MoveToControl(in Instruction i)
    {
        RequirePrivilege0();
        ulong value = ReadRegister(i.GetOpRegister(1));
        var target = i.GetOpRegister(0);
        if (nonRoot is { } controls &&
            ((target == Register.CR3 && controls.Cr3LoadExiting) || ((target == Register.CR0 || target == Register.CR4) && controls.Cr0Cr4WriteExiting)) &&
            ExitOnInstruction(ExitReason.ControlRegisterAccess, ControlRegisterQualification(target - Register.CR0, false, i.GetOpRegister(1)), i))
        {
            return null;
        }
        switch (target)
        {
            case Register.CR0:
                CheckControlRegister0(value);
                Cr0 = value | Architecture.Cr0.ExtensionType;
                // IA-32e mode is activated by turning paging on with EFER.LME set, and left by turning it off
                // (SDM Vol. 3A §9.8.5).
                if ((Cr0 & Architecture.Cr0.Paging) != 0 && (Efer & Architecture.Efer.LongModeEnable) != 0)
                {
                    Efer |= Architecture.Efer.LongModeActive;
                }
                else if ((Cr0 & Architecture.Cr0.Paging) == 0)
                {
                    Efer &= ~Architecture.Efer.LongModeActive;
                }
                UpdatePagingControls();
                break;
            case Register.CR2:
                Cr2 = value;
                break;
            case Register.CR3:
                // Bits above MAXPHYADDR are reserved, and bit 63 too unless CR4.PCIDE makes it "keep the PCID's TLB
                // entries" (SDM Vol. 3A §4.10.4.1); a reserved bit set is #GP(0) (Vol. 2B MOV CR).
                if ((value & ProcessorModel.AboveMaxPhysicalAddress & ~((Cr4 & Architecture.Cr4.ProcessContextIdentifiers) != 0 ? 1UL << 63 : 0)) != 0)
                {
                    throw GuestFault.GeneralProtection();
                }
                Cr3 = value & ~(1UL << 63);
                Mmu.WriteCr3(value);
                break;
            case Register.CR4:
                CheckControlRegister4(value);
                if ((value & ~Cr4 & Architecture.Cr4.ProcessContextIdentifiers) != 0 || (Cr4 & ~value & Architecture.Cr4.PageGlobalEnable) != 0)
                {
                    Mmu.FlushAll(includingGlobal: true); // setting PCIDE or clearing PGE flushes every TLB entry (§4.10.4.1)
                }
                Cr4 = value;
                UpdatePagingControls();
                DebugControlsChanged(); // CR4.DE decides what DR7's R/W = 10 means
                break;
            case Register.CR8:
                // CR8 is the APIC's TPR[7:4] in 64-bit mode (SDM Vol. 3A §10.8.6.1); a lower TPR may unblock an interrupt.
                // Bits 63:4 are reserved (#GP).
                if (value > 0xF)
                {
                    throw GuestFault.GeneralProtection();
                }
                Cr8 = value & 0xF;
                Apic.TaskPriority = (uint)Cr8 << 4;
                eventCheckAt = 0;
                break;
            default:
                throw GuestFault.InvalidOpcode();
        }
        return null;
    }

    /// <summary>LMSW, the 286's load of the machine status word (SDM Vol. 2A LMSW): privileged (#GP(0) at CPL &gt; 0),
    /// it loads only CR0 bits 3:0 (PE, MP, EM, TS) from its 16-bit operand, and it can set PE (entering protected
    /// mode) but never clear it. Bits 15:4 of the operand are ignored, so it cannot touch ET, NE, WP, AM, NW, CD or
    /// PG. In VMX non-root operation it exits where MOV to CR0 does (the model's CR0 exiting stands for a guest/host
    /// mask over every bit, SDM Vol. 3C §26.1.3 "LMSW"), with the exit qualification of Table 28-3: access type 3,
    /// bit 6 set for a memory operand (whose linear address is the exit's guest-linear address), the source in
    /// bits 31:16; the VMM completes it.</summary>
    private StopReason? LoadMachineStatusWord(in Instruction i)
    {
        RequirePrivilege0();
        bool memory = i.GetOpKind(0) == OpKind.Memory;
        ulong linear = memory ? EffectiveAddress(i) : 0;
        ulong source = ReadOperand(i, 0, 2);
        if (nonRoot is { Cr0Cr4WriteExiting: true } &&
            ExitOnInstruction(ExitReason.ControlRegisterAccess, (3UL << 4) | (memory ? 1UL << 6 : 0) | (source << 16), i, linear))
        {
            return null;
        }
        const ulong statusWord = Architecture.Cr0.ProtectionEnable | Architecture.Cr0.MonitorCoprocessor |
                                 Architecture.Cr0.Emulation | Architecture.Cr0.TaskSwitched;
        // None of MOV to CR0's #GP conditions can arise: bits 63:4 and PG keep their (valid) values and PE cannot go
        // from 1 to 0; and with PG unchanged, IA-32e mode is neither entered nor left (SDM Vol. 3A §9.8.5).
        Cr0 = (Cr0 & ~statusWord) | (source & statusWord) | (Cr0 & Architecture.Cr0.ProtectionEnable);
        UpdatePagingControls();
        return null;
    }

    /// <summary>The #GP(0) conditions of MOV to CR0 (SDM Vol. 2B, MOV—Move to/from Control Registers; Vol. 3A §2.5,
    /// §9.8.5): a reserved bit (63:32) set, PG without PE, NW without CD, paging turned on with EFER.LME but without
    /// CR4.PAE (IA-32e mode needs PAE paging), and paging turned off while CR4.PCIDE is set or from 64-bit code
    /// (IA-32e mode is left from compatibility mode).</summary>
    private void CheckControlRegister0(ulong value)
    {
        bool paging = (value & Architecture.Cr0.Paging) != 0;
        if ((value >> 32) != 0 ||
            (paging && (value & Architecture.Cr0.ProtectionEnable) == 0) ||
            ((value & Architecture.Cr0.NotWriteThrough) != 0 && (value & Architecture.Cr0.CacheDisable) == 0) ||
            (paging && (Cr0 & Architecture.Cr0.Paging) == 0 && (Efer & Architecture.Efer.LongModeEnable) != 0 &&
             (Cr4 & Architecture.Cr4.PhysicalAddressExtension) == 0) ||
            (!paging && (Cr0 & Architecture.Cr0.Paging) != 0 &&
             ((Cr4 & Architecture.Cr4.ProcessContextIdentifiers) != 0 || Bitness == 64)))
        {
            throw GuestFault.GeneralProtection();
        }
    }

    /// <summary>The #GP(0) conditions of MOV to CR4 (SDM Vol. 2B MOV CR; Vol. 3A §2.5, §4.10.1): a bit of a feature the
    /// machine does not have (<see cref="ProcessorModel.Cr4Writable"/>: LA57, OSXSAVE without XSAVE, PKE, UMIP, …),
    /// clearing PAE in IA-32e mode, and setting PCIDE outside IA-32e mode or while CR3[11:0] is not 0.</summary>
    private void CheckControlRegister4(ulong value)
    {
        bool longMode = (Efer & Architecture.Efer.LongModeActive) != 0;
        if ((value & ~ProcessorModel.Cr4Writable) != 0 ||
            (longMode && (value & Architecture.Cr4.PhysicalAddressExtension) == 0) ||
            ((value & ~Cr4 & Architecture.Cr4.ProcessContextIdentifiers) != 0 && (!longMode || (Cr3 & 0xFFF) != 0)))
        {
            throw GuestFault.GeneralProtection();
        }
    }

    private ulong ReadControl(Register r) => r switch
    {
        Register.CR0 => Cr0,
        Register.CR2 => Cr2,
        Register.CR3 => Cr3,
        Register.CR4 => Cr4,
        Register.CR8 => Apic.TaskPriority >> 4,
        _ => throw GuestFault.InvalidOpcode(),
    };

    // AMD's legacy PerfEvtSel0–3 and PerfCtr0–3 (APM Vol. 2 §13.2.1: on every AMD64 processor, no CPUID bit), on the
    // AMD model only. The machine implements no performance event, so a counter never counts and the model keeps no
    // value: they read 0 and a write is accepted and dropped (kvm-unit-tests' pmu_init clears them on an AMD vendor).
    private const uint AmdPerformanceFirst = 0xC001_0000, AmdPerformanceLast = 0xC001_0007;

    private ulong ReadMsr(uint index) => index switch
    {
        Msr.TimeStampCounter => Tsc,
        Msr.ApicBase => ApicBase,
        Msr.Efer => Efer,
        Msr.Star => Star,
        Msr.LongStar => LongStar,
        Msr.CompatibilityStar => CompatibilityStar,
        Msr.SyscallFlagMask => SyscallFlagMask,
        Msr.FsBase => Fs.Base,
        Msr.GsBase => Gs.Base,
        Msr.KernelGsBase => KernelGsBase,
        Msr.TscAux => TscAux,
        Msr.SysenterCs => SysenterCs,
        Msr.SysenterEsp => SysenterEsp,
        Msr.SysenterEip => SysenterEip,
        Msr.TscDeadline when ProcessorModel.Has(CpuFeature.TscDeadline) => Apic.TscDeadline,
        Msr.PageAttributeTable when ProcessorModel.Has(CpuFeature.PageAttributeTable) => PageAttributeTable,
        Msr.MiscEnable => MiscEnable,
        // The machine-check architecture (CPUID.1:EDX.MCA): its capabilities and status; IA32_MCG_CTL and the bank
        // MSRs are absent (MCG_CAP reports neither MCG_CTL_P nor a bank) and fall through to #GP(0).
        Msr.MachineCheckCapabilities when ProcessorModel.Has(CpuFeature.MachineCheckArchitecture) => ProcessorModel.MachineCheckCapabilities,
        Msr.MachineCheckStatus when ProcessorModel.Has(CpuFeature.MachineCheckArchitecture) => state.MachineCheckStatus,
        >= AmdPerformanceFirst and <= AmdPerformanceLast when Model.IsAmd => 0,
        >= Msr.X2ApicFirst and <= Msr.X2ApicLast when ProcessorModel.Has(CpuFeature.X2Apic) => Apic.ReadMsr(index, Clock),
        _ => throw GuestFault.GeneralProtection(),
    };

    private void WriteMsr(uint index, ulong value)
    {
        switch (index)
        {
            case Msr.Efer:
                // Reserved bits, and a change of LME while paging is on, are #GP(0) (SDM Vol. 3A §2.2.1, §9.8.5).
                if ((value & ~ProcessorModel.EferWritable) != 0 ||
                    ((Cr0 & Architecture.Cr0.Paging) != 0 && ((value ^ Efer) & Architecture.Efer.LongModeEnable) != 0))
                {
                    throw GuestFault.GeneralProtection();
                }
                // LMA is read-only: it follows CR0.PG && LME.
                Efer = (value & ~Architecture.Efer.LongModeActive) | (Efer & Architecture.Efer.LongModeActive);
                UpdatePagingControls();
                break;
            // Registers that hold a linear address take only canonical ones (SDM Vol. 4, WRMSR: #GP(0)).
            case Msr.LongStar or Msr.CompatibilityStar or Msr.FsBase or Msr.GsBase or Msr.KernelGsBase when !IsCanonical(value):
                throw GuestFault.GeneralProtection();
            case Msr.Star: Star = value; break;
            case Msr.LongStar: LongStar = value; break;
            case Msr.CompatibilityStar: CompatibilityStar = value; break;
            case Msr.SyscallFlagMask: SyscallFlagMask = value; break;
            case Msr.FsBase: Fs.Base = value; break;
            case Msr.GsBase: Gs.Base = value; break;
            case Msr.KernelGsBase: KernelGsBase = value; break;
            case Msr.TscAux: TscAux = value; break;
            case Msr.ApicBase: WriteApicBase(value); break;
            case Msr.TimeStampCounter: break;
            // The SYSENTER targets (SDM Vol. 3A §5.8.7.1); ESP and EIP hold canonical addresses in IA-32e mode.
            case Msr.SysenterCs: SysenterCs = value & 0xFFFF_FFFF; break;
            case Msr.SysenterEsp or Msr.SysenterEip when !IsCanonical(value): throw GuestFault.GeneralProtection();
            case Msr.SysenterEsp: SysenterEsp = value; break;
            case Msr.SysenterEip: SysenterEip = value; break;
            case Msr.PageAttributeTable when ProcessorModel.Has(CpuFeature.PageAttributeTable):
                // Each of the eight entries must be a memory type PAT defines: 0, 1, 4, 5, 6, 7 (SDM Vol. 3A §12.12.2:
                // #GP for the reserved 2, 3 and 8–255).
                for (int entry = 0; entry < 8; entry++)
                {
                    ulong type = (value >> (entry * 8)) & 0xFF;
                    if (type is 2 or 3 or > 7)
                    {
                        throw GuestFault.GeneralProtection();
                    }
                }
                PageAttributeTable = value;
                break;
            // IA32_MCG_STATUS: RIPV, EIPV and MCIP are software's; a reserved bit is #GP(0). IA32_MCG_CAP is read-only
            // (its write is undefined, SDM Vol. 3B §16.3.1.1; the model refuses it, as the default case does).
            case Msr.MachineCheckStatus when ProcessorModel.Has(CpuFeature.MachineCheckArchitecture):
                if ((value & ~ProcessorModel.MachineCheckStatusWritable) != 0)
                {
                    throw GuestFault.GeneralProtection();
                }
                state.MachineCheckStatus = value;
                break;
            case Msr.MiscEnable:
                MiscEnable = (value & ~ProcessorModel.MiscEnableReadOnly) | (MiscEnable & ProcessorModel.MiscEnableReadOnly);
                break;
            case >= AmdPerformanceFirst and <= AmdPerformanceLast when Model.IsAmd:
                break;
            case Msr.TscDeadline when ProcessorModel.Has(CpuFeature.TscDeadline):
                Apic.WriteTscDeadline(value, Clock);
                eventCheckAt = 0;
                break;
            case >= Msr.X2ApicFirst and <= Msr.X2ApicLast when ProcessorModel.Has(CpuFeature.X2Apic):
                Apic.WriteMsr(index, value, Clock);
                eventCheckAt = 0;
                break;
            default: throw GuestFault.GeneralProtection();
        }
    }

    /// <summary>WRMSR to IA32_APIC_BASE (SDM Vol. 3A §10.4.4, §10.12.5): bits 0–7, 9 and those above MAXPHYADDR are
    /// reserved (#GP), and so is EXTD (bit 10) without x2APIC; BSP (bit 8) is read-only. The mode transitions of
    /// §10.12.5 (Figure 10-27): EXTD without EN is invalid, and x2APIC mode is left only by disabling the APIC, and
    /// entered only from xAPIC mode (#GP otherwise). Clearing EN (bit 11) disables the APIC globally: its page is
    /// memory again, it accepts no interrupt, and it comes back, when EN is set again, in its reset state (§10.4.3:
    /// "functionally equivalent to an IA-32 processor without an on-chip APIC").</summary>
    private void WriteApicBase(ulong value)
    {
        const ulong enable = ApicBaseEnable, extended = ApicBaseExtended, bootstrap = ApicBaseBootstrap;
        ulong reserved = 0x2FFUL | ProcessorModel.AboveMaxPhysicalAddress | (ProcessorModel.Has(CpuFeature.X2Apic) ? 0 : extended);
        if ((value & reserved & ~bootstrap) != 0)
        {
            throw GuestFault.GeneralProtection();
        }
        ulong oldMode = ApicBase & (enable | extended), newMode = value & (enable | extended);
        if (newMode == extended ||                                                  // invalid: EXTD without EN
            (oldMode == (enable | extended) && newMode == enable) ||                // x2APIC straight to xAPIC
            (oldMode == 0 && newMode == (enable | extended)))                       // disabled straight to x2APIC
        {
            throw GuestFault.GeneralProtection();
        }
        if (((value ^ ApicBase) & enable) != 0)
        {
            Apic.SetHardwareEnabled((value & enable) != 0);
        }
        ApicBase = (value & ~bootstrap) | (ApicBase & bootstrap);
        eventCheckAt = 0;
    }
}
