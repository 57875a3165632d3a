using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory.Reclamation;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Hosting;

/// <summary>A host of many VMs in one process (issue 14): one <see cref="Hypervisor.Host"/> (one frame pool) for all of
/// them, ESX's admission control at power-on, and a scheduler that runs their vCPUs on <see cref="HostSpec.HostCpus"/>
/// host threads at a time, in rounds of virtual time. Each VM has a thread of its own that runs its software machine;
/// the dispatch thread (the one that calls <see cref="Run"/>) decides each round, releases the chosen vCPUs for it and
/// waits until each has reported what it ran, so that decisions depend only on virtual time and a run is reproducible.
/// <para>Guest time across descheduling: a VM's TSC and APIC timer count its own virtual time (the cycles it ran plus
/// those it idled in HLT) and stand still while it is descheduled, so its results and timings are those of a VM with a
/// host CPU to itself; what it lost is its steal time (its ready time), which a paravirtual guest can read
/// (<see cref="StealTimeDevice"/>). A guest that idles in HLT until its timer is blocked in host time until the host's
/// clock reaches its wake-up, and then ready until dispatched: that delay is its wake-up latency.</para>
/// <para>Isolation: a VM that triple-faults, halts, faults in its VMM or floods its serial port ends alone (its run
/// returns an outcome, and its thread reports it); one that spins is held to its limit or cap and ended by its own
/// run limit; one that touches all its memory touches only its own (its RAM is its max).</para></summary>
public sealed partial class VirtualMachineHost : IHostControl, IDisposable
{
    private readonly HostSpec spec;
    private readonly List<HostedVm> vms = [];
    private readonly AdmissionControl admission;
    private readonly VcpuScheduler scheduler;
    private readonly TextWriter? console;
    private readonly Lock gate = new();
    private readonly Lock consoleGate = new();
    private readonly ScheduledVcpu?[] hostCpus;
    private readonly List<HostedVm> roundVms = []; // the VMs with a vCPU placed this round
    private readonly CountdownEvent roundDone = new(0);
    private readonly ManualResetEventSlim operatorActed = new(false);
    // Set while no Run is under way: Dispose waits on it, so that a host disposed while another thread runs it (a
    // test that failed half-way, an operator's Ctrl-C) stops its VMs first instead of pulling the events from under
    // the dispatcher and its vCPU threads.
    private readonly ManualResetEventSlim runEnded = new(true);
    private Host? host;
    private long now;
    private long rounds;
    private long idleCpuRounds;
    private bool started;
    private bool durationOver;
    // VMs the dispatcher stopped between rounds (their duration or run limit is over), whose threads it waits for
    // before the next round (VcpuQuantum.WaitFinished says why).
    private readonly List<HostedVm> stoppedBetweenRounds = [];
    private readonly HostMemoryManager memory;
    private readonly Dictionary<HostedVm, ActiveMemorySampler>? activeSamplers;

    /// <summary>The sampling period of the active-memory estimate under the idle memory tax, in virtual milliseconds of
    /// each VM's clock. ESX samples 100 pages every 30 s of a server's life; Nestor's VMs live for milliseconds of
    /// virtual time, so the period is scaled down to 1 ms (the bench's default, bench/RESULTS.md "Idle memory tax").</summary>
    public const double ActiveSamplePeriodMilliseconds = 1.0;
    private readonly List<HostedVm> toBlock = [];

    /// <param name="spec">What the host has and runs.</param>
    /// <param name="console">Where VMs without a serial file write their prefixed lines (null: nowhere; the report
    /// keeps them).</param>
    public VirtualMachineHost(HostSpec spec, TextWriter? console)
    {
        if (spec.HostCpus < 1)
        {
            throw new BadInputException($"a host needs at least one CPU, not {spec.HostCpus}", "Give --host-cpus 1 or more");
        }
        var duplicate = spec.Vms.GroupBy(v => v.Name).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new BadInputException($"two VMs are named '{duplicate.Key}'", "Give every VM its own name");
        }
        if (spec.Vms.FirstOrDefault(v => v.VcpuCount > 1 && !TechniqueRules.AllowsSeveralVcpus(v.Sim.Technique, v.Sim.Memory)) is { } several)
        {
            // As HostConfiguration refuses it (TechniqueRules.AllowsSeveralVcpus, the one rule).
            var refusal = TechniqueRules.SeveralVcpusRefusal(several.Sim.Technique, several.Sim.Memory)!;
            throw new BadInputException($"VM '{several.Name}' has {several.VcpuCount} vCPUs: {refusal.Message}", refusal.Hint);
        }
        this.spec = spec;
        this.console = console;
        admission = new AdmissionControl(spec.MemoryBytes, spec.SwapBytes, spec.HostCpus);
        memory = new HostMemoryManager(spec);
        if (spec.AllocationPolicy is IdleMemoryTax)
        {
            // The idle memory tax needs each VM's active fraction f (Waldspurger OSDI'02 §5.3): one sampler per VM,
            // advanced between rounds on the VM's own clock; a VM not yet sampled counts as fully active (f = 1).
            activeSamplers = [];
            memory.ActiveFraction = vm => activeSamplers.TryGetValue(vm, out var sampler) ? sampler.ActiveFraction : 1.0;
        }
        scheduler = VcpuScheduler.Create(spec.Scheduler, spec.Clock, spec.HostCpus);
        hostCpus = new ScheduledVcpu?[spec.HostCpus];
        for (int i = 0; i < spec.Vms.Count; i++)
        {
            vms.Add(new HostedVm(spec.Vms[i], i));
        }
    }

    /// <summary>Called on the dispatch thread after each round, while every vCPU waits, with the host and the round's
    /// length in cycles: where page sharing and host swapping run (Memory/Sharing, Memory/Swapping).</summary>
    public Action<Host, long>? BetweenRounds { get; set; }

    /// <summary>Called on the dispatch thread for each VM as it is powered on, its VM and engine made, before its
    /// vCPU runs: where an incoming migration restores it (Migration/IncomingMigration).</summary>
    public Action<HostedVm>? VmCreated { get; set; }

    /// <summary>Called on the dispatch thread after the memory manager's round (every vCPU still stopped): where a bench
    /// or a test reads the free-memory state it just set.</summary>
    public Action<VirtualMachineHost, long>? AfterReclaim { get; set; }

    /// <summary>The VMs in the order configured.</summary>
    public IReadOnlyList<HostedVm> Vms => vms;

    /// <summary>The scheduler.</summary>
    public VcpuScheduler Scheduler => scheduler;

    /// <summary>The host's virtual clock now (cycles).</summary>
    public long Now => Interlocked.Read(ref now);

    /// <summary>Rounds run so far.</summary>
    public long Rounds => Interlocked.Read(ref rounds);

    /// <summary>Admission control's books.</summary>
    public AdmissionControl Admission => admission;

    /// <summary>Memory overcommitment: the free-memory state, sharing, balloons, host swapping (issue 15).</summary>
    public HostMemoryManager MemoryManager => memory;

    /// <summary>The host spec it runs.</summary>
    public HostSpec Spec => spec;

    /// <summary>Powers the VMs on (those admission control admits), runs them until each has ended, and returns when
    /// they all have. Call once.</summary>
    public void Run()
    {
        lock (gate)
        {
            if (started)
            {
                throw new InvalidOperationException("the host has run already");
            }
            started = true;
            runEnded.Reset();
        }
        try
        {
            RunAdmitted();
        }
        finally
        {
            runEnded.Set();
        }
    }

    private void RunAdmitted()
    {
        PowerOn();
        using var deadline = spec.WallTimeout is { } limit ? new Deadline(limit, () => StopAll("the host's --timeout passed")) : null;
        foreach (var vm in vms.Where(v => v.Thread is not null))
        {
            vm.Thread!.Start();
        }
        Dispatch();
        foreach (var vm in vms.Where(v => v.Thread is not null))
        {
            vm.Thread!.Join();
        }
        lock (gate)
        {
            foreach (var vm in vms.Where(v => v.Result is not null))
            {
                vm.State = HostedVmState.Stopped;
                vm.Outcome = vm.StopCause ?? vm.Result!.Outcome.Message;
                vm.MarkDone();
                admission.Release(vm.Spec);
            }
        }
    }

    private void PowerOn()
    {
        ulong guestBytes = 0;
        foreach (var vm in vms)
        {
            if (admission.TryAdmit(vm.Spec) is { } refusal)
            {
                vm.State = HostedVmState.Refused;
                vm.Outcome = $"refused at power-on: {refusal}";
                vm.MarkDone();
                continue;
            }
            guestBytes += vm.Spec.Memory.MaxBytes;
        }
        host = Host.ForGuestMemory(Math.Max(guestBytes, 1UL << 20));
        var initialBalloon = memory.InitialBalloons(vms.Where(v => v.State == HostedVmState.Created).ToList());
        foreach (var vm in vms.Where(v => v.State == HostedVmState.Created))
        {
            Stream? file = vm.Spec.SerialFile is { } path ? HostFile.CreateExclusive(path, $"serial log of VM '{vm.Name}'", "serial") : null;
            var captured = vm;
            vm.Serial = new SerialOutput(vm.Name, file is null ? console : null, consoleGate, file, vm.Spec.SerialLimitBytes,
                () => StopVm(captured, $"stopped: its serial output passed its limit of {captured.Spec.SerialLimitBytes:N0} bytes (a flood)", VmOutcomeKind.Terminated));
            var config = new VmConfig
            {
                Engine = EngineKind.Sim,
                Sim = vm.Spec.Sim,
                Kernel = vm.Spec.Kernel,
                MemoryBytes = vm.Spec.Memory.MaxBytes,
                CommandLine = vm.Spec.BootCommandLine,
                SerialOutput = vm.Serial,
                Cpus = vm.Spec.VcpuCount,
                Multiboot = vm.Spec.Multiboot,
                Disks = vm.Spec.SwapDisk is { } swapDisk ? [swapDisk] : [],
                Balloon = vm.Spec.Balloon && spec.Overcommit.Balloon,
                BalloonTargetPages = vm.Spec.Balloon && spec.Overcommit.Balloon ? (uint)initialBalloon.GetValueOrDefault(vm) : 0,
            };
            try
            {
                vm.Vm = Vm.Create(config, host);
            }
            catch (NestorException e)
            {
                vm.State = HostedVmState.Stopped;
                vm.Outcome = $"could not be created: {e.Message}";
                vm.MarkDone();
                admission.Release(vm.Spec);
                continue;
            }
            vm.Balloon = Devices.Virtio.Balloon.VirtioBalloon.Of(vm.Vm);
            StealTimeDevice.Attach(vm.Vm, vm.Vcpu, spec.Clock);
            vm.Engine = vm.NewEngine();
            RestoreIfAsked(vm); // nestor host run --restore NAME=FILE (ControlApi/HostSnapshots.cs)
            VmCreated?.Invoke(vm); // an incoming migration installs its RAM and state here (Migration/IncomingMigration)
            for (int i = 0; i < vm.Vcpus.Count; i++)
            {
                // An application processor in wait-for-SIPI (SDM Vol. 3A §8.4.1) is not runnable, nor ready, until a
                // sibling's start-up IPI reaches it (its round's report says so: WakeSleepers).
                if (vm.Vm.Vcpus[i].State.WaitingForStartup)
                {
                    vm.Vcpus[i].State = VcpuRunState.Blocked;
                    vm.Vcpus[i].WakeAt = long.MaxValue;
                    vm.Quanta[i].Runnable = false;
                }
                scheduler.Add(vm.Vcpus[i]);
            }
            vm.State = HostedVmState.Running;
            vm.Thread = new Thread(() => RunVcpu(captured)) { Name = $"vcpu {vm.Name}", IsBackground = true };
        }
    }

    // The vCPU's thread: the engine runs the guest, asking the quantum before each slice.
    private void RunVcpu(HostedVm vm)
    {
        try
        {
            vm.Result = RunTakingSnapshots(vm); // vm.Vm.Run, paused for each snapshot asked (ControlApi/HostSnapshots.cs)
            while (vm.Migration?.TakeOver(vm.Result) == true) // the migration failed after stopping it: it runs on
            {
                vm.Result = RunTakingSnapshots(vm);
            }
        }
        catch (Exception e)
        {
            vm.Result = new RunResult(new VmOutcome(VmOutcomeKind.EmulationFailure, $"the VMM failed: {e.Message}", null), []);
        }
        finally
        {
            vm.EndedAt = Now;
            vm.Serial?.Complete();
            for (int i = 0; i < vm.Quanta.Count; i++)
            {
                var state = vm.Vm!.Vcpus[i].State;
                vm.Quanta[i].Finish(state.InstructionsRetired + state.IdleCycles, state.InstructionsRetired);
            }
        }
    }

    private void Dispatch()
    {
        long round = scheduler.RoundCycles;
        while (true)
        {
            int assigned = 0;
            bool waitForOperator = false;
            lock (gate)
            {
                if (vms.All(v => v.Vcpu.State == VcpuRunState.Done))
                {
                    return;
                }
                if (spec.DurationMilliseconds is { } duration && now >= spec.Clock.Cycles(duration) && !durationOver)
                {
                    durationOver = true;
                    foreach (var vm in vms.Where(v => v.Thread is not null && v.Vcpu.State != VcpuRunState.Done && v.StopCause is null))
                    {
                        vm.EndedAsPlanned = true;
                        StopVm(vm, $"stopped: the host's run of {duration:0.###} ms of virtual time is over", VmOutcomeKind.Timeout);
                        stoppedBetweenRounds.Add(vm);
                    }
                }
            }
            if (FinishStopped())
            {
                continue;
            }
            lock (gate)
            {
                WakeSleepers();
                scheduler.Assign(now, hostCpus);
                roundVms.Clear();
                int handOvers = 0;
                for (int i = 0; i < hostCpus.Length; i++)
                {
                    if (hostCpus[i] is { } v)
                    {
                        assigned++;
                        if (!roundVms.Contains(vms[v.Order]))
                        {
                            roundVms.Add(vms[v.Order]);
                            handOvers += vms[v.Order].Quanta.Count;
                        }
                    }
                }
                if (assigned == 0)
                {
                    // Only paused VMs are left when no one sleeps either: wait for the operator.
                    // Once the host's run is over, time stands still while the stopped VMs' threads finish.
                    waitForOperator = durationOver || !SkipIdleTime(round);
                    operatorActed.Reset();
                }
                else
                {
                    // The host CPUs are dispatch slots in virtual time: each runs one vCPU for the round. A VM's vCPUs
                    // share its one engine thread, so every vCPU of a VM with any placed gets its hand-over, 0 for one
                    // not placed (it does not run; its clock stands still: "Time").
                    roundDone.Reset(handOvers);
                    foreach (var vm in roundVms)
                    {
                        for (int j = 0; j < vm.Quanta.Count; j++)
                        {
                            bool placed = Array.IndexOf(hostCpus, vm.Vcpus[j]) >= 0;
                            if (placed)
                            {
                                Charge(vm.Vcpus[j]);
                            }
                            if (!vm.Quanta[j].Dispatch(placed ? round : 0, roundDone))
                            {
                                roundDone.Signal(); // its run ended before it ever ran
                            }
                        }
                    }
                }
            }
            if (assigned == 0)
            {
                if (waitForOperator)
                {
                    operatorActed.Wait(durationOver ? 5 : 50);
                }
                continue;
            }
            roundDone.Wait();
            BetweenRounds?.Invoke(host!, round); // every vCPU is stopped: the host's memory managers may change the P2Ms
            SampleActiveMemory(host!);
            memory.Run(host!, vms, round, toBlock);
            AfterReclaim?.Invoke(this, round);
            lock (gate)
            {
                ApplyBlocking();
                for (int i = 0; i < hostCpus.Length; i++)
                {
                    if (hostCpus[i] is not { } v)
                    {
                        idleCpuRounds++;
                        continue;
                    }
                    Account(vms[v.Order], v.Index, round);
                }
                scheduler.RoundEnded(now);
                foreach (var vm in vms)
                {
                    foreach (var v in vm.Vcpus)
                    {
                        v.RanLastRound = Array.IndexOf(hostCpus, v) >= 0;
                    }
                }
                Interlocked.Add(ref now, round);
                Interlocked.Increment(ref rounds);
            }
        }
    }

    // The low state's blocking (Waldspurger OSDI'02 §6.1: "blocks the execution of all VMs that are above their target
    // allocations"): a blocked VM is descheduled as a paused one is, until the manager no longer lists it. Called with
    // the gate held, before the round's accounting (which leaves a paused vCPU alone).
    private void ApplyBlocking()
    {
        foreach (var vm in vms)
        {
            bool block = toBlock.Contains(vm);
            if (block && !vm.Memory.Blocked)
            {
                vm.Memory.Blocked = true;
                vm.Memory.Blocks++;
                vm.Deschedule();
            }
            else if (!block && vm.Memory.Blocked)
            {
                vm.Memory.Blocked = false;
                if (vm.State == HostedVmState.Running)
                {
                    vm.Reschedule(now, scheduler);
                }
            }
        }
    }

    // Waits, outside the gate (a VM's thread may take it on its way out, e.g. a serial flood's stop), until every VM
    // stopped between rounds has ended, then marks them done; true if there were any.
    private bool FinishStopped()
    {
        HostedVm[] stopped;
        lock (gate)
        {
            if (stoppedBetweenRounds.Count == 0)
            {
                return false;
            }
            stopped = [.. stoppedBetweenRounds];
            stoppedBetweenRounds.Clear();
        }
        foreach (var vm in stopped)
        {
            foreach (var quantum in vm.Quanta)
            {
                quantum.WaitFinished();
            }
        }
        lock (gate)
        {
            foreach (var vm in stopped)
            {
                vm.MarkDone();
            }
        }
        return true;
    }

    // A vCPU about to run: the ready time it waited, and its wake-up latency if it woke from HLT.
    private void Charge(ScheduledVcpu v)
    {
        if (v.ReadySince >= 0)
        {
            long waited = now - v.ReadySince;
            v.ReadyCycles += waited;
            v.Dispatches++;
            if (v.WakeAt > 0 && v.WakeAt == v.ReadySince)
            {
                v.WakeLatencyCycles += waited;
                v.MaximumWakeLatencyCycles = Math.Max(v.MaximumWakeLatencyCycles, waited);
            }
            v.ReadySince = -1;
        }
    }

    private void Account(HostedVm vm, int index, long round)
    {
        var v = vm.Vcpus[index];
        var q = vm.Quanta[index];
        v.RunCycles += q.BusyCycles;
        v.IdleCycles += q.IdleCycles;
        v.GuestClock = q.Clock;
        scheduler.Ran(v, q.BusyCycles, now);
        if (q.Finished)
        {
            vm.MarkDone();
            return;
        }
        if (vm.Spec.RunLimitMilliseconds is { } limit && q.Clock >= spec.Clock.Cycles(limit) && vm.StopCause is null)
        {
            vm.EndedAsPlanned = true;
            StopVm(vm, $"stopped: its run limit of {limit:0.###} ms of virtual time passed", VmOutcomeKind.Timeout);
            stoppedBetweenRounds.Add(vm);
            return;
        }
        if (v.State is VcpuRunState.Paused or VcpuRunState.Done)
        {
            return;
        }
        if (!q.Runnable)
        {
            // Halted with nothing to wake it but an interrupt (an IPI from a sibling, a device), or waiting for a
            // start-up IPI: blocked alone until its report says it can run (WakeSleepers).
            v.State = VcpuRunState.Blocked;
            v.WakeAt = long.MaxValue;
            return;
        }
        if (q.IdleCycles > 0)
        {
            // It idled in HLT until its timer: in host time it sleeps until its clock's deadline.
            long wake = now + q.BusyCycles + q.IdleCycles;
            if (wake > now + round)
            {
                v.State = VcpuRunState.Blocked;
                v.WakeAt = wake;
                return;
            }
            v.ReadySince = now + round;
            return;
        }
        v.ReadySince = now + round; // if not picked for the next round, it waits from its end
    }

    private void WakeSleepers()
    {
        foreach (var vm in vms)
        {
            if (vm.Vcpu.State != VcpuRunState.Done && vm.Thread is not null && vm.Quantum.Finished)
            {
                vm.MarkDone(); // its run ended on its own thread after a stop, outside a round
                continue;
            }
            for (int i = 0; i < vm.Vcpus.Count; i++)
            {
                var v = vm.Vcpus[i];
                if (v.State == VcpuRunState.Blocked && v.WakeAt == long.MaxValue && vm.Quanta[i].Runnable)
                {
                    // A sibling's IPI (or start-up IPI) made it runnable in the last round: ready from now.
                    v.State = VcpuRunState.Runnable;
                    v.ReadySince = now;
                    v.Wakeups++;
                    scheduler.Woke(v, now);
                }
                else if (v.State == VcpuRunState.Blocked && v.WakeAt <= now)
                {
                    v.State = VcpuRunState.Runnable;
                    v.ReadySince = v.WakeAt;
                    v.Wakeups++;
                    scheduler.Woke(v, now);
                }
                else if (v.State == VcpuRunState.Runnable && v.ReadySince < 0 && !v.RanLastRound)
                {
                    v.ReadySince = now;
                }
            }
        }
    }

    // No vCPU placed: the host's CPUs idle for a round if a vCPU is runnable but held back by its limit or cap (it earns
    // allowance as time passes), else until the first sleeper's wake-up (whole rounds). False if none sleeps either.
    private bool SkipIdleTime(long round)
    {
        long wake = long.MaxValue;
        foreach (var v in vms.SelectMany(vm => vm.Vcpus))
        {
            if (v.State == VcpuRunState.Blocked)
            {
                wake = Math.Min(wake, v.WakeAt);
            }
            else if (v.State == VcpuRunState.Runnable)
            {
                wake = now;
            }
        }
        if (wake == long.MaxValue)
        {
            return false;
        }
        long target = Math.Max(now + round, (wake + round - 1) / round * round);
        long skipped = (target - now) / round;
        for (long i = 0; i < skipped; i++)
        {
            scheduler.RoundEnded(now + i * round);
        }
        idleCpuRounds += skipped * hostCpus.Length;
        Interlocked.Exchange(ref now, target);
        Interlocked.Add(ref rounds, skipped);
        return true;
    }

    private void StopVm(HostedVm vm, string cause, VmOutcomeKind kind)
    {
        lock (gate)
        {
            vm.StopCause ??= cause;
        }
        vm.Control.Stop(kind);
        foreach (var quantum in vm.Quanta)
        {
            quantum.Stop();
        }
    }

    private void StopAll(string cause)
    {
        foreach (var vm in vms.Where(v => v.Thread is not null))
        {
            StopVm(vm, $"stopped: {cause}", VmOutcomeKind.Timeout);
        }
    }

    private HostedVm Find(string name) => vms.FirstOrDefault(v => v.Name == name)
        ?? throw new BadInputException($"there is no VM named '{name}' on this host", $"VMs: {string.Join(", ", vms.Select(v => v.Name))}");

    /// <inheritdoc/>
    public IReadOnlyList<HostedVmInfo> List()
    {
        lock (gate)
        {
            return [.. vms.Select(Info)];
        }
    }

    /// <inheritdoc/>
    public HostedVmInfo Get(string name)
    {
        lock (gate)
        {
            return Info(Find(name));
        }
    }

    /// <inheritdoc/>
    public void Pause(string name)
    {
        lock (gate)
        {
            var vm = Find(name);
            if (vm.State != HostedVmState.Running || vm.Vcpu.State == VcpuRunState.Done)
            {
                throw new InvalidOperationException($"VM '{name}' is {Describe(vm)}: only a running VM can be paused");
            }
            vm.State = HostedVmState.Paused;
            vm.Deschedule();
        }
    }

    /// <inheritdoc/>
    public void Resume(string name)
    {
        lock (gate)
        {
            var vm = Find(name);
            if (vm.State != HostedVmState.Paused)
            {
                throw new InvalidOperationException($"VM '{name}' is {Describe(vm)}: only a paused VM can be resumed");
            }
            vm.State = HostedVmState.Running;
            if (!vm.Memory.Blocked)
            {
                vm.Reschedule(now, scheduler);
            }
            operatorActed.Set();
        }
    }

    /// <inheritdoc/>
    public void Stop(string name)
    {
        HostedVm vm;
        lock (gate)
        {
            vm = Find(name);
            if (vm.State is not (HostedVmState.Running or HostedVmState.Paused))
            {
                throw new InvalidOperationException($"VM '{name}' is {Describe(vm)}: only a running or paused VM can be stopped");
            }
            foreach (var v in vm.Vcpus.Where(v => v.State == VcpuRunState.Paused))
            {
                v.State = VcpuRunState.Runnable; // it must run to see the stop
            }
            operatorActed.Set();
        }
        StopVm(vm, "stopped by the operator", VmOutcomeKind.Terminated);
    }

    /// <inheritdoc/>
    public void SetCpu(string name, CpuControls controls)
    {
        lock (gate)
        {
            var vm = Find(name);
            // A VM's controls are the VM's, in percent of one host CPU, split over its vCPUs by the schedulers.
            double most = 100.0 * vm.Spec.VcpuCount;
            if (controls.Shares < 1 || controls.ReservationPercent < 0 || controls.ReservationPercent > most ||
                controls.LimitPercent < 0 || controls.LimitPercent > most)
            {
                throw new BadInputException($"CPU controls {controls} are out of range",
                    $"Give shares of at least 1, and a reservation and limit between 0 and {most} percent of one CPU (VM '{name}' has {vm.Spec.VcpuCount} vCPU(s))");
            }
            double reservedByOthers = vms.Where(v => v != vm && v.State is HostedVmState.Running or HostedVmState.Paused or HostedVmState.Created)
                .Sum(v => v.Vcpu.Controls.ReservationPercent);
            if (reservedByOthers + controls.ReservationPercent > spec.HostCpus * 100.0 + 1e-9)
            {
                throw new BadInputException($"a reservation of {controls.ReservationPercent}% for '{name}' does not fit: the others reserve {reservedByOthers:0.#}% of {spec.HostCpus * 100}%",
                    "Give a smaller reservation, or lower another VM's first");
            }
            foreach (var v in vm.Vcpus)
            {
                v.Controls = controls;
            }
        }
    }

    /// <inheritdoc/>
    public BalloonInfo Balloon(string name)
    {
        lock (gate)
        {
            var vm = Find(name);
            var balloon = vm.Balloon ?? throw NoBalloon(vm);
            var statistics = balloon.Statistics.ToDictionary(s => s.Key.ToString(), s => s.Value);
            return new BalloonInfo(vm.Name, (ulong)balloon.Target * 4096, balloon.Target, balloon.Actual, balloon.InflatedPages, balloon.PagesInflated,
                balloon.PagesDeflated, balloon.BytesReturnedToHost, balloon.RefusedPfns, vm.Memory.OperatorBalloonPages >= 0,
                vm.Memory.TargetPages >= 0 ? (ulong)vm.Memory.TargetPages * 4096 : vm.Spec.Memory.MaxBytes, (ulong)vm.Memory.HeldPages * 4096, statistics);
        }
    }

    /// <inheritdoc/>
    public void SetBalloon(string name, ulong targetBytes)
    {
        lock (gate)
        {
            var vm = Find(name);
            if (vm.Balloon is null)
            {
                throw NoBalloon(vm);
            }
            if (vm.State is not (HostedVmState.Running or HostedVmState.Paused))
            {
                throw new InvalidOperationException($"VM '{name}' is {Describe(vm)}: only a running or paused VM's balloon can be set");
            }
            if (targetBytes % 4096 != 0 || targetBytes > vm.Spec.Memory.MaxBytes)
            {
                throw new BadInputException($"a balloon target of {targetBytes} bytes does not fit VM '{name}' of {vm.Spec.Memory.MaxBytes >> 20} MiB",
                    $"Give 0 to {vm.Spec.Memory.MaxBytes >> 20} MiB");
            }
            // Applied between rounds by the memory manager, when no vCPU runs (the device notifies the guest then).
            vm.Memory.OperatorBalloonPages = (long)(targetBytes / 4096);
        }
    }

    private InvalidOperationException NoBalloon(HostedVm vm) => new(
        vm.Spec.Balloon && spec.Overcommit.Balloon && vm.State is HostedVmState.Created
            ? $"VM '{vm.Name}' is not powered on yet: its balloon comes with it; ask again once it runs"
            : spec.Overcommit.Balloon
            ? $"VM '{vm.Name}' has no balloon: give it \"balloon\": true in HOST.json (or ,balloon in --vm) to have one"
            : $"VM '{vm.Name}' has no balloon: the host runs without balloons (--no-balloon, or host.balloon false)");

    /// <inheritdoc/>
    public IReadOnlyList<EngineCounter> HostCounters()
    {
        lock (gate)
        {
            return
            [
                .. memory.Counters(),
                new("host_cpus", (ulong)spec.HostCpus, ""),
                new("host_memory", spec.MemoryBytes, "bytes"),
                new("host_swap", spec.SwapBytes, "bytes"),
                new("reserved_memory", admission.ReservedMemory, "bytes"),
                new("reserved_swap", admission.ReservedSwap, "bytes"),
                new("reserved_cpu", (ulong)Math.Round(admission.ReservedCpuPercent), "percent"),
                new($"scheduler_{scheduler.Name}", 1, ""),
                .. scheduler.HostCounters(),
                new("virtual_time", (ulong)now, "cycles"),
                new("virtual_time_ms", (ulong)spec.Clock.Milliseconds(now), "ms"),
                new("rounds", (ulong)rounds, ""),
                new("idle_cpu_rounds", (ulong)idleCpuRounds, ""),
                new("vms_running", (ulong)vms.Count(v => v.State == HostedVmState.Running), ""),
                new("vms_refused", (ulong)vms.Count(v => v.State == HostedVmState.Refused), ""),
            ];
        }
    }

    private static string Describe(HostedVm vm) => vm.State.ToString().ToLowerInvariant();

    // Called with the gate held.
    private HostedVmInfo Info(HostedVm vm)
    {
        var v = vm.Vcpu;
        return new HostedVmInfo(vm.Name, vm.State, vm.Technique, vm.Spec.VcpuCount, v.Controls, vm.Spec.Memory, vm.Outcome, CountersOf(vm))
        {
            VcpuCounters = vm.Vcpus.Count > 1 ? [.. vm.Vcpus.Select(VcpuCountersOf)] : [],
        };
    }

    /// <summary>One vCPU's counters (a VM with several has a set per vCPU): what the scheduler gave it, in cycles
    /// and microseconds of virtual time, its own clock, and the scheduler's own counters of it (co-stop rounds).</summary>
    public IReadOnlyList<EngineCounter> VcpuCountersOf(ScheduledVcpu v)
    {
        double us = spec.Clock.CyclesPerMillisecond / 1000.0;
        var list = new List<EngineCounter>
        {
            new("run_cycles", (ulong)v.RunCycles, "cycles"),
            new("ready_cycles", (ulong)v.ReadyCycles, "cycles"),
            new("idle_cycles", (ulong)v.IdleCycles, "cycles"),
            new("run_time", (ulong)(v.RunCycles / us), "us"),
            new("ready_time", (ulong)(v.ReadyCycles / us), "us"),
            new("cpu_share", now > 0 ? (ulong)Math.Round(10000.0 * v.RunCycles / now) : 0, "0.01 %"),
            new("dispatches", (ulong)v.Dispatches, ""),
            new("wakeups", (ulong)v.Wakeups, ""),
            new("guest_clock", (ulong)v.GuestClock, "cycles"),
        };
        list.AddRange(scheduler.CountersOf(v));
        return list;
    }

    /// <summary>A VM's counters: what it got from the scheduler, in cycles and microseconds of virtual time, and what
    /// it did.</summary>
    public IReadOnlyList<EngineCounter> CountersOf(HostedVm vm)
    {
        var v = vm.Vcpu;
        double us = spec.Clock.CyclesPerMillisecond / 1000.0;
        // A VM with several vCPUs: its books are its vCPUs' added (VcpuCountersOf has each); its clock is the BSP's.
        long run = 0, ready = 0, idle = 0, dispatches = 0, wakeups = 0, latency = 0, maximumLatency = 0;
        foreach (var x in vm.Vcpus)
        {
            run += x.RunCycles;
            ready += x.ReadyCycles;
            idle += x.IdleCycles;
            dispatches += x.Dispatches;
            wakeups += x.Wakeups;
            latency += x.WakeLatencyCycles;
            maximumLatency = Math.Max(maximumLatency, x.MaximumWakeLatencyCycles);
        }
        var list = new List<EngineCounter>
        {
            new("run_cycles", (ulong)run, "cycles"),
            new("ready_cycles", (ulong)ready, "cycles"),
            new("idle_cycles", (ulong)idle, "cycles"),
            new("run_time", (ulong)(run / us), "us"),
            new("ready_time", (ulong)(ready / us), "us"),
            new("steal_time", (ulong)(ready / us), "us"),
            new("cpu_share", now > 0 ? (ulong)Math.Round(10000.0 * run / now) : 0, "0.01 %"),
            new("dispatches", (ulong)dispatches, ""),
            new("wakeups", (ulong)wakeups, ""),
            new("wake_latency_mean", wakeups > 0 ? (ulong)(latency / wakeups / us) : 0, "us"),
            new("wake_latency_max", (ulong)(maximumLatency / us), "us"),
            new("guest_clock", (ulong)v.GuestClock, "cycles"),
            new("memory_size", vm.Vm?.Memory.Size ?? 0, "bytes"),
            new("memory_allocated", vm.AllocatedBytes(), "bytes"),
            new("vm_exits", (ulong)(vm.Vm?.Exits.TotalExits ?? 0), ""),
        };
        var m = vm.Memory;
        list.AddRange(
        [
            new("memory_target", m.TargetPages >= 0 ? (ulong)m.TargetPages * 4096 : vm.Spec.Memory.MaxBytes, "bytes"),
            new("memory_held_peak", (ulong)m.PeakHeldPages * 4096, "bytes"),
            new("memory_shared", (ulong)m.SharedPages * 4096, "bytes"),
            new("memory_ballooned", (ulong)m.BalloonPages * 4096, "bytes"),
            new("balloon_target", (ulong)m.BalloonTargetPages * 4096, "bytes"),
            new("memory_swapped", (ulong)m.SwappedPages * 4096, "bytes"),
            new("host_swap_out", (ulong)m.PagesSwappedOut, "pages"),
            new("host_swap_in", (ulong)m.PagesSwappedIn, "pages"),
            new("double_paging", (ulong)m.DoublePaging, "pages"),
            new("memory_blocked", m.Blocked ? 1UL : 0, ""),
            new("blocked_time", (ulong)(m.BlockedCycles / us), "us"),
        ]);
        list.AddRange(scheduler.CountersOf(v));
        return list;
    }

    /// <inheritdoc/>
    private void SampleActiveMemory(Host host)
    {
        if (activeSamplers is null)
        {
            return;
        }
        for (int i = 0; i < vms.Count; i++)
        {
            var vm = vms[i];
            if (vm.Vm is { } machine && host.PhysicalMapOf(machine) is { } map && !map.IsDisposed)
            {
                if (!activeSamplers.TryGetValue(vm, out var sampler))
                {
                    activeSamplers[vm] = sampler = new ActiveMemorySampler(spec.Clock.Cycles(ActiveSamplePeriodMilliseconds), seed: i + 1);
                }
                sampler.Advance(map, vm.Vcpu.GuestClock);
            }
        }
    }

    public void Dispose()
    {
        if (!runEnded.IsSet)
        {
            StopAll("the host was disposed while it ran");
            operatorActed.Set();
            if (!runEnded.Wait(TimeSpan.FromSeconds(30)))
            {
                return; // its threads still use them: leave the events and VMs to the finalizers rather than crash
            }
        }
        foreach (var vm in vms)
        {
            vm.Dispose();
        }
        memory.Dispose(); // the scanner's zero frame goes back to the pool before the pool goes
        host?.Dispose();
        roundDone.Dispose();
        operatorActed.Dispose();
        runEnded.Dispose();
    }
}
