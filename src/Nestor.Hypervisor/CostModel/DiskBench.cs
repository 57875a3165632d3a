using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.CostModel;

/// <summary>One <c>nestor bench disk</c> workload: NestorOS's <c>diskbench DEV OP SIZE COUNT</c> (guest/user/disk.c).</summary>
/// <param name="Operation"><c>read</c> or <c>write</c> (a write run ends with a flush, inside the timing).</param>
/// <param name="RequestBytes">Bytes per request: a multiple of 512, at most 1 MiB.</param>
/// <param name="Count">Requests.</param>
/// <param name="WaitForInterrupts">The drivers wait for their device's interrupt (<c>ata=irq virtio=irq ndma=irq</c>)
/// instead of polling, NestorOS's default.</param>
public sealed record DiskWorkload(string Operation, long RequestBytes, long Count, bool WaitForInterrupts = false)
{
    /// <summary>The NestorOS block device each interface's disk appears as when it is the only disk.</summary>
    public static string DeviceName(DiskInterface kind) => kind switch
    {
        DiskInterface.Ata => "ata0",
        DiskInterface.Virtio => "vda",
        _ => "nd0",
    };

    /// <summary>The NestorOS command line for <paramref name="kind"/>'s disk and <paramref name="count"/> requests.</summary>
    public string CommandLine(DiskInterface kind, long count) => CommandLine(DeviceName(kind), count);

    /// <summary>The NestorOS command line for the block device <paramref name="device"/> (xvda through a service VM).</summary>
    public string CommandLine(string device, long count) =>
        (WaitForInterrupts ? "ata=irq virtio=irq ndma=irq " : "") + $"diskbench {device} {Operation} {RequestBytes} {count}";
}

/// <summary>What one interface under one configuration did for the workload, net of the same boot running the same
/// program with a count of 0 (probing, IDENTIFY, the program's start and its RESULT line cancel out).</summary>
/// <param name="Interface">The disk's interface.</param>
/// <param name="Configuration">The technique and memory virtualization.</param>
/// <param name="Requests">Requests the disk's controller completed (reads, writes, flushes).</param>
/// <param name="Bytes">Bytes moved between the disk and the guest.</param>
/// <param name="ExitsByReason">The VM's exit statistics by reason (<see cref="Vm.Exits"/>): every trapped port and MMIO
/// access and every other entry into the VMM or, without one, into the device models; the serial console's port
/// accesses left out (they differ from the baseline's only because diskbench's RESULT line has more digits).</param>
/// <param name="DirectDeviceAccesses">Register accesses that reached an assigned device without an exit.</param>
/// <param name="Interrupts">Interrupts delivered to the guest (the I/O APIC's messages to the local APIC).</param>
/// <param name="DeviceInterrupts">Interrupts the disk's controller raised, delivered or not (ATA raises INTRQ per DRQ
/// block, which nIEN keeps off the line while NestorOS polls).</param>
/// <param name="Events">The software machine's counts (instructions, memory references, VMCS exits, ...).</param>
/// <param name="Cost">The modelled cost (see <see cref="DiskBench.Cost"/>).</param>
/// <param name="Wall">Measured wall time of the workload's run (boot included).</param>
/// <param name="NetWall">That less the count-0 baseline's wall time: the requests' own (noisy for small counts).</param>
/// <param name="Result">The RESULT line diskbench printed, timing fields left out.</param>
public sealed record DiskBenchRow(DiskInterface Interface, BenchConfiguration Configuration, long Requests, long Bytes,
    IReadOnlyDictionary<VmExitReason, long> ExitsByReason, long DirectDeviceAccesses, long Interrupts, long DeviceInterrupts, MachineEvents Events,
    ModelledCost Cost, TimeSpan Wall, TimeSpan NetWall, string Result)
{
    /// <summary>Every exit counted.</summary>
    public long Exits => ExitsByReason.Values.Sum();

    /// <summary>MiB per second of <see cref="NetWall"/> (0 when the difference is not positive).</summary>
    public double MiBPerSecond => NetWall > TimeSpan.Zero ? Bytes / (1024.0 * 1024.0) / NetWall.TotalSeconds : 0;

    /// <summary>Exits per KiB moved.</summary>
    public double ExitsPerKiB => Bytes == 0 ? 0 : Exits / (Bytes / 1024.0);

    /// <summary>Where the row came from, for tables: "ata", "virtio", "assigned", or "service" (the service VM's
    /// disk, whose own interface is <see cref="Interface"/>).</summary>
    public string InterfaceName => Steps is null ? DiskConfig.InterfaceName(Interface) : ServiceInterfaceName;

    /// <summary>For a row through a service VM: its steps, counted and costed; null for the other rows.</summary>
    public ServiceVmSteps? Steps { get; init; }

    /// <summary>The interface name of a row through the service VM.</summary>
    public const string ServiceInterfaceName = "service";
}

/// <summary>The steps of the service VM's way, net of the count-0 baseline, each counted (ServiceVmHost's
/// <c>service_vm_*</c> counters) and modelled with the profile's parameters: a notify exit is the user VM's hypercall
/// (<see cref="CostProfile.VmExitRoundTrip"/> + <see cref="CostProfile.SimpleExitHandling"/> under hardware assist,
/// <see cref="CostProfile.HypercallRoundTrip"/> under a software VMM); a switch from one VM to the other is a world
/// switch, <see cref="CostProfile.VmExitRoundTrip"/> (a lower bound: the caches and TLBs the other VM cools are not
/// modelled); the service VM's device exits are its driver's port and MMIO accesses, each an exit round trip and
/// <see cref="CostProfile.IoEmulation"/> (<see cref="CostProfile.TrapRoundTrip"/> +
/// <see cref="CostProfile.SoftwareIoEmulation"/> under a software VMM); each event and completion interrupt is an
/// <see cref="CostProfile.InterruptInjection"/>; each grant copy a hypercall, plus its bytes read and written once
/// each, 8 per <see cref="CostProfile.MemoryReference"/>.</summary>
public sealed record ServiceVmSteps(long NotifyExits, long Switches, long DeviceExits, long EventInterrupts, long CompletionInterrupts,
    long GrantCopies, long GrantCopyBytes, long RefusedGrants, double NotifyCycles, double SwitchCycles, double DeviceCycles,
    double InterruptCycles, double GrantCopyCycles);

/// <summary>The measurements behind <c>nestor bench disk</c>: the same <c>diskbench</c> through each interface under
/// each configuration on the software machine, on one scratch image, each costed with one profile.</summary>
public static class DiskBench
{
    /// <summary>Runs <paramref name="workload"/> on a disk backed by <paramref name="imagePath"/> (a raw image the caller
    /// owns) through each interface under each configuration, each net of a count-0 baseline run.</summary>
    /// <exception cref="WorkloadFailedException">A run did not end with diskbench's success.</exception>
    /// <param name="serviceVm">Also a row through a service VM (whose disk is ATA) under each configuration with a VMM
    /// (a service VM needs one), after the others.</param>
    public static IReadOnlyList<DiskBenchRow> Run(KernelImageSource kernel, string imagePath, DiskWorkload workload,
        IReadOnlyList<DiskInterface> interfaces, IReadOnlyList<BenchConfiguration> configurations, CostProfile profile,
        ulong memoryBytes, TextWriter? progress = null, TimeSpan? timeout = null, bool serviceVm = false)
    {
        var rows = new List<DiskBenchRow>();
        foreach (var configuration in serviceVm ? configurations.Where(c => c.Options.Technique != Techniques.Technique.Native) : [])
        {
            string line = workload.CommandLine(ServiceDevice, workload.Count);
            progress?.WriteLine($"  {DiskBenchRow.ServiceInterfaceName} (its disk ata) under {configuration.Name}: {line} ...");
            rows.Add(ServiceRow(kernel, imagePath, workload, configuration, profile, memoryBytes, timeout));
        }
        rows.InsertRange(0, RunInterfaces(kernel, imagePath, workload, interfaces, configurations, profile, memoryBytes, progress, timeout));
        return rows;
    }

    /// <summary>The block device the user VM of a service-VM pair has (blkfront.c).</summary>
    public const string ServiceDevice = "xvda";

    private static List<DiskBenchRow> RunInterfaces(KernelImageSource kernel, string imagePath, DiskWorkload workload,
        IReadOnlyList<DiskInterface> interfaces, IReadOnlyList<BenchConfiguration> configurations, CostProfile profile,
        ulong memoryBytes, TextWriter? progress, TimeSpan? timeout)
    {
        var rows = new List<DiskBenchRow>();
        foreach (var kind in interfaces)
        {
            foreach (var configuration in configurations)
            {
                string line = workload.CommandLine(kind, workload.Count);
                progress?.WriteLine($"  {DiskConfig.InterfaceName(kind)} under {configuration.Name}: {line} ...");
                var run = RunOnce(kernel, imagePath, kind, line, configuration, memoryBytes, timeout);
                var baseline = RunOnce(kernel, imagePath, kind, workload.CommandLine(kind, 0), configuration, memoryBytes, timeout);
                var exits = Enum.GetValues<VmExitReason>()
                    .Select(r => (Reason: r, Count: WithoutConsole(run.Exits, r) - WithoutConsole(baseline.Exits, r)))
                    .Where(x => x.Count != 0)
                    .ToDictionary(x => x.Reason, x => x.Count);
                var events = run.Events.Minus(baseline.Events);
                long direct = run.Exits.DirectDeviceAccesses - baseline.Exits.DirectDeviceAccesses;
                long interrupts = run.InterruptsDelivered - baseline.InterruptsDelivered;
                rows.Add(new DiskBenchRow(kind, configuration,
                    run.Disk.Requests - baseline.Disk.Requests,
                    run.Disk.BytesRead + run.Disk.BytesWritten - baseline.Disk.BytesRead - baseline.Disk.BytesWritten,
                    exits, direct, interrupts, run.Disk.Interrupts - baseline.Disk.Interrupts, events, Cost(events, exits, direct, interrupts, profile), run.Wall, run.Wall - baseline.Wall, run.Result));
            }
        }
        return rows;
    }

    /// <summary>One row through a service VM: the same diskbench in the user VM on xvda, the service VM serving the
    /// image through its ATA driver; both VMs' exits and cycles, and the steps (<see cref="ServiceVmSteps"/>), net of
    /// the count-0 pair.</summary>
    private static DiskBenchRow ServiceRow(KernelImageSource kernel, string imagePath, DiskWorkload workload, BenchConfiguration configuration,
        CostProfile profile, ulong memoryBytes, TimeSpan? timeout)
    {
        var run = RunPair(kernel, imagePath, workload.CommandLine(ServiceDevice, workload.Count), configuration, profile, memoryBytes, timeout);
        var baseline = RunPair(kernel, imagePath, workload.CommandLine(ServiceDevice, 0), configuration, profile, memoryBytes, timeout);
        var exits = Enum.GetValues<VmExitReason>()
            .Select(r => (Reason: r, Count: run.Exits.GetValueOrDefault(r) - baseline.Exits.GetValueOrDefault(r)))
            .Where(x => x.Count != 0)
            .ToDictionary(x => x.Reason, x => x.Count);
        long Net(string counter) => (long)(run.Counters.GetValueOrDefault(counter) - baseline.Counters.GetValueOrDefault(counter));
        bool hardware = configuration.Options.Technique == Techniques.Technique.HardwareAssist;
        double notify = hardware ? profile.VmExitRoundTrip + profile.SimpleExitHandling : profile.HypercallRoundTrip;
        double deviceExit = hardware ? profile.VmExitRoundTrip + profile.IoEmulation : profile.TrapRoundTrip + profile.SoftwareIoEmulation;
        long interrupts = Net("service_vm_event_interrupts") + Net("service_vm_completion_interrupts");
        long copies = Net("service_vm_grant_copies"), copyBytes = Net("service_vm_grant_copy_bytes");
        double copyData = 2.0 * copyBytes / 8 * profile.MemoryReference;
        var steps = new ServiceVmSteps(Net("service_vm_notify_exits"), Net("service_vm_switches"), Net("service_vm_device_exits"),
            Net("service_vm_event_interrupts"), Net("service_vm_completion_interrupts"), copies, copyBytes, Net("service_vm_refused_grants"),
            Net("service_vm_notify_exits") * notify, Net("service_vm_switches") * profile.VmExitRoundTrip, Net("service_vm_device_exits") * deviceExit,
            interrupts * profile.InterruptInjection, copies * notify + copyData);
        // Both VMs' cycles as the single-VM rows price them (their exits included: notifies, grant copies, the
        // service VM's port I/O), plus what no VM's counts hold: the switches, the grant copies' data, and the
        // injection of the interrupts (as Cost charges the single-VM rows').
        var guests = Minus(run.Cost, baseline.Cost);
        var cost = guests with
        {
            ExitTransitions = guests.ExitTransitions + steps.SwitchCycles,
            VmmWork = guests.VmmWork + copyData + steps.InterruptCycles,
        };
        var events = new MachineEvents { Technique = configuration.Options.Technique, Instructions = run.Instructions - baseline.Instructions };
        return new DiskBenchRow(DiskInterface.Ata, configuration, run.Disk.Requests - baseline.Disk.Requests,
            run.Disk.BytesRead + run.Disk.BytesWritten - baseline.Disk.BytesRead - baseline.Disk.BytesWritten,
            exits, 0, interrupts, run.Disk.Interrupts - baseline.Disk.Interrupts, events, cost, run.Wall, run.Wall - baseline.Wall, run.Result)
        {
            Steps = steps,
        };
    }

    private static ModelledCost Minus(ModelledCost a, ModelledCost b) => new(a.Instructions - b.Instructions, a.Memory - b.Memory,
        a.PageWalks - b.PageWalks, a.Events - b.Events, a.ExitTransitions - b.ExitTransitions, a.VmmWork - b.VmmWork);

    private static ModelledCost Plus(ModelledCost a, ModelledCost b) => new(a.Instructions + b.Instructions, a.Memory + b.Memory,
        a.PageWalks + b.PageWalks, a.Events + b.Events, a.ExitTransitions + b.ExitTransitions, a.VmmWork + b.VmmWork);

    private sealed record MeasuredPair(IReadOnlyDictionary<VmExitReason, long> Exits, IReadOnlyDictionary<string, ulong> Counters, DiskStatistics Disk,
        ModelledCost Cost, long Instructions, TimeSpan Wall, string Result);

    /// <summary>One run of a user VM and a service VM on one host (<see cref="ServiceVm.ServiceVmHost"/>): both VMs'
    /// exits (the consoles' left out), the counters, the service VM's disk, and both VMs' turns priced (the cost model
    /// is linear in the counts, so the turns' costs add up to the run's).</summary>
    private static MeasuredPair RunPair(KernelImageSource kernel, string imagePath, string commandLine, BenchConfiguration configuration,
        CostProfile profile, ulong memoryBytes, TimeSpan? timeout)
    {
        var serial = new MemoryStream();
        using var host = Host.ForGuestMemory(2 * memoryBytes);
        using var user = Vm.Create(new VmConfig
        {
            Kernel = kernel,
            MemoryBytes = memoryBytes,
            CommandLine = "servicevm=front " + commandLine,
            SerialOutput = serial,
            Timeout = timeout,
        }, host);
        using var service = Vm.Create(new VmConfig
        {
            Kernel = kernel,
            MemoryBytes = memoryBytes,
            CommandLine = "servicevm=back",
            SerialOutput = Stream.Null,
            Disks = [new DiskConfig(imagePath, DiskInterface.Ata)],
        }, host);
        using var pair = new ServiceVm.ServiceVmHost(user, service, configuration.Options);
        var clock = Stopwatch.StartNew();
        var run = pair.Run();
        clock.Stop();
        user.Serial.Flush();
        string output = Encoding.UTF8.GetString(serial.ToArray());
        var result = Regex.Match(output, @"^RESULT diskbench .*$", RegexOptions.Multiline);
        if (run.Outcome.Kind != VmOutcomeKind.DebugExit || run.Outcome.GuestStatus != 0 || !result.Success)
        {
            throw new WorkloadFailedException(
                $"'{commandLine}' through the service VM under {configuration.Name} did not end well: {run.Outcome.Message}\n{output}",
                run.Outcome.Kind == VmOutcomeKind.Timeout ? "Give a longer --timeout, or a smaller --count" : "Run it alone with nestor run --service-vm --service-disk IMAGE --cmdline to see why")
            {
                Outcome = run.Outcome.Kind,
            };
        }
        var exits = Enum.GetValues<VmExitReason>().ToDictionary(r => r, r => WithoutConsole(user.Exits, r) + WithoutConsole(service.Exits, r));
        long mmio = exits[VmExitReason.MmioRead] + exits[VmExitReason.MmioWrite];
        var turns = run.UserTurnEvents.Concat(run.ServiceTurnEvents).ToList();
        var cost = turns.Select(e => ModelledCost.Of(e, profile)).Aggregate(new ModelledCost(0, 0, 0, 0, 0, 0), Plus);
        // The trapped MMIO accesses (the I/O APIC's, the assigned controller's doorbell) as the single-VM rows price them.
        cost = cost with { ExitTransitions = cost.ExitTransitions + mmio * profile.VmExitRoundTrip, VmmWork = cost.VmmWork + mmio * profile.MmioEmulation };
        string line = Regex.Replace(result.Value.TrimEnd('\r'), @" \w+_cycles=\d+", "");
        return new MeasuredPair(exits, run.Counters.ToDictionary(c => c.Name, c => c.Value), service.Disks.Single().Statistics, cost,
            turns.Sum(e => e.Instructions), clock.Elapsed, line);
    }

    /// <summary>The modelled cost of a disk run: the guest's own cycles and the VMCS exits as <see cref="ModelledCost.Of"/>
    /// prices them (a port-I/O exit is <see cref="CostProfile.VmExitRoundTrip"/> + <see cref="CostProfile.IoEmulation"/>,
    /// a port access without a VMM <see cref="CostProfile.PortAccess"/>), plus what the VMCS does not count: each trapped
    /// MMIO access (a virtio notify among them) is an exit round trip and <see cref="CostProfile.MmioEmulation"/> under a
    /// VMM, a <see cref="CostProfile.DeviceRegisterAccess"/> without one; each direct access to an assigned device's
    /// registers a <see cref="CostProfile.DeviceRegisterAccess"/>; each interrupt under a VMM
    /// <see cref="CostProfile.InterruptInjection"/>. The device's own latency (the host's pread) is not modelled.</summary>
    public static ModelledCost Cost(MachineEvents events, IReadOnlyDictionary<VmExitReason, long> exits, long directAccesses,
        long interrupts, CostProfile profile)
    {
        var guest = ModelledCost.Of(events, profile);
        long mmio = exits.GetValueOrDefault(VmExitReason.MmioRead) + exits.GetValueOrDefault(VmExitReason.MmioWrite);
        bool underVmm = events.Technique != Techniques.Technique.Native;
        double transitions = underVmm ? mmio * profile.VmExitRoundTrip : 0;
        double vmm = underVmm ? mmio * profile.MmioEmulation + interrupts * profile.InterruptInjection : 0;
        double device = (underVmm ? 0 : mmio) * profile.DeviceRegisterAccess + directAccesses * profile.DeviceRegisterAccess;
        return guest with
        {
            Events = guest.Events + device,
            ExitTransitions = guest.ExitTransitions + transitions,
            VmmWork = guest.VmmWork + vmm,
        };
    }

    /// <summary>The disk's counters: the ATA and assigned controllers keep <see cref="DiskStatistics"/> in
    /// <see cref="Vm.Disks"/>; virtio-blk keeps its own, and its transport counts the interrupts.</summary>
    private static DiskStatistics Statistics(Vm vm, DiskInterface kind)
    {
        if (kind != DiskInterface.Virtio)
        {
            return vm.Disks.Single(d => d.Interface == kind).Statistics;
        }
        var transport = Devices.Virtio.VirtioSlots.Of(vm).Single(t => t.Device is Devices.Virtio.Block.VirtioBlock);
        var block = (Devices.Virtio.Block.VirtioBlock)transport.Device;
        return new DiskStatistics
        {
            Reads = block.Reads,
            Writes = block.Writes,
            Flushes = block.Flushes,
            Other = block.IdRequests,
            Errors = block.IoErrors + block.Unsupported,
            BytesRead = block.BytesRead,
            BytesWritten = block.BytesWritten,
            Interrupts = transport.Interrupts,
        };
    }

    /// <summary>The exits of <paramref name="reason"/>, less the serial console's port accesses for port exits.</summary>
    private static long WithoutConsole(ExitStatistics exits, VmExitReason reason)
    {
        long count = exits.Count(reason);
        if (reason is VmExitReason.PortRead or VmExitReason.PortWrite)
        {
            count -= exits.ByPort.Where(p => p.Device == ConsoleDevice).Sum(p => reason == VmExitReason.PortRead ? p.Reads : p.Writes);
        }
        return count;
    }

    /// <summary>The device name COM1's ports are claimed under (<see cref="Devices.Uart16550"/>).</summary>
    private const string ConsoleDevice = "com1";

    private sealed record Measured(MachineEvents Events, ExitStatistics Exits, DiskStatistics Disk, long InterruptsDelivered, TimeSpan Wall, string Result);

    private static Measured RunOnce(KernelImageSource kernel, string imagePath, DiskInterface kind, string commandLine,
        BenchConfiguration configuration, ulong memoryBytes, TimeSpan? timeout)
    {
        var serial = new MemoryStream();
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = kernel,
            MemoryBytes = memoryBytes,
            CommandLine = commandLine,
            SerialOutput = serial,
            Timeout = timeout,
            Disks = [new DiskConfig(imagePath, kind)],
        });
        using var engine = new SimEngine(configuration.Options);
        var clock = Stopwatch.StartNew();
        var run = vm.Run(engine);
        clock.Stop();
        vm.Serial.Flush();
        string output = Encoding.UTF8.GetString(serial.ToArray());
        var outcome = run.Outcome;
        var result = Regex.Match(output, @"^RESULT diskbench .*$", RegexOptions.Multiline);
        if (outcome.Kind != VmOutcomeKind.DebugExit || outcome.GuestStatus != 0 || !result.Success)
        {
            throw new WorkloadFailedException(
                $"'{commandLine}' through {DiskConfig.InterfaceName(kind)} under {configuration.Name} did not end well: {outcome.Message}\n{output}",
                outcome.Kind == VmOutcomeKind.Timeout ? "Give a longer --timeout, or a smaller --count" : "Run it alone with nestor run --disk IMAGE,if=... --cmdline to see why")
            {
                Outcome = outcome.Kind,
            };
        }
        string line = Regex.Replace(result.Value.TrimEnd('\r'), @" \w+_cycles=\d+", "");
        return new Measured(run.Events!, vm.Exits, Statistics(vm, kind), vm.IoApic.MessagesSent, clock.Elapsed, line);
    }
}
