using System.Diagnostics;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.ServiceVm;

/// <summary>What a run of a user VM and its service VM did: the user VM's outcome (the one that counts), the service
/// VM's last, and the per-step counters of the split driver.</summary>
/// <param name="Outcome">How the user VM's run ended (or why the pair stopped).</param>
/// <param name="ServiceOutcome">How the service VM's last turn ended.</param>
/// <param name="Counters">The per-step counts (<c>service_vm_*</c>), for the run report.</param>
public sealed record ServiceVmRun(VmOutcome Outcome, VmOutcome? ServiceOutcome, IReadOnlyList<EngineCounter> Counters)
{
    /// <summary>The software machine's counts of each of the user VM's turns (a turn's counts are its own: each turn
    /// is one engine run), for a cost model to price; its cost is the sum of theirs.</summary>
    public IReadOnlyList<CostModel.MachineEvents> UserTurnEvents { get; init; } = [];

    /// <summary>The same for the service VM's turns.</summary>
    public IReadOnlyList<CostModel.MachineEvents> ServiceTurnEvents { get; init; } = [];
}

/// <summary>Runs a user VM and its service VM on one software-machine <see cref="Host"/>: Xen's driver domain
/// (dom0's blkback serving a domU's blkfront), Hyper-V's VSP and VSC. The service VM owns the disk through its
/// ordinary driver; the user VM has only the front-end, whose requests reach the service VM over a ring in a frame it
/// grants, with event channels for notification. Both VMs get a <see cref="SplitDriverDomain"/>: the user VM is domain
/// 1, the service VM domain 0.</summary>
/// <remarks>A host runs its VMs one at a time (<see cref="Host"/>), so the host alternates: the service VM first,
/// until it halts ready for requests, then the user VM until it notifies (or halts), then the service VM until it
/// notifies its completion (or halts), and so on. This is the simplest scheduler that keeps the split driver's order of
/// events (a request is served only after it was notified, a completion seen only after it was sent), and it makes
/// each step's cost visible alone; a later scheduler with time slices and both vCPUs runnable would interleave the
/// same steps without changing what each costs.</remarks>
public sealed class ServiceVmHost : IDisposable
{
    /// <summary>The I/O APIC input on which each VM gets its event channel's interrupt (free on the platform: the
    /// ATA channel is 14, the assigned controller's lines start at 10, virtio-mmio's at 16).</summary>
    public const int EventChannelGsi = 9;

    private readonly SimEngine userEngine, serviceEngine;
    private long switches, userTurns, serviceTurns, completionInterrupts, eventInterruptsToService;
    private long userTicks, serviceTicks;
    private long userInstructions, serviceInstructions;
    private RunControl? turn;
    private readonly List<CostModel.MachineEvents> userEvents = [], serviceEvents = [];

    /// <param name="user">The user VM (no disk; the front-end).</param>
    /// <param name="service">The service VM (owns the disk; the back-end), on the same host.</param>
    /// <param name="options">The software machine's options for both VMs: any technique with a VMM.</param>
    /// <exception cref="Errors.BadInputException">The VMs are on different hosts, or the technique has no VMM.</exception>
    public ServiceVmHost(Vm user, Vm service, SimOptions options)
    {
        if (user.Host != service.Host)
        {
            throw new Errors.BadInputException("the user VM and the service VM are on different hosts",
                "create both VMs with Vm.Create(config, host) on one Host");
        }
        if (options.Technique == Technique.Native)
        {
            throw new Errors.BadInputException("--service-vm needs a VMM, and --technique native has none: its VMCALL would be #UD",
                "use --technique hw, pv, trap or bt");
        }
        User = user;
        Service = service;
        UserDomain = new SplitDriverDomain(user, 1);
        ServiceDomain = new SplitDriverDomain(service, 0);
        UserDomain.Peer = ServiceDomain;
        ServiceDomain.Peer = UserDomain;
        user.SplitDriver = UserDomain;
        service.SplitDriver = ServiceDomain;
        userEngine = new SimEngine(options);
        serviceEngine = new SimEngine(options);
    }

    /// <summary>The user VM.</summary>
    public Vm User { get; }

    /// <summary>The service VM.</summary>
    public Vm Service { get; }

    /// <summary>The user VM's side of the split driver (domain 1).</summary>
    public SplitDriverDomain UserDomain { get; }

    /// <summary>The service VM's side of the split driver (domain 0).</summary>
    public SplitDriverDomain ServiceDomain { get; }

    /// <summary>Runs the pair until the user VM ends (its debug exit, a fault, the timeout), both wait with nothing
    /// pending (a deadlock), or the service VM ends. <paramref name="control"/> stops both.</summary>
    public ServiceVmRun Run(RunControl? control = null)
    {
        control ??= new RunControl();
        // Each turn has a control of its own, which a notify stops; a stop of the pair (timeout, Ctrl-C) stops the
        // turn under way.
        control.OnStop(() => turn?.Stop(control.StopReason ?? VmOutcomeKind.Interrupted));
        UserDomain.EndTurn = ServiceDomain.EndTurn = () => turn?.Stop(VmOutcomeKind.Interrupted);
        using var deadline = User.Config.Timeout is { } limit ? control.StopAfter(limit) : null;
        // The service VM boots first, to its first halt or notify: its back-end is then ready for the ring.
        var serviceResult = Turn(Service, serviceEngine, control);
        bool ready = control.StopReason is null
            && (serviceResult.Outcome.Kind == VmOutcomeKind.Halted || (ServiceDomain.NotifiedPeer && serviceResult.Outcome.Kind == VmOutcomeKind.Interrupted));
        ServiceDomain.NotifiedPeer = false;
        if (!ready)
        {
            return Finish(serviceResult.Outcome with { Message = $"the service VM ended before it was ready: {serviceResult.Outcome.Message}" },
                serviceResult.Outcome);
        }
        var current = User;
        while (true)
        {
            bool isUser = current == User;
            var result = Turn(current, isUser ? userEngine : serviceEngine, control);
            if (!isUser)
            {
                serviceResult = result;
            }
            var domain = isUser ? UserDomain : ServiceDomain;
            bool endedByNotify = control.StopReason is null && domain.NotifiedPeer
                && result.Outcome.Kind is VmOutcomeKind.Interrupted or VmOutcomeKind.Halted;
            if (!endedByNotify && result.Outcome.Kind != VmOutcomeKind.Halted)
            {
                // The user VM's end is the pair's; the service VM's (a crash, its own exit) ends the pair too.
                return isUser ? Finish(result.Outcome, serviceResult.Outcome)
                    : Finish(result.Outcome with { Message = $"the service VM ended: {result.Outcome.Message}" }, result.Outcome);
            }
            var peer = domain.Peer!;
            domain.NotifiedPeer = false;
            if (peer.Pending == 0)
            {
                // Halted with nothing sent to the other VM and nothing for it: no VM can make progress.
                return Finish(result.Outcome with { Message = $"the {(isUser ? "user" : "service")} VM halted with no event pending for either VM: {result.Outcome.Message}" },
                    serviceResult.Outcome);
            }
            Deliver(peer, isUser);
            current = peer.Vm;
            switches++;
        }
    }

    /// <summary>The event channel's interrupt for a descheduled VM: its I/O APIC's message goes into the saved local
    /// APIC's request register (as a posted interrupt would, SDM Vol. 3C §30.6), and the vCPU takes it when the VM
    /// next runs with interrupts enabled. A VM that masked the line polls EVENT_TAKE instead.</summary>
    private void Deliver(SplitDriverDomain domain, bool toService)
    {
        var vm = domain.Vm;
        vm.IoApic.LocalApic = (vector, level) =>
        {
            ref var apic = ref vm.Vcpus[0].State.Apic;
            // A software-disabled APIC or an illegal vector refuses the message (SDM Vol. 3A §10.4.7.2, §10.5.3).
            if ((apic.SpuriousVector & 0x100) == 0 || vector < 16)
            {
                return false;
            }
            apic.Requests.Set(vector, true);
            apic.TriggerMode.Set(vector, level);
            apic.ExternalRequests++;
            if (toService)
            {
                eventInterruptsToService++;
            }
            else
            {
                completionInterrupts++;
            }
            return true;
        };
        // An edge: the line rises and falls (the guest programs the entry edge-triggered).
        vm.Interrupts[EventChannelGsi].Raise();
        vm.Interrupts[EventChannelGsi].Lower();
    }

    private RunResult Turn(Vm vm, SimEngine engine, RunControl control)
    {
        long start = Stopwatch.GetTimestamp();
        var own = new RunControl();
        turn = own;
        if (control.StopReason is { } stopped)
        {
            own.Stop(stopped);
        }
        var result = engine.Run(vm, own);
        turn = null;
        long ticks = Stopwatch.GetTimestamp() - start;
        long instructions = (long)(result.Counters.FirstOrDefault(c => c.Name == "instructions_retired")?.Value ?? 0);
        if (result.Events is { } events)
        {
            (vm == User ? userEvents : serviceEvents).Add(events);
        }
        if (vm == User)
        {
            userTurns++;
            userTicks += ticks;
            userInstructions += instructions;
        }
        else
        {
            serviceTurns++;
            serviceTicks += ticks;
            serviceInstructions += instructions;
        }
        return result;
    }

    private ServiceVmRun Finish(VmOutcome outcome, VmOutcome? serviceOutcome) =>
        new(outcome, serviceOutcome, Counters()) { UserTurnEvents = [.. userEvents], ServiceTurnEvents = [.. serviceEvents] };

    /// <summary>The per-step counters: the notify exits of the user VM, the switches, the service VM's own device
    /// I/O exits (port and MMIO: its driver's), its completion notifies and the completion interrupts the user VM took,
    /// the grant copies, and each VM's instructions and wall time.</summary>
    public IReadOnlyList<EngineCounter> Counters()
    {
        var s = Service.Exits;
        long deviceExits = s.Count(VmExitReason.PortRead) + s.Count(VmExitReason.PortWrite) + s.Count(VmExitReason.MmioRead) + s.Count(VmExitReason.MmioWrite);
        return
        [
            new("service_vm_notify_exits", (ulong)UserDomain.Notifies, ""),
            new("service_vm_switches", (ulong)switches, ""),
            new("service_vm_user_turns", (ulong)userTurns, ""),
            new("service_vm_service_turns", (ulong)serviceTurns, ""),
            new("service_vm_event_interrupts", (ulong)eventInterruptsToService, ""),
            new("service_vm_device_exits", (ulong)deviceExits, ""),
            new("service_vm_completion_notifies", (ulong)ServiceDomain.Notifies, ""),
            new("service_vm_completion_interrupts", (ulong)completionInterrupts, ""),
            new("service_vm_grant_copies", (ulong)ServiceDomain.GrantCopies, ""),
            new("service_vm_grant_copy_bytes", (ulong)ServiceDomain.GrantCopyBytes, "bytes"),
            new("service_vm_refused_grants", (ulong)(ServiceDomain.RefusedGrantsTotal + UserDomain.RefusedGrantsTotal), ""),
            new("service_vm_user_instructions", (ulong)userInstructions, ""),
            new("service_vm_service_instructions", (ulong)serviceInstructions, ""),
            new("service_vm_user_wall_microseconds", (ulong)Stopwatch.GetElapsedTime(0, userTicks).TotalMicroseconds, "us"),
            new("service_vm_service_wall_microseconds", (ulong)Stopwatch.GetElapsedTime(0, serviceTicks).TotalMicroseconds, "us"),
        ];
    }

    /// <summary>Releases both engines' host memory; the VMs stay the caller's.</summary>
    public void Dispose()
    {
        userEngine.Dispose();
        serviceEngine.Dispose();
        User.SplitDriver = null;
        Service.SplitDriver = null;
    }
}
