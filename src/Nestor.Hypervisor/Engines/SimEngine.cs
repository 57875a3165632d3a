using System.Diagnostics;
using Nestor.Hypervisor.CostModel;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Platform;
using Nestor.Hypervisor.State;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Addresses;
using Nestor.Machine.Processor;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Engines;

/// <summary>Runs a VM on Nestor's own x86-64 machine model (<see cref="Cpu"/>): every instruction interpreted,
/// every translation through the modelled MMU, every port access a trap into the VMM's devices.</summary>
public sealed class SimEngine(SimOptions? options = null) : IEngine, IDisposable, ISnapshottable
{
    // The VMM's state of the last run (saved by Save), and state restored from a snapshot, applied by the next run.
    // The engine keeps the VMM it built between runs, as a hypervisor keeps a paused VM's VMCS and tables.
    private GuestPhysicalMap? lastPhysicalMap;
    private NestedPageTable? lastNestedTable;
    private VmControlStructure? lastVmcs;
    private VirtualMachineMonitor? lastMonitor;
    private Cpu? lastCpu;
    private byte[]? restoredVmm;
    private ushort restoredVersion;


    private readonly SimOptions options = (options ?? new SimOptions()).Validate();

    /// <summary>Instructions run between checks for a stop request (timeout, Ctrl-C).</summary>
    private const long Slice = 1_000_000;

    public string Name => "sim";

    /// <inheritdoc/>
    public EngineDescription Description { get; } = new("in the software machine", "The software machine's counters (zero counters left out):");

    public SimOptions Options => options;

    /// <summary>When set, a host's scheduler gives this engine's vCPU its time: before each slice the engine asks it
    /// for the slice's instruction budget, and it blocks the engine's thread while the vCPU is descheduled
    /// (<see cref="Scheduling.IVcpuQuantum"/>). Null: the VM has a host CPU to itself, in slices of a million.</summary>
    public Scheduling.IVcpuQuantum? Quantum { get; init; }

    /// <summary>When set, a host's scheduler gives each vCPU of a VM with several its own time, one
    /// <see cref="Scheduling.IVcpuRound"/> per vCPU (index = vCPU): every round the engine asks each for its budget,
    /// runs only those the host dispatched, interleaved on this one thread as <c>--cpus N</c> runs them (so a run stays
    /// reproducible and no machine state needs a lock), and reports each vCPU's clock and count (docs/host.md, "VMs
    /// with several vCPUs"). Replaces <see cref="Quantum"/> for such a VM.</summary>
    public IReadOnlyList<Scheduling.IVcpuRound>? VcpuRounds { get; init; }

    /// <summary>Releases the host memory of the last run (its host frames and the VMM's tables); the
    /// <see cref="SoftwareMachineRun"/> it returned is no longer valid.</summary>
    public void Dispose()
    {
        lastCpu = null;
        lastPhysicalMap?.Dispose();
        lastPhysicalMap = null;
    }

    /// <summary>The section of the engine's state in a snapshot: the VMM's (<see cref="Save"/>).</summary>
    public string SectionTag => "VMM ";

    /// <summary>2: the VMCSs of every vCPU after vCPU 0's fields (1: one vCPU under a VMM).</summary>
    public ushort SectionVersion => 2;

    /// <summary>Saves the VMM state of the last run: the technique, then (under a VMM) the VMCS controls and exit
    /// counters, the P2M's touched pages and the nested page table's mappings. Shadow page tables are rebuilt, not
    /// saved.</summary>
    public void Save(SnapshotWriter writer)
    {
        writer.WriteByte((byte)options.Technique);
        writer.WriteBoolean(options.EffectiveMemory == MemoryVirtualization.Nested);
        if (options.Technique == Technique.Native)
        {
            return;
        }
        if (lastVmcs is null || lastPhysicalMap is null)
        {
            throw new InvalidOperationException("the engine has not run the VM: there is no VMM state to save");
        }
        lastVmcs.Save(writer);
        lastPhysicalMap.Save(writer);
        lastNestedTable?.Save(writer);
        // Binary translation's adaptive state: the callouts in its translation cache and the trap counts behind them.
        var callouts = lastCpu?.TranslatorCallouts() ?? [];
        writer.WriteInt32(callouts.Count);
        foreach (ulong linear in callouts)
        {
            writer.WriteUInt64(linear);
        }
        var traps = lastMonitor?.PageTableWriteTraps.OrderBy(t => t.Key).ToList() ?? [];
        writer.WriteInt32(traps.Count);
        foreach (var (rip, count) in traps)
        {
            writer.WriteUInt64(rip);
            writer.WriteInt32(count);
        }
        // The other vCPUs' VMCSs (section version 2).
        int vcpus = lastMonitor?.VcpuCount ?? 1;
        writer.WriteInt32(vcpus - 1);
        for (int i = 1; i < vcpus; i++)
        {
            lastMonitor!.ControlStructure(i).Save(writer);
        }
    }

    /// <summary>Takes a snapshot's VMM state, which the next <see cref="Run(Vm, RunControl)"/> installs in the VMM it builds. The
    /// engine must use the same technique and memory virtualization as the one saved.</summary>
    public void Restore(SnapshotReader reader, ushort version)
    {
        var technique = (Technique)reader.ReadByte();
        bool nested = reader.ReadBoolean();
        if (technique != options.Technique || nested != (options.EffectiveMemory == MemoryVirtualization.Nested))
        {
            throw reader.Invalid($"the snapshot was taken under {technique}{(nested ? " with nested paging" : "")}, and this engine runs {options.Technique}" +
                                 (options.Technique == Technique.HardwareAssist ? $" with {options.EffectiveMemory} paging" : ""));
        }
        restoredVmm = technique == Technique.Native ? null : reader.SectionRemainder();
        restoredVersion = version;
    }


    public RunResult Run(Vm vm, RunControl control)
    {
        VmControlStructure? vmcs = null;
        VirtualMachineMonitor? monitor = null;
        var outcome = Run(vm, control, out var cpu, ref vmcs, ref monitor, out var counters, out var events);
        return new RunResult(outcome, counters) { Events = events, Machine = new SoftwareMachineRun(cpu, vmcs, monitor) };
    }

    private VmOutcome Run(Vm vm, RunControl control, out Cpu cpu, ref VmControlStructure? vmcs, ref VirtualMachineMonitor? monitor,
        out IReadOnlyList<EngineCounter> counters, out MachineEvents events)
    {
        lastPhysicalMap?.Dispose();
        var pool = options.Technique == Technique.Native ? null : vm.Host.FramePool;
        var memory = pool?.Memory ?? new PhysicalMemory(vm.Memory.Regions.Select(r => (r.Region.Start.Value, r.Region.Length, r.Backing.Address)));
        ulong top = pool?.Memory.Limit ?? vm.Memory.Regions.Max(r => r.Region.End.Value);
        var platform = new VmPlatform(vm, control, new SoftwareCpuidModel(options.Technique == Technique.Paravirtual, vm.Config.CpuModel) { SplitDriver = vm.SplitDriver is not null });
        var machine = cpu = new Cpu(memory, platform, options.Mmu, top) { Model = vm.Config.CpuModel };
        // The vCPU's state as the VM holds it: at the kernel's entry, or where the last run (or a snapshot) left it.
        var vcpu = vm.Vcpus[0];
        cpu.LoadState(in vcpu.State);
        lastCpu = cpu;
        counters = [];
        events = new MachineEvents();
        // Several vCPUs: one Cpu each on the one physical memory, their local APICs on one APIC bus (APIC ID = index).
        var cpus = new Cpu[vm.Vcpus.Count];
        cpus[0] = machine;
        for (int i = 1; i < cpus.Length; i++)
        {
            cpus[i] = new Cpu(memory, platform, options.Mmu, top) { Model = vm.Config.CpuModel };
            cpus[i].LoadState(in vm.Vcpus[i].State);
        }
        Cpu.ShareMemory(cpus);
        for (int i = 0; cpus.Length > 1 && i < cpus.Length; i++)
        {
            var self = cpus[i];
            self.IdleHorizon = () => LatestClockOfOthers(cpus, self);
        }
        if (vm.Config.Clock == Configuration.GuestClock.Host)
        {
            // --clock host: every vCPU's clock follows one host-time base, from the furthest clock reached so far (a
            // restored snapshot's, or the last run's), so the TSCs agree and time never runs back.
            var hostTime = new HostTime(LatestClock(cpus), Devices.Platform.PlatformClock.SimCyclesPerSecond);
            foreach (var each in cpus)
            {
                each.HostTime = hostTime;
            }
        }
        var apicBus = new ApicBus(cpus);
        // The platform's lines reach the CPUs through the I/O APIC's messages to their local APICs, whose EOI for a
        // level-triggered vector comes back to the I/O APIC.
        vm.IoApic.LocalApic = machine.RequestInterrupt;
        vm.IoApic.Bus = cpus.Length == 1 ? null : apicBus.DeliverExternal;
        foreach (var each in cpus)
        {
            each.Apic.LevelTriggeredEndOfInterrupt = vm.IoApic.EndOfInterrupt;
        }
        // Each ISA line also drives the 8259 pair, whose output is the bootstrap processor's INTR (LINT0).
        vm.Interrupts.Sink = vm.IsaRouting;
        machine.ExternalInterrupts = vm.Pic;
        vm.Pic.OutputChanged = machine.InterruptStateChanged;
        GuestPhysicalMap? physicalMap = null;
        if (pool is not null)
        {
            physicalMap = lastPhysicalMap = vm.Host.NewPhysicalMap(vm);
            // Which technique may use which memory virtualization is TechniqueRules' (checked by SimOptions.Validate).
            bool nestedPaging = options.EffectiveMemory == MemoryVirtualization.Nested;
            var nested = nestedPaging ? new NestedPageTable(pool) : null;
            var shadow = nestedPaging ? null
                : new ShadowPaging(physicalMap, pool, vm.Memory) { VerifyAfterEachChange = options.VerifyShadowPaging, Devices = vm.Bus };
            physicalMap.Attach(cpu.Mmu, nested, shadow);
            physicalMap.BackingInstalled = host => machine.PhysicalMemoryWritten(new HostPhysical(host), 0x1000); // frame numbers are reused
            lastVmcs = vmcs = new VmControlStructure();
            lastMonitor = monitor = VirtualMachineMonitor.Create(vm, vmcs, physicalMap, nested, shadow, options.LargeNestedPages, options.Technique);
            (lastPhysicalMap, lastNestedTable) = (physicalMap, nested);
            // Several vCPUs: a VMCS each, their MMUs walking the one nested table (docs/memory-virtualization.md).
            for (int i = 1; i < cpus.Length; i++)
            {
                monitor.AddVcpu();
            }
            if (restoredVmm is { } saved)
            {
                // A snapshot's VMM state: the exit counters, the guest pages' host frames and the nested mappings. The
                // shadow page tables are not saved: Enter below builds them from the guest's tables, as after a reset.
                restoredVmm = null;
                var fields = SnapshotReader.OverFields(saved, SectionTag);
                vmcs.Restore(fields);
                physicalMap.Restore(fields);
                nested?.Restore(fields, physicalMap);
                int callouts = fields.ReadInt32();
                var linear = new List<ulong>();
                for (int i = 0; i < callouts; i++)
                {
                    linear.Add(fields.ReadUInt64());
                }
                cpu.RestoreTranslatorCallouts(linear);
                int traps = fields.ReadInt32();
                var counts = new List<KeyValuePair<ulong, int>>();
                for (int i = 0; i < traps; i++)
                {
                    counts.Add(new(fields.ReadUInt64(), fields.ReadInt32()));
                }
                monitor.RestorePageTableWriteTraps(counts);
                // Version 2: the VMCSs of vCPUs 1..N-1 (version 1 had one vCPU under a VMM).
                int others = restoredVersion >= 2 ? fields.ReadInt32() : 0;
                if (others != monitor.VcpuCount - 1)
                {
                    throw fields.Invalid($"the snapshot has the VMCSs of {others + 1} vCPUs and this VM has {monitor.VcpuCount}");
                }
                for (int i = 1; i < monitor.VcpuCount; i++)
                {
                    monitor.ControlStructure(i).Restore(fields);
                }
                if (fields.SectionRemaining != 0)
                {
                    throw fields.Invalid($"{fields.SectionRemaining} bytes more than the VMM's fields");
                }
            }
            try
            {
                monitor.Enter(cpu);
                for (int i = 1; i < cpus.Length; i++)
                {
                    physicalMap.AttachProcessor(cpus[i].Mmu);
                    monitor.Enter(cpus[i], i);
                }
            }
            catch (ShadowPagingException e)
            {
                return new VmOutcome(VmOutcomeKind.EmulationFailure, $"the VMM cannot enter the guest: {e.Message}", Capture(cpu));
            }
        }
        // Device DMA (virtio) writes guest RAM behind the CPU's back: under a VMM a shared frame becomes the page's
        // private copy first, as a guest write would make it (the P2M's copy-on-write break updates the nested or
        // shadow tables), and afterwards the CPU drops what it decoded from the written bytes.
        var dmaMap = physicalMap;
        vm.Dma.BeforeWrite = dmaMap is null ? null : (address, length) =>
        {
            for (ulong page = address.Value & ~0xFFFUL; page < address.Value + (ulong)length; page += 0x1000)
            {
                dmaMap.Touch(new GuestPhysical(page), write: true);
            }
        };
        vm.Dma.BeforeRead = dmaMap is null ? null : (address, length) => dmaMap.DeviceRead(address.Value, length); // host-swapped pages come back
        vm.Dma.Written = (address, length) =>
        {
            if (dmaMap is null)
            {
                machine.PhysicalMemoryWritten(new HostPhysical(address.Value), length);
                return;
            }
            for (ulong page = address.Value & ~0xFFFUL; page < address.Value + (ulong)length; page += 0x1000)
            {
                if (dmaMap.TryHostPhysical(new GuestPhysical(page), out var host))
                {
                    machine.PhysicalMemoryWritten(host, 0x1000);
                }
            }
        };
        // The accessing instruction's own address (RIP is already past it while it executes).
        var running = machine; // the vCPU running now, whose instruction reaches the devices
        platform.ReportInstructionPointer(() => running.InstructionAddress, isNext: false);
        // The platform timers count in the guest's cycles (its TSC): with several vCPUs, the furthest clock, so that
        // time goes on while the bootstrap processor is halted and others run.
        vm.PcPlatform.Clock.Attach(cpus.Length == 1 ? () => machine.Clock : () => LatestClock(cpus));
        var clock = Stopwatch.StartNew();
        try
        {
            var roundBudgets = cpus.Length > 1 && VcpuRounds is { } rounds ? new long[cpus.Length] : null;
            var idledLastRound = roundBudgets is null ? null : new bool[cpus.Length];
            while (true)
            {
                if (roundBudgets is not null)
                {
                    if (RunDispatched(vm, cpus, VcpuRounds!, roundBudgets, idledLastRound!, platform, vmcs, monitor, ref running) is { } stopped)
                    {
                        return stopped;
                    }
                    continue;
                }
                long budget = Quantum?.NextBudget(cpu.Clock, cpu.Counters.InstructionsRetired) ?? Slice;
                if (options.StopAtInstruction is { } breakAt)
                {
                    budget = Math.Min(budget, breakAt - cpu.Counters.InstructionsRetired);
                    if (budget <= 0)
                    {
                        return new VmOutcome(VmOutcomeKind.Breakpoint,
                            $"stopped after {cpu.Counters.InstructionsRetired:N0} instructions, as asked", Capture(cpu));
                    }
                }
                // A slice ends by the next platform timer interrupt (one cycle is a nanosecond: PlatformClock).
                long timer = vm.PcPlatform.NextTimerEvent;
                if (timer != long.MaxValue)
                {
                    budget = Math.Clamp(timer - vm.PcPlatform.Clock.Nanoseconds + 1, 1, budget);
                }
                if (cpus.Length > 1)
                {
                    if (RunInterleaved(vm, cpus, budget, platform, vmcs, monitor, ref running) is { } ended)
                    {
                        return ended;
                    }
                    continue;
                }
                if (RunSlice(vm, cpu, budget, platform, vmcs, monitor) is { } outcome)
                {
                    return outcome;
                }
            }
        }
        finally
        {
            vm.PcPlatform.Clock.Detach();
            vm.Dma.BeforeWrite = null;
            vm.Dma.Written = null;
            clock.Stop();
            for (int i = 0; i < cpus.Length; i++)
            {
                vm.Vcpus[i].State = cpus[i].SaveState(); // the next run continues from here
            }
            platform.AddGuestTicks(clock.ElapsedTicks);
            platform.EndRun();
            counters = CountersOf(cpu, clock.Elapsed);
            events = EventsOf(cpu, monitor, monitor?.Shadow) with
            {
                Technique = options.Technique,
                PrivilegedTraps = monitor?.PrivilegedInstructionTraps ?? 0,
                Callouts = (monitor?.RingCompression?.Callouts ?? 0) + (monitor?.Callouts ?? 0),
                InstructionsTranslated = monitor?.RingCompression?.InstructionsTranslated ?? 0,
                IndirectBranches = monitor?.RingCompression?.IndirectBranches ?? 0,
                Hypercalls = monitor?.Hypercalls ?? 0,
                ParavirtualUpdates = monitor?.Shadow?.ParavirtualUpdates ?? 0,
            };
            if (vmcs is not null && pool is not null && physicalMap is not null)
            {
                counters = [.. counters, .. VirtualizationCounters(cpu, vmcs, pool, physicalMap, monitor)];
            }
        }
    }

    /// <summary>Instructions a vCPU runs before the next one takes its turn, when a VM has several (the default
    /// interleaving, docs/cpu-model.md): short enough that a processor spinning on a flag another sets waits a few
    /// tens of microseconds of host time, long enough that switching costs little.</summary>
    public const long InterleaveSlice = 10_000;

    /// <summary>Runs one vCPU for up to <paramref name="budget"/> instructions; the run's outcome if it ended. With
    /// several vCPUs (<paramref name="smp"/>) HLT ends only this vCPU's slice.</summary>
    private static VmOutcome? RunSlice(Vm vm, Cpu cpu, long budget, VmPlatform platform, VmControlStructure? vmcs,
        VirtualMachineMonitor? monitor, bool smp = false)
    {
        StopReason stop;
        try
        {
            stop = cpu.Run(budget);
        }
        catch (NotSupportedException e)
        {
            // RIP is at the instruction (or event) that needed what the machine does not model.
            return new VmOutcome(VmOutcomeKind.EmulationFailure,
                $"the guest needs what the software machine does not model, at rip=0x{cpu.Rip:x}{(smp ? $" on vCPU {cpu.Apic.Id}" : "")}: {e.Message}", Capture(cpu));
        }
        vm.PcPlatform.AdvanceTimers();
        switch (stop)
        {
            case StopReason.VmmStop:
                return new VmOutcome(VmOutcomeKind.EmulationFailure,
                    $"the VMM stopped the guest at rip=0x{cpu.Rip:x} after a {vmcs?.LastExit.Reason} exit: {monitor?.StopMessage ?? "it could not handle it"}",
                    Capture(cpu));
            case StopReason.PlatformStop:
                // The debug exit, or a stop request (timeout, a signal) the CPU saw after a port write, a
                // fault, or between the iterations of a REP string instruction, which it left suspended.
                return platform.StopOutcome(Capture(cpu)) ?? throw new InvalidOperationException("the CPU stopped for the platform, which asked nothing");
            case StopReason.Halted when smp:
                return null; // the others run on
            case StopReason.Halted:
                return platform.Halted(Capture(cpu));
            case StopReason.Shutdown:
                {
                    var (cause, note) = SimStopMessages.TripleFault(cpu);
                    return platform.TripleFault(Capture(cpu), cause, note);
                }
        }
        return platform.StopOutcome(Capture(cpu));
    }

    /// <summary>Several vCPUs on this host thread, deterministically: in index order, each runnable one for
    /// <see cref="InterleaveSlice"/> instructions at a time, until each has had <paramref name="budget"/>. A vCPU
    /// waiting for a start-up IPI is skipped; a halted one is skipped until an interrupt it accepts (or an NMI) is
    /// pending. When none can run, the VM has halted (reported with the bootstrap processor's state).</summary>
    private static VmOutcome? RunInterleaved(Vm vm, Cpu[] cpus, long budget, VmPlatform platform, VmControlStructure? vmcs,
        VirtualMachineMonitor? monitor, ref Cpu running)
    {
        for (long done = 0; done < budget; done += InterleaveSlice)
        {
            long slice = Math.Min(InterleaveSlice, budget - done);
            bool ran = false;
            foreach (var cpu in cpus)
            {
                if (!cpu.Runnable)
                {
                    continue;
                }
                ran = true;
                running = cpu;
                if (RunSlice(vm, cpu, slice, platform, monitor?.ControlStructureOf(cpu) ?? vmcs, monitor, smp: true) is { } outcome)
                {
                    return outcome;
                }
            }
            if (!ran && !IdleToNextDeviceEvent(cpus, platform))
            {
                return platform.Halted(Capture(cpus[0]));
            }
        }
        return null;
    }

    /// <summary>One host round of a VM whose vCPUs a host schedules one by one (<see cref="VcpuRounds"/>): every
    /// vCPU's budget first (0 for one not dispatched: it does not run and its clock stands still), then the dispatched
    /// ones interleaved in index order, each in slices of <see cref="InterleaveSlice"/> (or
    /// <see cref="Scheduling.VcpuQuantum.ShortSlice"/> after it idled, to see its next HLT soon) until its budget is
    /// used, it idles in HLT (its clock jumped to its timer: the host blocks it until then), or it cannot run (a start-up
    /// IPI or an interrupt from a sibling makes it runnable again, perhaps within this same round); then every vCPU's
    /// report. Allocates nothing: the arrays are the run's.</summary>
    private static VmOutcome? RunDispatched(Vm vm, Cpu[] cpus, IReadOnlyList<Scheduling.IVcpuRound> rounds, long[] left,
        bool[] idledLastRound, VmPlatform platform, VmControlStructure? vmcs, VirtualMachineMonitor? monitor, ref Cpu running)
    {
        Span<long> startClock = stackalloc long[cpus.Length];
        Span<long> startRetired = stackalloc long[cpus.Length];
        for (int i = 0; i < cpus.Length; i++)
        {
            startClock[i] = cpus[i].Clock;
            startRetired[i] = cpus[i].Counters.InstructionsRetired;
            left[i] = rounds[i].AwaitRound(startClock[i], startRetired[i]);
        }
        VmOutcome? outcome = null;
        bool more = true;
        while (more && outcome is null)
        {
            more = false;
            for (int i = 0; i < cpus.Length && outcome is null; i++)
            {
                var each = cpus[i];
                if (left[i] <= 0 || !each.Runnable)
                {
                    continue;
                }
                long slice = Math.Min(idledLastRound[i] ? Scheduling.VcpuQuantum.ShortSlice : InterleaveSlice, left[i]);
                // A slice ends by the next platform timer interrupt (one cycle is a nanosecond: PlatformClock).
                long timer = vm.PcPlatform.NextTimerEvent;
                if (timer != long.MaxValue)
                {
                    slice = Math.Clamp(timer - vm.PcPlatform.Clock.Nanoseconds + 1, 1, slice);
                }
                running = each;
                long before = each.Counters.InstructionsRetired;
                outcome = RunSlice(vm, each, slice, platform, monitor?.ControlStructureOf(each) ?? vmcs, monitor, smp: true);
                long retired = each.Counters.InstructionsRetired - before;
                left[i] = retired == 0 ? 0 : left[i] - retired; // one that made no progress (halted) is done for the round
                long busy = each.Counters.InstructionsRetired - startRetired[i];
                if (each.Clock - startClock[i] > busy)
                {
                    left[i] = 0; // it idled in HLT until its timer: its round ends there
                }
                more |= left[i] > 0;
            }
        }
        bool anyRunnable = false, anyRan = false;
        for (int i = 0; i < cpus.Length; i++)
        {
            long busy = cpus[i].Counters.InstructionsRetired - startRetired[i];
            anyRan |= busy > 0;
            idledLastRound[i] = cpus[i].Clock - startClock[i] > busy;
            anyRunnable |= cpus[i].Runnable;
            rounds[i].EndRound(cpus[i].Clock, cpus[i].Counters.InstructionsRetired, cpus[i].Runnable);
        }
        if (outcome is not null)
        {
            return outcome;
        }
        if (anyRan)
        {
            return null; // a slice that ran looked at stop requests itself (RunSlice)
        }
        // A stop the host asked (a budget of 1) or a snapshot's stop request, when no vCPU could run to see it.
        if (platform.StopOutcome(Capture(cpus[0])) is { } stop)
        {
            return stop;
        }
        return anyRunnable || IdleToNextDeviceEvent(cpus, platform) ? null : platform.Halted(Capture(cpus[0])); // none can run again: the VM has halted
    }

    /// <summary>Every vCPU halted (or waiting for its start-up IPI) and a platform device's timer armed: the halted
    /// ones idle to that event together and the devices advance, as one halted processor idles alone (Cpu's
    /// IdleHorizon); true if time moved. False when no event is armed or a stop is asked: the VM has halted.</summary>
    private static bool IdleToNextDeviceEvent(Cpu[] cpus, VmPlatform platform)
    {
        long next = platform.NextDeviceEvent;
        if (next == long.MaxValue || platform.StopRequested)
        {
            return false;
        }
        foreach (var each in cpus)
        {
            each.IdleUntil(next);
        }
        platform.AdvanceDevices();
        return true;
    }

    private static long LatestClockOfOthers(Cpu[] cpus, Cpu self)
    {
        long latest = 0;
        foreach (var each in cpus)
        {
            if (!ReferenceEquals(each, self))
            {
                latest = Math.Max(latest, each.Clock);
            }
        }
        return latest;
    }

    private static long LatestClock(Cpu[] cpus)
    {
        long latest = 0;
        foreach (var cpu in cpus)
        {
            latest = Math.Max(latest, cpu.Clock);
        }
        return latest;
    }

    private static MachineEvents EventsOf(Cpu cpu, VirtualMachineMonitor? monitor, ShadowPaging? shadow)
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
            Exits = monitor?.ExitsByReason.ToDictionary(e => e.Reason, e => e.Count) ?? [],
            HiddenFaults = shadow?.HiddenFaults ?? 0,
            TrueFaults = shadow?.TrueFaults ?? 0,
            EmulatedWrites = (shadow?.PageTableWrites ?? 0) + (shadow?.OtherEmulatedWrites ?? 0) + (shadow?.CalloutWrites ?? 0),
            PageTableWrites = shadow?.PageTableWrites ?? 0,
            AddressSpaceSwitches = shadow?.AddressSpaceSwitches ?? 0,
            VmmWalkReferences = shadow?.SoftwareWalks.WalkReferences ?? 0,
        };
    }

    private static IEnumerable<EngineCounter> VirtualizationCounters(Cpu cpu, VmControlStructure vmcs, HostFramePool pool, GuestPhysicalMap map,
        VirtualMachineMonitor? monitor)
    {
        yield return new EngineCounter("vm_exits", (ulong)(monitor?.TotalExits ?? vmcs.TotalExits), "");
        foreach (var (reason, count) in monitor?.ExitsByReason ?? vmcs.ExitsByReason)
        {
            yield return new EngineCounter($"vm_exits_{Snake(reason.ToString())}", (ulong)count, "");
        }
        // Several vCPUs: each one's VMCS counts its own exits (SDM Vol. 3C §25.1).
        for (int i = 0; monitor is not null && monitor.VcpuCount > 1 && i < monitor.VcpuCount; i++)
        {
            yield return new EngineCounter($"vm_exits_vcpu{i}", (ulong)monitor.ControlStructure(i).TotalExits, "");
        }
        if (monitor is not null)
        {
            foreach (var counter in monitor.Memory.Counters(cpu))
            {
                yield return counter;
            }
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
        var list = new List<EngineCounter>();
        // The order is the one the CLI and JSON have always had: the CPU's retired count and rate, its memory and
        // decode counters, the MMU's (up to the flushes; the nested ones are the VMM's report), then the CPU's
        // system calls and interrupts.
        Report(list, c, CpuCounter.InstructionsRetired, CpuCounter.InstructionsRetired);
        list.Add(new("instructions_per_second", wall.TotalSeconds > 0 ? (ulong)(c.InstructionsRetired / wall.TotalSeconds) : 0, "per s"));
        Report(list, c, CpuCounter.MemoryReads, CpuCounter.DecodeCacheEvictions);
        Report(list, cpu.Mmu.Counters, MmuCounter.Translations, MmuCounter.TlbFlushes);
        Report(list, c, CpuCounter.SystemCalls, CpuCounter.ExternalInterrupts);
        list.Add(new("apic_timer_interrupts", (ulong)cpu.Apic.TimerInterrupts, ""));
        if (cpu.HostTime is { } hostTime)
        {
            // --clock host: how much of the clock came from following the host's time and from skipping idle time.
            list.Add(new("clock_host_time_cycles", (ulong)cpu.HostTimeCycles, ""));
            list.Add(new("clock_skipped_idle_cycles", (ulong)hostTime.Skipped, ""));
        }
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

    // One counter per reported name, in enum order, from first to last; the reported-name tables are the
    // counter classes' own.
    private static void Report(List<EngineCounter> list, CpuCounters counters, CpuCounter first, CpuCounter last)
    {
        for (var counter = first; counter <= last; counter++)
        {
            if (CpuCounters.ReportedName(counter) is { } name)
            {
                list.Add(new EngineCounter(name, (ulong)counters[counter], ""));
            }
        }
    }

    // Adjacent counters of one reported name (the page-walk cache's three levels) are reported as their sum.
    private static void Report(List<EngineCounter> list, MmuCounters counters, MmuCounter first, MmuCounter last)
    {
        for (var counter = first; counter <= last; counter++)
        {
            string name = MmuCounters.ReportedName(counter);
            long sum = counters[counter];
            while (counter < last && MmuCounters.ReportedName(counter + 1) == name)
            {
                counter++;
                sum += counters[counter];
            }
            list.Add(new EngineCounter(name, (ulong)sum, ""));
        }
    }

    /// <summary>The CPU's architectural state as the engine-neutral <see cref="VcpuState"/>.</summary>
    public static VcpuState Capture(Cpu cpu) => CpuStateConversion.ToVcpuState(cpu.SaveState());
}
