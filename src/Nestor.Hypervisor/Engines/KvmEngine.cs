using System.Diagnostics;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Platform;
using Nestor.Hypervisor.State;
using Nestor.Kvm;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;

namespace Nestor.Hypervisor.Engines;

/// <summary>Runs a VM on Linux KVM: the CPU executes guest code directly in VMX non-root / SVM guest mode and
/// KVM returns to Nestor for the exits it does not handle in the kernel (port I/O, MMIO, HLT without an in-kernel
/// interrupt controller, shutdown, emulation failures). Nestor emulates the device side of each and re-enters.</summary>
/// <param name="interruptController">Create KVM's in-kernel interrupt controllers (KVM_CREATE_IRQCHIP) and route the
/// platform's interrupt lines to them (KVM_IRQ_LINE). Off by default: the guest's APIC and 8259 accesses then reach
/// Nestor's devices as before, and HLT exits to Nestor.</param>
/// <param name="samePageMerging">Offer the VM's RAM to the host kernel's same-page merging (KSM) with
/// <c>madvise(MADV_MERGEABLE)</c> before the run (docs/overcommit.md, "On KVM"); whether KSM runs is the host's
/// setting (<see cref="Memory.Kvm.SamePageMerging"/>).</param>
public sealed class KvmEngine(bool interruptController = false, bool samePageMerging = false) : IEngine
{
    /// <summary>The CPUID leaf where a hypervisor announces itself (Intel SDM Vol. 2A, CPUID: leaves 40000000H–4FFFFFFFH
    /// are reserved for hypervisor use).</summary>
    public const uint HypervisorLeaf = 0x4000_0000;

    /// <summary>The signature in EBX, ECX, EDX of <see cref="HypervisorLeaf"/>.</summary>
    public const string HypervisorSignature = "NestorNestor";

    // Three pages Intel VMX uses for real-mode emulation; they must lie outside RAM. Inside the device hole.
    private const ulong TssPages = 0xFFFB_D000;

    public string Name => "kvm";

    /// <summary>Told when each run's KVM VM is ready and when it ends (live migration on KVM uses it:
    /// <see cref="Migration.Kvm.KvmMigrationSource"/>); null for none.</summary>
    public IKvmRunObserver? Observer { get; set; }

    // Each VM's vCPU state beyond its registers, read after its last run and loaded before its next (issue 16).
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<Vm, KvmVcpuExtendedState> extended = new();

    /// <summary>The XSAVE area, changed MSRs, LAPIC, events and kvmclock of <paramref name="vm"/>'s vCPU as its last
    /// run left them (or a snapshot restored them), loaded before its next run on this engine; its snapshot section.</summary>
    public KvmVcpuExtendedState ExtendedStateOf(Vm vm) => extended.GetOrCreateValue(vm);

    /// <inheritdoc/>
    public EngineDescription Description { get; } = new("inside KVM_RUN", "KVM's own counters for vCPU 0 (KVM_GET_STATS_FD; zero counters left out):");

    /// <summary>Opens KVM, translating "cannot" into a <see cref="HostUnsupportedException"/> that says what to do.</summary>
    public static KvmSystem OpenSystem(string path)
    {
        try
        {
            return KvmSystem.Open(path);
        }
        catch (KvmUnavailableException e)
        {
            throw new HostUnsupportedException($"KVM is not available: {e.Message}",
                "Run on a Linux host with KVM, or choose another engine with --engine", e);
        }
    }

    public RunResult Run(Vm vm, RunControl control)
    {
        using var system = OpenSystem(vm.Config.KvmDevicePath);
        using var kvmVm = system.CreateVm();
        kvmVm.SetTssAddress(TssPages);
        uint slot = 0;
        foreach (var (region, backing) in vm.Memory.Regions)
        {
            kvmVm.SetUserMemoryRegion(slot++, region.Start.Value, region.Length, backing.Address);
        }
        if (samePageMerging)
        {
            Memory.Kvm.KvmMemoryAdvice.SetMergeable(vm.Memory, true);
        }
        KvmLineSink? lines = null;
        if (interruptController)
        {
            kvmVm.CreateIrqChip(); // before the vCPU, whose local APIC is then in the kernel
            lines = new KvmLineSink(kvmVm);
            vm.Interrupts.Sink = lines;
            vm.Interrupts.Replay();
        }
        var vcpu = kvmVm.CreateVcpu(0);
        var cpuid = new KvmCpuidModel(GuestCpuid(system.GetSupportedCpuid()));
        vcpu.SetCpuid(cpuid.Entries);
        var platform = new VmPlatform(vm, control, cpuid);
        // The VM's vCPU state: at the kernel's entry, or as the last run (or a snapshot) left it.
        Load(vcpu, vm.Vcpus[0].View, vm.Vcpus[0].State.CompatibilityStar);
        var extendedState = ExtendedStateOf(vm);
        var freshMsrs = KvmVcpuExtendedState.ReadMsrs(vcpu, KvmVcpuExtendedState.Candidates(system)); // before the guest or a snapshot changed any
        extendedState.Apply(kvmVm, vcpu, interruptController);
        KvmStatistics? statistics = system.CheckCapability(KvmCapability.BinaryStatistics) > 0 ? vcpu.OpenStatistics() : null;
        var observer = Observer;
        VmOutcome outcome;
        IReadOnlyList<EngineCounter> counters;
        try
        {
            // At an I/O exit KVM's RIP is already past the instruction.
            platform.ReportInstructionPointer(() => vcpu.GetRegisters().Rip, isNext: true);
            vcpu.BindToCurrentThread();
            control.OnStop(vcpu.Kick);
            vm.PcPlatform.Clock.AttachHost(); // the platform timers count in host time, as KVM's TSC does
            observer?.Started(kvmVm, vcpu);
            try
            {
                outcome = RunLoop(vm, vcpu, platform, observer);
            }
            finally
            {
                vm.PcPlatform.Clock.Detach();
                control.ClearStop();
                platform.EndRun();
                SaveBack(vm, vcpu);
                extendedState.Capture(kvmVm, vcpu, interruptController, freshMsrs);
                observer?.Stopped(kvmVm);
            }
        }
        finally
        {
            counters = statistics is null
                ? []
                : statistics.Read().Select(s => new EngineCounter(s.Name, s.Value, UnitOf(s.Descriptor))).ToList();
            statistics?.Dispose();
            if (lines is not null)
            {
                // Line changes passed to KVM_IRQ_LINE (with the in-kernel interrupt controllers).
                counters = [.. counters, new EngineCounter("irq_line_changes", (ulong)lines.Changes, "")];
                vm.Interrupts.Sink = vm.IoApic; // the KVM VM is gone with this run
            }
        }
        return new RunResult(outcome, counters);
    }

    /// <summary>The platform's lines, routed to the in-kernel I/O APIC and 8259s.</summary>
    private sealed class KvmLineSink(KvmVm kvm) : Devices.Interrupts.IInterruptSink
    {
        public long Changes { get; private set; }

        public void SetLine(int gsi, bool asserted)
        {
            kvm.SetIrqLine(gsi, asserted);
            Changes++;
        }
    }

    // Entered once per run and then loops for all of it: compile it fully optimized at once rather than leaving it
    // in tier-0 or ReadyToRun code that tiering never gets to replace (measured in bench/RESULTS.md). It only turns
    // kvm_run's exit format into calls to the platform, which does everything else as it does for the software
    // machine.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static VmOutcome RunLoop(Vm vm, KvmVcpu vcpu, VmPlatform platform, IKvmRunObserver? observer)
    {
        while (true)
        {
            long entered = Stopwatch.GetTimestamp();
            KvmExitReason reason = vcpu.Run();
            long exited = Stopwatch.GetTimestamp();
            platform.AddGuestTicks(exited - entered);
            switch (reason)
            {
                case KvmExitReason.Io:
                    {
                        var io = vcpu.IoExit;
                        platform.PortAccess(io.Port, io.Size, io.IsOut, io.Data, io.Count, exited);
                        break;
                    }
                case KvmExitReason.Mmio:
                    {
                        var mmio = vcpu.MmioExit;
                        platform.MmioAccess(mmio.Address, mmio.IsWrite, mmio.Data, exited);
                        break;
                    }
                case KvmExitReason.Interrupted:
                    observer?.Interrupted();
                    platform.RecordExit(VmExitReason.Interrupted, Stopwatch.GetTimestamp() - exited);
                    break;
                case KvmExitReason.Halt:
                    return platform.Halted(Capture(vcpu), Stopwatch.GetTimestamp() - exited);
                case KvmExitReason.Shutdown:
                    // KVM does not say which event started the cascade.
                    return platform.TripleFault(Capture(vcpu), cause: null, handlingTicks: Stopwatch.GetTimestamp() - exited);
                case KvmExitReason.InternalError:
                    platform.RecordExit(VmExitReason.InternalError, Stopwatch.GetTimestamp() - exited);
                    return InternalError(vm, vcpu);
                case KvmExitReason.FailEntry:
                    {
                        platform.RecordExit(VmExitReason.EntryFailure, Stopwatch.GetTimestamp() - exited);
                        var state = Capture(vcpu);
                        return new VmOutcome(VmOutcomeKind.EntryFailure,
                            $"the CPU refused to enter the guest (hardware entry failure reason 0x{vcpu.FailEntryReason:x}); " +
                            "the guest state in the VMCS is invalid", state);
                    }
                case KvmExitReason.SystemEvent:
                    {
                        platform.RecordExit(VmExitReason.SystemEvent, Stopwatch.GetTimestamp() - exited);
                        uint type = vcpu.SystemEventType;
                        var kind = type == 1 ? VmOutcomeKind.TripleFault : VmOutcomeKind.UnexpectedExit;
                        return new VmOutcome(kind, $"KVM reported system event {type} (1 shutdown, 2 reset, 3 crash)", Capture(vcpu));
                    }
                default:
                    platform.RecordExit(VmExitReason.Other, Stopwatch.GetTimestamp() - exited);
                    return new VmOutcome(VmOutcomeKind.UnexpectedExit,
                        $"KVM returned exit reason {reason} ({(uint)reason}), which Nestor does not handle", Capture(vcpu));
            }
            // The debug exit (after a port write), or a stop request from outside (a kick brought us here).
            if (platform.StopRequested && platform.StopOutcome(Capture(vcpu)) is { } stopped)
            {
                return stopped;
            }
        }
    }

    private static VmOutcome InternalError(Vm vm, KvmVcpu vcpu)
    {
        var (suberror, data) = vcpu.InternalError;
        var state = Capture(vcpu);
        byte[] bytes = [];
        string? text = null;
        if (vcpu.Translate(state.Rip) is { } physical)
        {
            var buffer = new byte[15];
            int n = vm.Memory.ReadAvailable(new GuestPhysical(physical), buffer);
            bytes = buffer[..n];
            int bitness = state.Cs.LongMode ? 64 : state.Cs.DefaultBig ? 32 : 16;
            int length = InstructionText.Length(bytes, bitness);
            text = InstructionText.Disassemble(bytes, state.Rip, bitness);
            if (length > 0)
            {
                bytes = bytes[..length];
            }
        }
        string what = suberror switch
        {
            KvmInternalError.Emulation => "KVM could not emulate the instruction",
            KvmInternalError.SimultaneousExceptions => "KVM hit an exception while delivering another one, at the instruction",
            KvmInternalError.DeliveryEvent => "KVM could not deliver an exception or interrupt to the guest, at the instruction",
            _ => $"KVM reported internal error {(uint)suberror}, at the instruction",
        };
        string where = bytes.Length > 0
            ? $" at rip=0x{state.Rip:x}: bytes {InstructionText.Hex(bytes)}" + (text is null ? "" : $" ({text})")
            : $" at rip=0x{state.Rip:x} (its bytes are not in guest RAM)";
        string extra = data.Length > 0 ? $"; KVM data: {string.Join(' ', data.Select(d => $"0x{d:x}"))}" : "";
        return new VmOutcome(VmOutcomeKind.EmulationFailure,
            what + where + extra + ". Run 'nestor info' to see what this host's KVM can run",
            state, null, bytes, text);
    }

    /// <summary>The CPUID the guest sees: what KVM supports, with the hypervisor-present bit and Nestor's own
    /// hypervisor leaf in place of KVM's paravirtual leaves (Nestor offers none of KVM's PV features).</summary>
    public static KvmCpuidEntry[] GuestCpuid(KvmCpuidEntry[] supported)
    {
        var list = supported.Where(e => e.Function < HypervisorLeaf || e.Function > HypervisorLeaf + 0xFF).ToList();
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i].Function == 1)
            {
                var e = list[i];
                e.Ecx |= 1u << 31; // CPUID.1:ECX[31]: running under a hypervisor
                list[i] = e;
            }
        }
        byte[] signature = System.Text.Encoding.ASCII.GetBytes(HypervisorSignature);
        list.Add(new KvmCpuidEntry
        {
            Function = HypervisorLeaf,
            Eax = HypervisorLeaf, // highest hypervisor leaf
            Ebx = BitConverter.ToUInt32(signature, 0),
            Ecx = BitConverter.ToUInt32(signature, 4),
            Edx = BitConverter.ToUInt32(signature, 8),
        });
        return list.ToArray();
    }

    /// <summary>Writes the registers KVM holds back into the VM's vCPU, so that a next run continues from them.</summary>
    private static void SaveBack(Vm vm, KvmVcpu vcpu)
    {
        try
        {
            vm.Vcpus[0].State = CpuStateConversion.WithRegisters(in vm.Vcpus[0].State, Capture(vcpu));
        }
        catch (KvmException)
        {
            // A vCPU KVM will not read back leaves the VM's state as it was before the run.
        }
    }

    private static void Load(KvmVcpu vcpu, VcpuState s, ulong compatibilityStar)
    {
        var sregs = vcpu.GetSpecialRegisters();
        sregs.Cs = ToKvm(s.Cs);
        sregs.Ds = ToKvm(s.Ds);
        sregs.Es = ToKvm(s.Es);
        sregs.Fs = ToKvm(s.Fs);
        sregs.Gs = ToKvm(s.Gs);
        sregs.Ss = ToKvm(s.Ss);
        sregs.Tr = ToKvm(s.Tr);
        sregs.Ldt = ToKvm(s.Ldt);
        sregs.Gdt = new KvmDescriptorTable { Base = s.Gdtr.Base, Limit = s.Gdtr.Limit };
        sregs.Idt = new KvmDescriptorTable { Base = s.Idtr.Base, Limit = s.Idtr.Limit };
        sregs.Cr0 = s.Cr0;
        sregs.Cr3 = s.Cr3;
        sregs.Cr4 = s.Cr4;
        sregs.Efer = s.Efer;
        vcpu.SetSpecialRegisters(sregs);
        vcpu.SetRegisters(new KvmRegisters
        {
            Rax = s.Rax,
            Rbx = s.Rbx,
            Rcx = s.Rcx,
            Rdx = s.Rdx,
            Rsi = s.Rsi,
            Rdi = s.Rdi,
            Rsp = s.Rsp,
            Rbp = s.Rbp,
            R8 = s.R8,
            R9 = s.R9,
            R10 = s.R10,
            R11 = s.R11,
            R12 = s.R12,
            R13 = s.R13,
            R14 = s.R14,
            R15 = s.R15,
            Rip = s.Rip,
            Rflags = s.Rflags,
        });
        // x87 and SSE control words as after FNINIT / power-on (SDM Vol. 1 §8.1.5, §10.2.3.1).
        var fpu = new KvmFpu { ControlWord = 0x37F, Mxcsr = 0x1F80 };
        vcpu.SetFpu(fpu);
        // The SYSCALL MSRs and KERNEL_GS_BASE (FS.base and GS.base went in with the segments).
        vcpu.SetMsrs([
            new(Msr.KernelGsBase, s.KernelGsBase), new(Msr.Star, s.Star), new(Msr.LongStar, s.LongStar),
            new(Msr.CompatibilityStar, compatibilityStar), new(Msr.SyscallFlagMask, s.SyscallFlagMask),
        ]);
    }

    /// <summary>Reads the vCPU's architectural state.</summary>
    public static VcpuState Capture(KvmVcpu vcpu)
    {
        var r = vcpu.GetRegisters();
        var s = vcpu.GetSpecialRegisters();
        var state = new VcpuState
        {
            Rax = r.Rax,
            Rbx = r.Rbx,
            Rcx = r.Rcx,
            Rdx = r.Rdx,
            Rsi = r.Rsi,
            Rdi = r.Rdi,
            Rsp = r.Rsp,
            Rbp = r.Rbp,
            R8 = r.R8,
            R9 = r.R9,
            R10 = r.R10,
            R11 = r.R11,
            R12 = r.R12,
            R13 = r.R13,
            R14 = r.R14,
            R15 = r.R15,
            Rip = r.Rip,
            Rflags = r.Rflags,
            Cr0 = s.Cr0,
            Cr2 = s.Cr2,
            Cr3 = s.Cr3,
            Cr4 = s.Cr4,
            Cr8 = s.Cr8,
            Efer = s.Efer,
            Cs = FromKvm(s.Cs),
            Ds = FromKvm(s.Ds),
            Es = FromKvm(s.Es),
            Fs = FromKvm(s.Fs),
            Gs = FromKvm(s.Gs),
            Ss = FromKvm(s.Ss),
            Tr = FromKvm(s.Tr),
            Ldt = FromKvm(s.Ldt),
            Gdtr = new DescriptorTableState(s.Gdt.Base, s.Gdt.Limit),
            Idtr = new DescriptorTableState(s.Idt.Base, s.Idt.Limit),
        };
        Span<KvmMsrEntry> msrs =
        [
            new(Msr.FsBase, 0), new(Msr.GsBase, 0), new(Msr.KernelGsBase, 0),
            new(Msr.Star, 0), new(Msr.LongStar, 0), new(Msr.SyscallFlagMask, 0),
        ];
        try
        {
            if (vcpu.GetMsrs(msrs) == msrs.Length)
            {
                state.FsBase = msrs[0].Data;
                state.GsBase = msrs[1].Data;
                state.KernelGsBase = msrs[2].Data;
                state.Star = msrs[3].Data;
                state.LongStar = msrs[4].Data;
                state.SyscallFlagMask = msrs[5].Data;
            }
        }
        catch (KvmException)
        {
            // The MSRs are extra detail; the registers above are what matters.
        }
        return state;
    }

    private static KvmSegment ToKvm(SegmentState s) => new()
    {
        Selector = s.Selector,
        Base = s.Base,
        Limit = s.Limit,
        Type = s.Type,
        System = (byte)(s.CodeOrData ? 1 : 0),
        Dpl = s.PrivilegeLevel,
        Present = (byte)(s.Present ? 1 : 0),
        Long = (byte)(s.LongMode ? 1 : 0),
        DefaultSize = (byte)(s.DefaultBig ? 1 : 0),
        Granularity = (byte)(s.Granularity ? 1 : 0),
        Unusable = (byte)(s.Unusable ? 1 : 0),
    };

    private static SegmentState FromKvm(KvmSegment s) => new(s.Selector, s.Base, s.Limit, s.Type, s.System != 0, s.Dpl,
        s.Present != 0, s.Long != 0, s.DefaultSize != 0, s.Granularity != 0, s.Unusable != 0);

    private static string UnitOf(KvmStatisticDescriptor d) => d.Unit switch
    {
        KvmStatisticUnit.Bytes => "bytes",
        KvmStatisticUnit.Seconds => d.Exponent == -9 ? "ns" : d.Exponent == -6 ? "us" : "s",
        KvmStatisticUnit.Cycles => "cycles",
        KvmStatisticUnit.Boolean => "bool",
        _ => "",
    };
}

/// <summary>What <see cref="KvmEngine"/> tells about each run's KVM VM (<see cref="KvmEngine.Observer"/>), on the vCPU's
/// thread.</summary>
public interface IKvmRunObserver
{
    /// <summary>The run's KVM VM has its memory slots (one per RAM region of the VM, in order) and its vCPU holds the
    /// VM's state; the first KVM_RUN follows.</summary>
    void Started(KvmVm kvm, KvmVcpu vcpu);

    /// <summary>A kick (<see cref="KvmVcpu.Kick"/>) brought the vCPU out of KVM_RUN.</summary>
    void Interrupted();

    /// <summary>The run is over: the vCPU's state is saved back into the VM and the KVM VM is closed after this.</summary>
    void Stopped(KvmVm kvm);
}
