using System.Diagnostics;
using Nestor.Hypervisor.CostModel;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.State;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Processor;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Engines;

/// <summary>Runs a VM on Nestor's own x86-64 machine model (<see cref="Cpu"/>): every instruction interpreted,
/// every translation through the modelled MMU, every port access a trap into the VMM's devices.</summary>
public sealed class SimEngine(SimOptions? options = null) : IEngine, IDisposable
{
    private GuestPhysicalMap? lastPhysicalMap;

    private readonly SimOptions options = options ?? new SimOptions();

    /// <summary>Instructions run between checks for a stop request (timeout, Ctrl-C).</summary>
    private const long Slice = 1_000_000;

    private IReadOnlyList<EngineCounter> counters = [];

    public string Name => "sim";

    public IReadOnlyList<EngineCounter> Counters => counters;

    public SimOptions Options => options;

    /// <summary>The VMCS of the last run under hardware assistance, else null.</summary>
    public VmControlStructure? Vmcs { get; private set; }

    /// <summary>What the last run did, counted for the cost model.</summary>
    public MachineEvents? Events { get; private set; }

    /// <summary>The VMM of the last run under hardware assistance, else null.</summary>
    public VirtualMachineMonitor? Monitor { get; private set; }

    /// <summary>The machine model of the last run, as it stopped (for inspection: its MMU can explain a walk). Valid
    /// until the engine or the VM is disposed: its memory is theirs.</summary>
    public Cpu? Machine { get; private set; }

    /// <summary>Releases the host memory of the last run (its host frames and the VMM's tables).</summary>
    public void Dispose()
    {
        Machine = null;
        lastPhysicalMap?.Dispose();
        lastPhysicalMap = null;
    }

    public VmOutcome Run(Vm vm, RunControl control)
    {
        lastPhysicalMap?.Dispose();
        var pool = options.Technique == Technique.Native ? null : vm.Host.FramePool;
        var memory = pool?.Memory ?? new PhysicalMemory(vm.Memory.Regions.Select(r => (r.Region.Start.Value, r.Region.Length, r.Backing.Address)));
        ulong top = pool?.Memory.Limit ?? vm.Memory.Regions.Max(r => r.Region.End.Value);
        var platform = new Platform(vm, control, options.Technique == Technique.Paravirtual);
        var cpu = new Cpu(memory, platform, options.Mmu, top);
        Load(cpu, vm.InitialState);
        Machine = cpu;
        VirtualMachineMonitor? monitor = null;
        GuestPhysicalMap? physicalMap = null;
        if (pool is not null)
        {
            physicalMap = lastPhysicalMap = vm.Host.NewPhysicalMap(vm);
            // Nested paging is hardware: the software techniques use shadow paging.
            bool nestedPaging = options.Technique == Technique.HardwareAssist && options.Memory == MemoryVirtualization.Nested;
            var nested = nestedPaging ? new NestedPageTable(pool) : null;
            var shadow = nestedPaging ? null
                : new ShadowPaging(physicalMap, pool, vm.Memory) { VerifyAfterEachChange = options.VerifyShadowPaging };
            physicalMap.Attach(cpu.Mmu, nested, shadow);
            Vmcs = new VmControlStructure();
            Monitor = monitor = new VirtualMachineMonitor(vm, Vmcs, physicalMap, nested, shadow, options.LargeNestedPages, options.Technique);
            try
            {
                monitor.Enter(cpu);
            }
            catch (ShadowPagingException e)
            {
                return new VmOutcome(VmOutcomeKind.EmulationFailure, $"the VMM cannot enter the guest: {e.Message}", Capture(cpu));
            }
        }
        // The accessing instruction's own address (RIP is already past it while it executes).
        vm.Bus.InstructionPointer = () => cpu.InstructionAddress;
        vm.Bus.UnclaimedAccesses.InstructionPointerIsNext = false;
        var clock = Stopwatch.StartNew();
        try
        {
            while (true)
            {
                StopReason stop;
                long budget = Slice;
                if (options.StopAtInstruction is { } breakAt)
                {
                    budget = Math.Min(Slice, breakAt - cpu.Counters.InstructionsRetired);
                    if (budget <= 0)
                    {
                        return new VmOutcome(VmOutcomeKind.Breakpoint,
                            $"stopped after {cpu.Counters.InstructionsRetired:N0} instructions, as asked", Capture(cpu));
                    }
                }
                try
                {
                    stop = cpu.Run(budget);
                }
                catch (NotSupportedException e)
                {
                    // RIP is at the instruction (or event) that needed what the machine does not model.
                    return new VmOutcome(VmOutcomeKind.EmulationFailure,
                        $"the guest needs what the software machine does not model, at rip=0x{cpu.Rip:x}: {e.Message}", Capture(cpu));
                }
                switch (stop)
                {
                    case StopReason.VmmStop:
                        return new VmOutcome(VmOutcomeKind.EmulationFailure,
                            $"the VMM stopped the guest at rip=0x{cpu.Rip:x} after a {Vmcs?.LastExit.Reason} exit: {monitor?.StopMessage ?? "it could not handle it"}",
                            Capture(cpu));
                    case StopReason.PlatformStop when vm.GuestStatus is null && control.StopReason is { } interrupted:
                        // Not a debug exit: a stop request (timeout, a signal) the CPU saw after a port write, a fault,
                        // or between the iterations of a REP string instruction, which it left suspended.
                        return VmOutcomes.Stopped(interrupted, vm.Config.Timeout, Capture(cpu));
                    case StopReason.PlatformStop:
                        return VmOutcomes.DebugExit(vm.GuestStatus ?? 0, Capture(cpu));
                    case StopReason.Halted:
                        vm.Exits.Record(VmExitReason.Halt, 0);
                        return VmOutcomes.Halted(Capture(cpu));
                    case StopReason.Shutdown:
                        {
                            vm.Exits.Record(VmExitReason.Shutdown, 0);
                            var state = Capture(cpu);
                            return new VmOutcome(VmOutcomeKind.TripleFault, SimStopMessages.TripleFault(cpu, state.Rip), state);
                        }
                }
                if (control.StopReason is { } requested)
                {
                    return VmOutcomes.Stopped(requested, vm.Config.Timeout, Capture(cpu));
                }
            }
        }
        finally
        {
            clock.Stop();
            vm.Bus.InstructionPointer = null;
            vm.Exits.AddGuestTicks(clock.ElapsedTicks);
            vm.Serial.Flush();
            counters = CountersOf(cpu, clock.Elapsed);
            Events = EventsOf(cpu, Vmcs, monitor?.Shadow) with
            {
                Technique = options.Technique,
                PrivilegedTraps = monitor?.PrivilegedInstructionTraps ?? 0,
                Callouts = (monitor?.RingCompression?.Callouts ?? 0) + (monitor?.Callouts ?? 0),
                InstructionsTranslated = monitor?.RingCompression?.InstructionsTranslated ?? 0,
                IndirectBranches = monitor?.RingCompression?.IndirectBranches ?? 0,
                Hypercalls = monitor?.Hypercalls ?? 0,
                ParavirtualUpdates = monitor?.Shadow?.ParavirtualUpdates ?? 0,
            };
            if (Vmcs is { } vmcs && pool is not null && physicalMap is not null)
            {
                counters = [.. counters, .. VirtualizationCounters(cpu, vmcs, pool, physicalMap, monitor?.Shadow, monitor)];
            }
        }
    }

    private static MachineEvents EventsOf(Cpu cpu, VmControlStructure? vmcs, ShadowPaging? shadow)
    {
        var c = cpu.Counters;
        var m = cpu.Mmu.Counters;
        return new MachineEvents
        {
            RetiredByClass = (long[])c.RetiredByClass.Clone(),
            Instructions = c.InstructionsRetired,
            MemoryReferences = c.MemoryReads + c.MemoryWrites,
            TlbLookups = m.InstructionTlbHits + m.InstructionTlbMisses + m.DataTlbHits + m.DataTlbMisses,
            TlbMisses = m.InstructionTlbMisses + m.DataTlbMisses,
            Walks = m.Walks,
            WalkReferences = m.WalkReferences,
            NestedWalkReferences = m.NestedWalkReferences,
            EventsDelivered = c.ExceptionsByVector.Sum() + c.ExternalInterrupts + c.SoftwareInterrupts,
            SystemCalls = c.SystemCalls,
            PortAccesses = c.PortReads + c.PortWrites,
            Exits = vmcs?.ExitsByReason.ToDictionary(e => e.Reason, e => e.Count) ?? [],
            HiddenFaults = shadow?.HiddenFaults ?? 0,
            TrueFaults = shadow?.TrueFaults ?? 0,
            EmulatedWrites = (shadow?.PageTableWrites ?? 0) + (shadow?.OtherEmulatedWrites ?? 0) + (shadow?.CalloutWrites ?? 0),
            PageTableWrites = shadow?.PageTableWrites ?? 0,
            AddressSpaceSwitches = shadow?.AddressSpaceSwitches ?? 0,
            VmmWalkReferences = shadow?.SoftwareWalks.WalkReferences ?? 0,
        };
    }

    private static IEnumerable<EngineCounter> VirtualizationCounters(Cpu cpu, VmControlStructure vmcs, HostFramePool pool, GuestPhysicalMap map,
        ShadowPaging? shadow, VirtualMachineMonitor? monitor)
    {
        var m = cpu.Mmu.Counters;
        yield return new EngineCounter("vm_exits", (ulong)vmcs.TotalExits, "");
        foreach (var (reason, count) in vmcs.ExitsByReason)
        {
            yield return new EngineCounter($"vm_exits_{Snake(reason.ToString())}", (ulong)count, "");
        }
        if (cpu.Mmu.NestedPaging)
        {
            yield return new EngineCounter("nested_tlb_hits", (ulong)m.NestedTlbHits, "");
            yield return new EngineCounter("nested_tlb_misses", (ulong)m.NestedTlbMisses, "");
            yield return new EngineCounter("nested_walks", (ulong)m.NestedWalks, "");
            yield return new EngineCounter("nested_walk_references", (ulong)m.NestedWalkReferences, "");
            yield return new EngineCounter("nested_walk_cache_hits", (ulong)(m.NestedWalkCacheHits[0] + m.NestedWalkCacheHits[1] + m.NestedWalkCacheHits[2]), "");
            yield return new EngineCounter("nested_page_faults", (ulong)m.NestedPageFaults, "");
        }
        if (shadow is not null)
        {
            yield return new EngineCounter("shadow_hidden_faults", (ulong)shadow.HiddenFaults, "");
            yield return new EngineCounter("shadow_true_faults", (ulong)shadow.TrueFaults, "");
            yield return new EngineCounter("shadow_page_table_writes", (ulong)shadow.PageTableWrites, "");
            yield return new EngineCounter("shadow_other_emulated_writes", (ulong)shadow.OtherEmulatedWrites, "");
            yield return new EngineCounter("shadow_address_space_switches", (ulong)shadow.AddressSpaceSwitches, "");
            yield return new EngineCounter("shadow_tables_created", (ulong)shadow.TablesCreated, "");
            yield return new EngineCounter("shadow_tables_alive", (ulong)shadow.TablesAlive, "");
            yield return new EngineCounter("shadow_resets", (ulong)shadow.Resets, "");
            yield return new EngineCounter("shadow_unshadowed_pages", (ulong)shadow.Unshadowed, "");
            yield return new EngineCounter("shadow_callout_writes", (ulong)shadow.CalloutWrites, "");
            yield return new EngineCounter("vmm_software_walks", (ulong)shadow.SoftwareWalks.Walks, "");
            yield return new EngineCounter("vmm_software_walk_references", (ulong)shadow.SoftwareWalks.WalkReferences, "");
        }
        if (monitor?.RingCompression is { } rc)
        {
            yield return new EngineCounter("privileged_instruction_traps", (ulong)monitor.PrivilegedInstructionTraps, "");
            yield return new EngineCounter("uncaught_sensitive_instructions", (ulong)rc.UncaughtSensitive, "");
            yield return new EngineCounter("translator_callouts", (ulong)(rc.Callouts + monitor.Callouts), "");
            yield return new EngineCounter("translator_retranslations", (ulong)monitor.Retranslations, "");
            yield return new EngineCounter("translator_instructions_translated", (ulong)rc.InstructionsTranslated, "");
            yield return new EngineCounter("translator_blocks_translated", (ulong)rc.BlocksTranslated, "");
            yield return new EngineCounter("translator_cache_hits", (ulong)rc.CacheHits, "");
            yield return new EngineCounter("translator_indirect_branches", (ulong)rc.IndirectBranches, "");
            yield return new EngineCounter("translator_pages_invalidated", (ulong)rc.PagesInvalidated, "");
            yield return new EngineCounter("hypercalls", (ulong)monitor.Hypercalls, "");
            yield return new EngineCounter("paravirtual_page_table_updates", (ulong)(monitor.Shadow?.ParavirtualUpdates ?? 0), "");
        }
        yield return new EngineCounter("guest_pages_backed", (ulong)map.TouchedPages, "");
        yield return new EngineCounter("vmm_table_pages", (ulong)pool.TableFrames, "");
    }

    private static string Snake(string pascal) =>
        string.Concat(pascal.Select((c, i) => char.IsUpper(c) && i > 0 ? "_" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));

    private static List<EngineCounter> CountersOf(Cpu cpu, TimeSpan wall)
    {
        var c = cpu.Counters;
        var m = cpu.Mmu.Counters;
        var list = new List<EngineCounter>
        {
            new("instructions_retired", (ulong)c.InstructionsRetired, ""),
            new("instructions_per_second", wall.TotalSeconds > 0 ? (ulong)(c.InstructionsRetired / wall.TotalSeconds) : 0, "per s"),
            new("memory_reads", (ulong)c.MemoryReads, ""),
            new("memory_writes", (ulong)c.MemoryWrites, ""),
            new("instructions_decoded", (ulong)c.DecodedInstructions, ""),
            new("decode_cache_invalidations", (ulong)c.DecodeCacheInvalidations, ""),
            new("decode_cache_evictions", (ulong)c.DecodeCacheEvictions, ""),
            new("translations", (ulong)m.Translations, ""),
            new("itlb_hits", (ulong)m.InstructionTlbHits, ""),
            new("itlb_misses", (ulong)m.InstructionTlbMisses, ""),
            new("dtlb_hits", (ulong)m.DataTlbHits, ""),
            new("dtlb_misses", (ulong)m.DataTlbMisses, ""),
            new("page_walks", (ulong)m.Walks, ""),
            new("page_walk_references", (ulong)m.WalkReferences, ""),
            new("page_walk_cache_hits", (ulong)(m.WalkCacheHits[0] + m.WalkCacheHits[1] + m.WalkCacheHits[2]), ""),
            new("accessed_dirty_writes", (ulong)m.AccessedDirtyWrites, ""),
            new("page_faults", (ulong)m.PageFaults, ""),
            new("tlb_flushes", (ulong)m.TlbFlushes, ""),
            new("system_calls", (ulong)c.SystemCalls, ""),
            new("software_interrupts", (ulong)c.SoftwareInterrupts, ""),
            new("external_interrupts", (ulong)c.ExternalInterrupts, ""),
            new("apic_timer_interrupts", (ulong)cpu.Apic.TimerInterrupts, ""),
        };
        foreach (var kind in Enum.GetValues<InstructionClass>())
        {
            list.Add(new EngineCounter($"retired_{kind.ToString().ToLowerInvariant()}", (ulong)c.RetiredByClass[(int)kind], ""));
        }
        for (int v = 0; v < 32; v++)
        {
            if (c.ExceptionsByVector[v] > 0)
            {
                list.Add(new EngineCounter($"exceptions_vector_{v}", (ulong)c.ExceptionsByVector[v], ""));
            }
        }
        foreach (var (mnemonic, count) in c.UnimplementedByMnemonic)
        {
            list.Add(new EngineCounter($"unimplemented_{mnemonic.ToLowerInvariant()}", (ulong)count, ""));
        }
        return list;
    }

    /// <summary>The machine around the CPU: the VM's device bus and the CPUID Nestor's software CPU reports.</summary>
    private sealed class Platform(Vm vm, RunControl control, bool paravirtual) : IPlatform
    {
        /// <summary>The guest wrote the debug-exit port, or someone asked the run to stop (timeout, Ctrl-C, a signal):
        /// the CPU looks at it after port writes and between the iterations of long instructions.</summary>
        public bool StopRequested => vm.GuestStatus is not null || control.StopReason is not null;

        public uint PortRead(ushort port, int size)
        {
            long start = Stopwatch.GetTimestamp();
            uint value = vm.Bus.ReadPort(port, size);
            vm.Exits.RecordPort(port, false, 1, vm.Bus.PortDevice(port)?.Name);
            vm.Exits.Record(VmExitReason.PortRead, Stopwatch.GetTimestamp() - start);
            return value;
        }

        public void PortWrite(ushort port, int size, uint value)
        {
            long start = Stopwatch.GetTimestamp();
            vm.Bus.WritePort(port, size, value);
            vm.Exits.RecordPort(port, true, 1, vm.Bus.PortDevice(port)?.Name);
            vm.Exits.Record(VmExitReason.PortWrite, Stopwatch.GetTimestamp() - start);
        }

        public ulong MmioRead(ulong physical, int size)
        {
            long start = Stopwatch.GetTimestamp();
            ulong value = vm.Bus.ReadMemory(physical, size);
            vm.Exits.Record(VmExitReason.MmioRead, Stopwatch.GetTimestamp() - start);
            return value;
        }

        public void MmioWrite(ulong physical, int size, ulong value)
        {
            long start = Stopwatch.GetTimestamp();
            vm.Bus.WriteMemory(physical, size, value);
            vm.Exits.Record(VmExitReason.MmioWrite, Stopwatch.GetTimestamp() - start);
        }

        /// <summary>The features the model implements, and no others (<see cref="SoftwareCpuid"/>).</summary>
        public (uint Eax, uint Ebx, uint Ecx, uint Edx) Cpuid(uint leaf, uint subleaf) => SoftwareCpuid.Query(leaf, subleaf, paravirtual);
    }

    private static void Load(Cpu cpu, VcpuState s)
    {
        ulong[] r = cpu.Registers;
        (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) = (s.Rax, s.Rcx, s.Rdx, s.Rbx, s.Rsp, s.Rbp, s.Rsi, s.Rdi);
        (r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]) = (s.R8, s.R9, s.R10, s.R11, s.R12, s.R13, s.R14, s.R15);
        cpu.Rip = s.Rip;
        cpu.Rflags = s.Rflags;
        (cpu.Cr0, cpu.Cr2, cpu.Cr3, cpu.Cr4, cpu.Cr8, cpu.Efer) = (s.Cr0, s.Cr2, s.Cr3, s.Cr4, s.Cr8, s.Efer);
        cpu.Cs = ToSegment(s.Cs);
        cpu.Ds = ToSegment(s.Ds);
        cpu.Es = ToSegment(s.Es);
        cpu.Fs = ToSegment(s.Fs);
        cpu.Gs = ToSegment(s.Gs);
        cpu.Ss = ToSegment(s.Ss);
        cpu.Tr = ToSegment(s.Tr);
        cpu.Ldtr = ToSegment(s.Ldt);
        (cpu.GdtBase, cpu.GdtLimit, cpu.IdtBase, cpu.IdtLimit) = (s.Gdtr.Base, s.Gdtr.Limit, s.Idtr.Base, s.Idtr.Limit);
        cpu.ControlStateChanged();
    }

    private static Segment ToSegment(SegmentState s) => new()
    {
        Selector = s.Selector,
        Base = s.Base,
        Limit = s.Limit,
        Attributes = (ushort)(s.Type | (s.CodeOrData ? 0x10 : 0) | (s.PrivilegeLevel << 5) | (s.Present ? 0x80 : 0) |
                              (s.LongMode ? 0x2000 : 0) | (s.DefaultBig ? 0x4000 : 0) | (s.Granularity ? 0x8000 : 0)),
    };

    private static SegmentState FromSegment(Segment s) => new(s.Selector, s.Base, s.Limit, (byte)(s.Attributes & 0xF),
        (s.Attributes & 0x10) != 0, (byte)((s.Attributes >> 5) & 3), (s.Attributes & 0x80) != 0, (s.Attributes & 0x2000) != 0,
        (s.Attributes & 0x4000) != 0, (s.Attributes & 0x8000) != 0, (s.Attributes & 0x80) == 0);

    /// <summary>The CPU's architectural state as the engine-neutral <see cref="VcpuState"/>.</summary>
    public static VcpuState Capture(Cpu cpu)
    {
        ulong[] r = cpu.Registers;
        return new VcpuState
        {
            Rax = r[0],
            Rcx = r[1],
            Rdx = r[2],
            Rbx = r[3],
            Rsp = r[4],
            Rbp = r[5],
            Rsi = r[6],
            Rdi = r[7],
            R8 = r[8],
            R9 = r[9],
            R10 = r[10],
            R11 = r[11],
            R12 = r[12],
            R13 = r[13],
            R14 = r[14],
            R15 = r[15],
            Rip = cpu.Rip,
            Rflags = cpu.Rflags,
            Cr0 = cpu.Cr0,
            Cr2 = cpu.Cr2,
            Cr3 = cpu.Cr3,
            Cr4 = cpu.Cr4,
            Cr8 = cpu.Cr8,
            Efer = cpu.Efer,
            Cs = FromSegment(cpu.Cs),
            Ds = FromSegment(cpu.Ds),
            Es = FromSegment(cpu.Es),
            Fs = FromSegment(cpu.Fs),
            Gs = FromSegment(cpu.Gs),
            Ss = FromSegment(cpu.Ss),
            Tr = FromSegment(cpu.Tr),
            Ldt = FromSegment(cpu.Ldtr),
            Gdtr = new DescriptorTableState(cpu.GdtBase, cpu.GdtLimit),
            Idtr = new DescriptorTableState(cpu.IdtBase, cpu.IdtLimit),
            FsBase = cpu.Fs.Base,
            GsBase = cpu.Gs.Base,
            KernelGsBase = cpu.KernelGsBase,
            Star = cpu.Star,
            LongStar = cpu.LongStar,
            SyscallFlagMask = cpu.SyscallFlagMask,
        };
    }
}
