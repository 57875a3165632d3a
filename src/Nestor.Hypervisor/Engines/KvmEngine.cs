using System.Diagnostics;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.State;
using Nestor.Kvm;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;

namespace Nestor.Hypervisor.Engines;

/// <summary>Runs a VM on Linux KVM: the CPU executes guest code directly in VMX non-root / SVM guest mode and
/// KVM returns to Nestor for the exits it does not handle in the kernel (port I/O, MMIO, HLT without an in-kernel
/// interrupt controller, shutdown, emulation failures). Nestor emulates the device side of each and re-enters.</summary>
public sealed class KvmEngine : IEngine
{
    /// <summary>The CPUID leaf where a hypervisor announces itself (Intel SDM Vol. 2A, CPUID: leaves 40000000H–4FFFFFFFH
    /// are reserved for hypervisor use).</summary>
    public const uint HypervisorLeaf = 0x4000_0000;

    /// <summary>The signature in EBX, ECX, EDX of <see cref="HypervisorLeaf"/>.</summary>
    public const string HypervisorSignature = "NestorNestor";

    // Three pages Intel VMX uses for real-mode emulation; they must lie outside RAM. Inside the device hole.
    private const ulong TssPages = 0xFFFB_D000;

    private IReadOnlyList<EngineCounter> counters = [];

    public string Name => "kvm";

    public IReadOnlyList<EngineCounter> Counters => counters;

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

    public VmOutcome Run(Vm vm, RunControl control)
    {
        using var system = OpenSystem(vm.Config.KvmDevicePath);
        using var kvmVm = system.CreateVm();
        kvmVm.SetTssAddress(TssPages);
        uint slot = 0;
        foreach (var (region, backing) in vm.Memory.Regions)
        {
            kvmVm.SetUserMemoryRegion(slot++, region.Start.Value, region.Length, backing.Address);
        }
        var vcpu = kvmVm.CreateVcpu(0);
        vcpu.SetCpuid(GuestCpuid(system.GetSupportedCpuid()));
        // The VM's vCPU state: at the kernel's entry, or as the last run (or a snapshot) left it.
        Load(vcpu, vm.Vcpus[0].View, vm.Vcpus[0].State.CompatibilityStar);
        KvmStatistics? statistics = system.CheckCapability(KvmCapability.BinaryStatistics) > 0 ? vcpu.OpenStatistics() : null;
        try
        {
            vm.Bus.InstructionPointer = () => vcpu.GetRegisters().Rip;
            vcpu.BindToCurrentThread();
            control.OnStop(vcpu.Kick);
            try
            {
                return RunLoop(vm, vcpu, control);
            }
            finally
            {
                control.ClearStop();
                vm.Bus.InstructionPointer = null;
                vm.Serial.Flush();
                SaveBack(vm, vcpu);
            }
        }
        finally
        {
            counters = statistics is null
                ? []
                : statistics.Read().Select(s => new EngineCounter(s.Name, s.Value, UnitOf(s.Descriptor))).ToList();
            statistics?.Dispose();
        }
    }

    // Entered once per run and then loops for all of it: compile it fully optimized at once rather than leaving it
    // in tier-0 or ReadyToRun code that tiering never gets to replace (measured in bench/RESULTS.md).
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static VmOutcome RunLoop(Vm vm, KvmVcpu vcpu, RunControl control)
    {
        var exits = vm.Exits;
        var bus = vm.Bus;
        while (true)
        {
            long entered = Stopwatch.GetTimestamp();
            KvmExitReason reason = vcpu.Run();
            long exited = Stopwatch.GetTimestamp();
            exits.AddGuestTicks(exited - entered);
            switch (reason)
            {
                case KvmExitReason.Io:
                    {
                        var io = vcpu.IoExit;
                        var device = bus.PortDevice(io.Port);
                        for (int i = 0; i < io.Count; i++)
                        {
                            var item = io.Data.Slice(i * io.Size, io.Size);
                            if (io.IsOut)
                            {
                                bus.WritePort(io.Port, io.Size, ReadLittleEndian(item));
                            }
                            else
                            {
                                WriteLittleEndian(item, bus.ReadPort(io.Port, io.Size));
                            }
                        }
                        exits.RecordPort(io.Port, io.IsOut, io.Count, device?.Name);
                        exits.Record(io.IsOut ? VmExitReason.PortWrite : VmExitReason.PortRead, Stopwatch.GetTimestamp() - exited);
                        if (vm.GuestStatus is { } status)
                        {
                            return new VmOutcome(VmOutcomeKind.DebugExit, $"the guest wrote {status} (0x{status:x}) to the debug-exit port",
                                Capture(vcpu), status);
                        }
                        break;
                    }
                case KvmExitReason.Mmio:
                    {
                        var mmio = vcpu.MmioExit;
                        if (mmio.IsWrite)
                        {
                            Span<byte> value = stackalloc byte[8];
                            value.Clear();
                            mmio.Data.CopyTo(value);
                            bus.WriteMemory(mmio.Address, mmio.Data.Length, BitConverter.ToUInt64(value));
                        }
                        else
                        {
                            ulong value = bus.ReadMemory(mmio.Address, mmio.Data.Length);
                            for (int i = 0; i < mmio.Data.Length; i++)
                            {
                                mmio.Data[i] = (byte)(value >> (8 * i));
                            }
                        }
                        exits.Record(mmio.IsWrite ? VmExitReason.MmioWrite : VmExitReason.MmioRead, Stopwatch.GetTimestamp() - exited);
                        break;
                    }
                case KvmExitReason.Interrupted:
                    exits.Record(VmExitReason.Interrupted, Stopwatch.GetTimestamp() - exited);
                    if (control.StopReason is { } stop)
                    {
                        return Stopped(vm, vcpu, stop);
                    }
                    break;
                case KvmExitReason.Halt:
                    exits.Record(VmExitReason.Halt, Stopwatch.GetTimestamp() - exited);
                    return VmOutcomes.Halted(Capture(vcpu));
                case KvmExitReason.Shutdown:
                    {
                        exits.Record(VmExitReason.Shutdown, Stopwatch.GetTimestamp() - exited);
                        var state = Capture(vcpu);
                        return new VmOutcome(VmOutcomeKind.TripleFault,
                            $"the guest triple-faulted (the vCPU shut down) at rip=0x{state.Rip:x}: an exception could not be " +
                            (state.Idtr.Limit == 0
                                ? "delivered because the guest has no IDT (IDTR limit is 0)"
                                : "delivered, and neither could the double fault that followed") +
                            ". Check the guest's IDT, GDT, stack and page tables at the state below",
                            state);
                    }
                case KvmExitReason.InternalError:
                    exits.Record(VmExitReason.InternalError, Stopwatch.GetTimestamp() - exited);
                    return InternalError(vm, vcpu);
                case KvmExitReason.FailEntry:
                    {
                        exits.Record(VmExitReason.EntryFailure, Stopwatch.GetTimestamp() - exited);
                        var state = Capture(vcpu);
                        return new VmOutcome(VmOutcomeKind.EntryFailure,
                            $"the CPU refused to enter the guest (hardware entry failure reason 0x{vcpu.FailEntryReason:x}); " +
                            "the guest state in the VMCS is invalid", state);
                    }
                case KvmExitReason.SystemEvent:
                    {
                        exits.Record(VmExitReason.SystemEvent, Stopwatch.GetTimestamp() - exited);
                        uint type = vcpu.SystemEventType;
                        var kind = type == 1 ? VmOutcomeKind.TripleFault : VmOutcomeKind.UnexpectedExit;
                        return new VmOutcome(kind, $"KVM reported system event {type} (1 shutdown, 2 reset, 3 crash)", Capture(vcpu));
                    }
                default:
                    exits.Record(VmExitReason.Other, Stopwatch.GetTimestamp() - exited);
                    return new VmOutcome(VmOutcomeKind.UnexpectedExit,
                        $"KVM returned exit reason {reason} ({(uint)reason}), which Nestor does not handle", Capture(vcpu));
            }
        }
    }

    private static VmOutcome Stopped(Vm vm, KvmVcpu vcpu, VmOutcomeKind stop) =>
        VmOutcomes.Stopped(stop, vm.Config.Timeout, Capture(vcpu));

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

    private static uint ReadLittleEndian(ReadOnlySpan<byte> b) => b.Length switch
    {
        1 => b[0],
        2 => (uint)(b[0] | b[1] << 8),
        _ => (uint)(b[0] | b[1] << 8 | b[2] << 16 | b[3] << 24),
    };

    private static void WriteLittleEndian(Span<byte> b, uint v)
    {
        for (int i = 0; i < b.Length; i++)
        {
            b[i] = (byte)(v >> (8 * i));
        }
    }

    private static string UnitOf(KvmStatisticDescriptor d) => d.Unit switch
    {
        KvmStatisticUnit.Bytes => "bytes",
        KvmStatisticUnit.Seconds => d.Exponent == -9 ? "ns" : d.Exponent == -6 ? "us" : "s",
        KvmStatisticUnit.Cycles => "cycles",
        KvmStatisticUnit.Boolean => "bool",
        _ => "",
    };
}
