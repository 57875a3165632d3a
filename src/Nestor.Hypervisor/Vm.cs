using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.State;

namespace Nestor.Hypervisor;

/// <summary>A virtual machine: guest RAM with the kernel loaded and the boot structures written, the device bus with
/// the platform's devices, its vCPUs (their state between runs), and the exit statistics of its runs. Engine-independent.</summary>
public sealed class Vm : IDisposable
{
    private readonly bool privateHost;

    private Vm(VmConfig config, GuestMemory memory, Host host, bool privateHost)
    {
        Config = config;
        Memory = memory;
        Host = host;
        this.privateHost = privateHost;
        Bus = new DeviceBus(config.Diagnostics);
        Serial = new Uart16550(config.SerialOutput);
        Bus.Claim(Serial, Uart16550.Com1, Uart16550.PortCount);
        DebugExit = new DebugExitPort(status => GuestStatus ??= status);
        Bus.Claim(DebugExit, DebugExitPort.Port, DebugExitPort.PortCount);
        Bus.Claim(IoApic, IoApic.DefaultBase, IoApic.Length);
        Bus.Claim(Pic, Pic8259Pair.MasterCommand, 2);
        Bus.Claim(Pic, Pic8259Pair.SlaveCommand, 2);
        Bus.Claim(Pic.ElcrPorts, Pic8259Pair.ElcrMaster, 2);
        IsaRouting = new IsaInterruptRouting(IoApic, Pic);
        Interrupts = new InterruptController(IsaRouting);
        if (config.Multiboot)
        {
            var boot = MultibootLoader.Load(config.Kernel, memory, config.CommandLine, config.Modules, config.Diagnostics);
            (Kernel, InitialState, MultibootInformation) = (boot.Kernel, boot.State, boot.Information);
        }
        else
        {
            Kernel = KernelLoader.Load(config.Kernel, memory);
            var bootInformation = BootInformation.Write(memory, config.CommandLine, Kernel);
            InitialState = LongModeSetup.Prepare(memory, Kernel.Entry, bootInformation, noExecuteSupported: true);
        }
        // vCPU 0 boots the kernel; the others wait for a start-up IPI (SDM Vol. 3A §8.4.1), their APIC IDs their indices.
        var vcpus = new Vcpu[config.Cpus];
        vcpus[0] = new Vcpu(0, CpuStateConversion.ToCpuState(InitialState));
        for (int i = 1; i < vcpus.Length; i++)
        {
            var apic = Nestor.Machine.Processor.LocalApicState.Reset;
            apic.Id = (uint)i;
            vcpus[i] = new Vcpu(i, Nestor.Machine.Processor.Cpu.InitState(apic, config.CpuModel));
        }
        Vcpus = vcpus;
        PcPlatform = Devices.Platform.PcPlatform.Attach(this);
        Dma = new GuestDma(memory);
        openedDisks = Devices.Storage.DiskAttachment.AttachAll(this);
        Devices.Virtio.Console.VirtioConsole.AttachIfConfigured(this);
        Devices.Virtio.Balloon.VirtioBalloon.AttachIfConfigured(this);
        // Where guests probe for the devices of docs/devices.md; an empty place answers as an open bus, quietly.
        Bus.AddProbeWindow(AccessSpace.Port, Devices.Legacy.Ata.AtaController.CommandBlock, Devices.Legacy.Ata.AtaController.CommandBlockPorts);
        Bus.AddProbeWindow(AccessSpace.Port, Devices.Legacy.Ata.AtaController.ControlBlock, Devices.Legacy.Ata.AtaController.ControlBlockPorts);
        Bus.AddProbeWindow(AccessSpace.Memory, Devices.Virtio.VirtioSlots.FirstBase, Devices.Virtio.VirtioSlots.Count * Devices.Virtio.VirtioSlots.SlotSize);
        Bus.AddProbeWindow(AccessSpace.Memory, Devices.Assigned.AssignedDiskController.BaseAddress,
            Devices.Assigned.AssignedDiskController.MaximumControllers * Devices.Assigned.AssignedDiskController.RegisterStride);
    }

    private readonly List<Persistence.ISnapshottable> attachedDevices = [];

    /// <summary>The devices attached after the platform's own (disk controllers, virtio devices), in the order
    /// attached: each is part of <see cref="SnapshotParts"/>.</summary>
    public IReadOnlyList<Persistence.ISnapshottable> AttachedDevices => attachedDevices;

    /// <summary>Adds a device with state to the VM's snapshots (called when it is attached).</summary>
    internal void AttachDevice(Persistence.ISnapshottable device) => attachedDevices.Add(device);

    private readonly List<Devices.Storage.IBlockBackend> openedDisks;
    private readonly List<Devices.Storage.AttachedDisk> disks = [];

    /// <summary>The VM's disks as attached (docs/devices.md), with their controllers' counters.</summary>
    public IReadOnlyList<Devices.Storage.AttachedDisk> Disks => disks;

    /// <summary>Records a disk in <see cref="Disks"/>.</summary>
    internal void AddDisk(Devices.Storage.AttachedDisk disk) => disks.Add(disk);

    public VmConfig Config { get; }

    /// <summary>The host whose frame pool backs this VM's memory under a VMM.</summary>
    public Host Host { get; }

    public GuestMemory Memory { get; }

    /// <summary>The port and MMIO bus.</summary>
    public DeviceBus Bus { get; }

    /// <summary>The I/O APIC at 0xFEC00000: where the platform's interrupt lines are delivered on the software machine.</summary>
    public IoApic IoApic { get; } = new();

    /// <summary>The 8259 pair: the ISA lines' second destination, the bootstrap processor's INTR (LINT0 ExtINT).</summary>
    public Pic8259Pair Pic { get; } = new();

    /// <summary>The software machine's sink for the platform's lines: the I/O APIC pin and, for ISA IRQs, the 8259s.</summary>
    public IsaInterruptRouting IsaRouting { get; }

    /// <summary>The platform's interrupt lines (GSIs), which devices raise and lower.</summary>
    public InterruptController Interrupts { get; }

    /// <summary>The standard PC devices: fw_cfg, PCI configuration space, the PIT, the ACPI PM timer, the HPET
    /// (and the ACPI tables of a Multiboot boot).</summary>
    public Devices.Platform.PcPlatform PcPlatform { get; }

    /// <summary>COM1.</summary>
    public Uart16550 Serial { get; }

    /// <summary>The kernel as loaded.</summary>
    public LoadedKernel Kernel { get; }

    /// <summary>Where the Multiboot information structure lies when the kernel was booted by Multiboot, else null.</summary>
    public Nestor.Machine.Addresses.GuestPhysical? MultibootInformation { get; }

    /// <summary>The vCPU state at the kernel's first instruction.</summary>
    public VcpuState InitialState { get; }

    /// <summary>The VM's vCPUs (<see cref="VmConfig.Cpus"/>; vCPU 0 the bootstrap processor), which it owns between runs: a run starts from their state and leaves
    /// its end state in them, so that the next run continues.</summary>
    public IReadOnlyList<Vcpu> Vcpus { get; }

    /// <summary>How the VMM's devices reach guest memory (DMA); engines hook it (see <see cref="GuestDma"/>).</summary>
    public GuestDma Dma { get; }

    /// <summary>The debug-exit port.</summary>
    public DebugExitPort DebugExit { get; }

    /// <summary>The VM's side of a service VM's split driver (<see cref="ServiceVm.ServiceVmHost"/>), whose
    /// hypercalls its VMM then serves whatever the technique; null for a VM on its own.</summary>
    public ServiceVm.SplitDriverDomain? SplitDriver { get; set; }

    /// <summary>The parts of the VM a snapshot holds, in the order of their sections: the vCPUs, RAM, COM1, the
    /// debug-exit port, the platform's interrupt lines, the I/O APIC and the 8259 pair, then the disk controllers and the other attached devices. The engine's own state (a VMM's) is not here: see <see cref="Persistence.VmSnapshot"/>.</summary>
    public IEnumerable<Persistence.ISnapshottable> SnapshotParts => [.. Vcpus, Memory, Serial, DebugExit, Interrupts, IoApic, Pic, .. attachedDevices];


    /// <summary>VM exits handled so far.</summary>
    public ExitStatistics Exits { get; } = new();

    /// <summary>The status the guest wrote to the debug-exit port, once it has.</summary>
    public uint? GuestStatus { get; private set; }

    /// <summary>Builds a VM from <paramref name="config"/>: validates it, allocates RAM and loads the kernel.</summary>
    /// <exception cref="Errors.BadInputException">The configuration or the kernel is unusable.</exception>
    public static Vm Create(VmConfig config)
    {
        config.Validate();
        return Create(config, Host.ForGuestMemory(config.MemoryBytes), privateHost: true);
    }

    /// <summary>Builds a VM from <paramref name="config"/> on <paramref name="host"/>, whose frame pool it shares with
    /// the host's other VMs.</summary>
    /// <exception cref="Errors.BadInputException">The configuration or the kernel is unusable.</exception>
    public static Vm Create(VmConfig config, Host host)
    {
        config.Validate();
        return Create(config, host, privateHost: false);
    }

    private static Vm Create(VmConfig config, Host host, bool privateHost)
    {
        GuestMemory? memory = null;
        try
        {
            memory = new GuestMemory(config.MemoryBytes);
            var vm = new Vm(config, memory, host, privateHost);
            host.Add(vm);
            return vm;
        }
        catch
        {
            memory?.Dispose();
            if (privateHost)
            {
                host.Dispose();
            }
            throw;
        }
    }

    /// <summary>Runs the VM on <paramref name="engine"/> until it ends, enforcing <see cref="VmConfig.Timeout"/>
    /// (of any length) from now. <paramref name="control"/> lets another thread stop it (a signal), and may carry
    /// a deadline armed earlier (the CLI's covers loading too); whichever stop comes first decides the outcome.</summary>
    public Engines.RunResult Run(Engines.IEngine engine, Engines.RunControl? control = null)
    {
        control ??= new Engines.RunControl();
        using var deadline = Config.Timeout is { } limit ? control.StopAfter(limit) : null;
        return engine.Run(this, control);
    }

    public void Dispose()
    {
        Serial.Flush();
        foreach (var disk in openedDisks)
        {
            // Dispose flushes: what the guest wrote reaches the file even without a guest flush when the VM ends
            // normally (a killed VMM keeps only what the guest flushed).
            disk.Dispose();
        }
        foreach (var device in attachedDevices.OfType<IDisposable>())
        {
            device.Dispose(); // before the host's frame pool goes: a device may hold frames of it (an IOMMU's tables)
        }
        Host.Remove(this);
        if (privateHost)
        {
            Host.Dispose();
        }
        Memory.Dispose();
    }
}
