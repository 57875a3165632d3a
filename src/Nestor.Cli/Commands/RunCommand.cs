using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Nestor.Cli.Output;
using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Capabilities;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.State;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Kvm;
using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;

namespace Nestor.Cli.Commands;

/// <summary><c>nestor run</c>: boot a kernel in a VM, relay its console, and report how it ended.</summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var kernel = new Argument<string?>("KERNEL")
        {
            Description = "Kernel to boot: an ELF64 file, raw code with --flat, or builtin:NAME (nestoros, hello, spin, ticker, smp-spin). Default: builtin:nestoros on sim, builtin:hello on kvm",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var engine = new Option<string>("--engine") { Description = "Engine: sim (Nestor's own x86-64 machine, the default) or kvm (hardware-assisted, /dev/kvm)", DefaultValueFactory = _ => "sim" };
        var memory = new Option<string>("--memory", "-m") { Description = "Guest RAM, e.g. 64M, 1G", DefaultValueFactory = _ => "64M" };
        var commandLine = new Option<string>("--cmdline") { Description = "Kernel command line", DefaultValueFactory = _ => "" };
        var flat = new Option<bool>("--flat") { Description = "KERNEL is raw code, loaded at 0x100000 (or --load-addr) and entered there" };
        var loadAddress = new Option<string?>("--load-addr") { Description = "Guest-physical load address of --flat code (default 0x100000)" };
        var timeout = TypedOptions.Seconds("--timeout", "Stop after this many seconds, loading included (exit status 124)");
        var dumpState = new Option<string?>("--dump-state") { Description = "Write the vCPU's final state as JSON to FILE, or - for standard output" };
        var stats = new Option<bool>("--stats") { Description = "Print VM exits by reason and KVM's own counters" };
        var json = new Option<bool>("--json") { Description = "Print one JSON document (outcome, exits, counters, guest output) instead of text" };
        var serialLog = new Option<string?>("--serial-log") { Description = "Write the guest's COM1 output to FILE instead of the terminal" };
        var force = new Option<bool>("--force") { Description = "Run even if the host capability probe says this engine cannot run the guest" };
        var verbose = new Option<bool>("--verbose") { Description = "Show stack traces of internal errors" };
        var multiboot = new Option<bool>("--multiboot") { Description = "Boot KERNEL as a Multiboot v1 kernel (32-bit entry), as QEMU -kernel does; --engine sim only" };
        var qemu = new Option<bool>("--qemu") { Description = "Boot on the reference machine (QEMU's software CPU) instead; KERNEL defaults to builtin:nestoros" };
        var kvmDevice = new Option<string>("--kvm-device") { Description = "KVM device", DefaultValueFactory = _ => KvmSystem.DefaultDevicePath };
        var technique = new Option<string>("--technique") { Description = "How the VMM virtualizes the CPU on --engine sim: native (no VMM, the default), hw (hardware assist: VM exits, a VMCS), trap (trap-and-emulate, the kernel in ring 1), bt (binary translation of the kernel) or pv (paravirtualization: NestorOS makes hypercalls)", DefaultValueFactory = _ => "native" };
        var mmu = new Option<string?>("--mmu") { Description = "Memory virtualization with --technique hw: nested (nested page tables, the 2-D walk; the default) or shadow" };
        var nestedPages = new Option<string?>("--nested-pages") { Description = "Page size the VMM maps guest RAM with in the nested page table: 4k (the default) or 2m" };
        var disk = new Option<string[]>("--disk")
        {
            Description = "Attach a raw disk image: FILE[,if=ata|virtio|assigned][,ro]; if=virtio (paravirtual virtio-blk) by default, " +
                          "if=ata the emulated IDE disk (master, then slave), if=assigned the dedicated controller; ro attaches it " +
                          "read-only. The file is locked while the VM runs; writes reach it as the guest's flushes promise. " +
                          "May be given several times (docs/devices.md)",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var module = new Option<string[]>("--module")
        {
            Description = "With --multiboot: load FILE as a Multiboot module, listed in the information structure with the module's command line; may be given several times (QEMU's -initrd a,b)",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var platformDevice = new Option<string[]>("--device")
        {
            Description = "With --multiboot: add an optional platform device by its QEMU name: intel-iommu (the VT-d unit at 0xFED90000 " +
                          "with interrupt remapping) or edu (QEMU's educational PCI device at 00:01.0); may be given several times (docs/boot-protocol.md)",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var virtioConsole = new Option<bool>("--virtio-console") { Description = "Give the guest a virtio-console (virtio-mmio, the slot after the virtio disks) whose output goes where COM1's does" };
        var balloon = new Option<bool>("--balloon") { Description = "Give the guest a virtio-balloon (virtio-mmio, the slot after the virtio disks and console; docs/overcommit.md)" };
        var balloonTarget = new Option<string?>("--balloon-target")
        {
            Description = "With --balloon: the balloon's first target, the memory the guest is asked to give back (bytes, or with K/M/G), a multiple of 4 KiB",
        };
        var serviceVm = new Option<bool>("--service-vm")
        {
            Description = "Run a second NestorOS VM, the service VM, that owns --service-disk through its ordinary driver and serves it to this VM " +
                          "over the split driver's ring (Xen's blkback/blkfront): the service VM boots with servicevm=back, this VM's command line " +
                          "gets servicevm=front and a block device xvda. Both run on one sim host with this VM's --technique (not native); the " +
                          "service VM's console lines are prefixed [service] (docs/devices.md, \"The service VM\")",
        };
        var serviceDisk = new Option<string?>("--service-disk") { Description = "The service VM's disk: FILE[,if=ata|assigned][,ro]; if=ata (the emulated IDE disk) by default" };
        var serviceMemory = new Option<string>("--service-memory") { Description = "The service VM's RAM", DefaultValueFactory = _ => "32M" };
        var serviceCommandLine = new Option<string>("--service-cmdline")
        {
            Description = "Kernel options for the service VM, after servicevm=back: how its driver waits (ata=irq, ndma=irq), or blkback=forge (a test: one response with a forged id)",
            DefaultValueFactory = _ => "",
        };
        var snapshotAt = new Option<string[]>("--snapshot-at")
        {
            Description = "Stop after N guest instructions retired (the unit the software machine counts exactly), save the VM to FILE and end: --snapshot-at N FILE (docs/migration.md)",
            Arity = new ArgumentArity(2, 2),
            AllowMultipleArgumentsPerToken = true,
        };
        var snapshotOnSignal = new Option<string?>("--snapshot-on-signal") { Description = "On each SIGUSR1, pause the VM at its next stop check, save it to FILE and run on" };
        var restore = new Option<string?>("--restore") { Description = "Restore the VM from a snapshot FILE and continue it; give the options the snapshot was taken with" };
        var memFile = SnapshotCommand.MemoryFileOption();
        var cpus = TypedOptions.Integer("--cpus", $"vCPUs (1 to {VmConfig.MaximumCpus}): vCPU 0 boots the kernel, the others wait for INIT and start-up IPIs; --engine sim",
            1, VmConfig.MaximumCpus, $"a number of vCPUs from 1 to {VmConfig.MaximumCpus}", "2");
        var deterministic = new Option<bool>("--deterministic") { Description = "Interleave the vCPUs the same way every run (sim's one-thread interleaving, docs/cpu-model.md), so that results repeat" };
        var guestClock = new Option<string?>("--clock")
        {
            Description = "What the guest's time (TSC, APIC timer, PIT, HPET, PM timer) counts on --engine sim: virtual (one cycle per retired " +
                          "instruction at a nominal 1 GHz, so that runs repeat; the default) or host (the host's monotonic time at that rate, as " +
                          "QEMU's TCG does: guests that time themselves run as long as on hardware; runs do not repeat; docs/cpu-model.md)",
        };
        var cpuModel = new Option<string>("--cpu-model")
        {
            Description = "The software machine's processor: intel (GenuineIntel, Broadwell-class; the default) or amd (AuthenticAMD, " +
                          "Opteron-class: SYSCALL in compatibility mode, no SYSENTER in long mode); --engine sim (docs/cpu-model.md)",
            DefaultValueFactory = _ => "intel",
        };
        var command = new Command("run", "Boot a kernel in a VM and run it until it exits")
        {
            snapshotAt, snapshotOnSignal, restore, memFile, cpus, deterministic, guestClock, cpuModel,
            kernel, engine, memory, commandLine, flat, loadAddress, timeout, dumpState, stats, json, serialLog, force, verbose, kvmDevice, qemu, multiboot,
            technique, mmu, nestedPages, disk, virtioConsole, balloon, balloonTarget, serviceVm, serviceDisk, serviceMemory, serviceCommandLine, module, platformDevice,
        };
        var mmuOptions = new MmuOptions();
        var kvmMigration = new KvmMigrationOptions();
        foreach (var option in mmuOptions.All.Concat(kvmMigration.All))
        {
            command.Options.Add(option);
        }
        command.SetAction(parse =>
        {
            var options = new RunOptions(
                parse.GetValue(kernel), parse.GetValue(engine)!, parse.GetValue(memory)!, parse.GetValue(commandLine)!,
                parse.GetValue(flat), parse.GetValue(loadAddress), parse.GetValue(timeout), parse.GetValue(dumpState),
                parse.GetValue(stats), parse.GetValue(json), parse.GetValue(serialLog), parse.GetValue(force),
                parse.GetValue(kvmDevice)!, parse.GetValue(qemu), parse.GetValue(multiboot),
                parse.GetValue(technique)!, parse.GetValue(mmu), parse.GetValue(nestedPages));
            MmuConfiguration caches;
            KvmMigrationPlan? migration;
            try
            {
                caches = mmuOptions.Parse(parse);
                migration = kvmMigration.Parse(parse);
            }
            catch (BadInputException e)
            {
                Console.Error.WriteLine($"nestor: {e.Message}");
                Console.Error.WriteLine($"  what to do: {e.Advice}");
                return ExitStatus.BadInput;
            }
            return Execute(options with
            {
                Caches = caches,
                Disks = parse.GetValue(disk) ?? [],
                VirtioConsole = parse.GetValue(virtioConsole),
                Balloon = parse.GetValue(balloon),
                BalloonTarget = parse.GetValue(balloonTarget),
                ServiceVm = parse.GetValue(serviceVm),
                ServiceDisk = parse.GetValue(serviceDisk),
                ServiceMemory = parse.GetValue(serviceMemory)!,
                ServiceCommandLine = parse.GetValue(serviceCommandLine)!,
                Modules = parse.GetValue(module) ?? [],
                PlatformDevices = parse.GetValue(platformDevice) ?? [],
                SnapshotAt = parse.GetValue(snapshotAt),
                SnapshotOnSignal = parse.GetValue(snapshotOnSignal),
                Restore = parse.GetValue(restore),
                MemoryFile = parse.GetValue(memFile),
                Migration = migration,
                Cpus = parse.GetValue(cpus) ?? 1,
                Deterministic = parse.GetValue(deterministic),
                CpuModel = parse.GetValue(cpuModel)!,
                Clock = parse.GetValue(guestClock),
            }, parse.GetValue(verbose));
        });
        return command;
    }

    internal sealed record RunOptions(string? Kernel, string Engine, string Memory, string CommandLine, bool Flat,
        string? LoadAddress, double? Timeout, string? DumpState, bool Stats, bool Json, string? SerialLog, bool Force,
        string KvmDevice, bool Qemu = false, bool Multiboot = false, string Technique = "native", string? Mmu = null,
        string? NestedPages = null)
    {
        /// <summary>The MMU's caches (--tlb, --pwc, --nested-tlb, --nested-pwc).</summary>
        public MmuConfiguration Caches { get; init; } = MmuConfiguration.Default;

        /// <summary>The --disk values, in order.</summary>
        public IReadOnlyList<string> Disks { get; init; } = [];

        /// <summary>--virtio-console.</summary>
        public bool VirtioConsole { get; init; }

        /// <summary>--balloon.</summary>
        public bool Balloon { get; init; }

        /// <summary>--balloon-target, as given.</summary>
        public string? BalloonTarget { get; init; }

        /// <summary>--service-vm.</summary>
        public bool ServiceVm { get; init; }

        /// <summary>--service-disk, the service VM's disk.</summary>
        public string? ServiceDisk { get; init; }

        /// <summary>--service-memory.</summary>
        public string ServiceMemory { get; init; } = "32M";

        /// <summary>--service-cmdline: kernel options for the service VM.</summary>
        public string ServiceCommandLine { get; init; } = "";

        /// <summary>The --module values (FILE[,cmdline]), in order.</summary>
        public IReadOnlyList<string> Modules { get; init; } = [];

        /// <summary>The --device values (optional platform devices by name).</summary>
        public IReadOnlyList<string> PlatformDevices { get; init; } = [];

        /// <summary>--snapshot-at N FILE.</summary>
        public string[]? SnapshotAt { get; init; }

        /// <summary>--snapshot-on-signal FILE.</summary>
        public string? SnapshotOnSignal { get; init; }

        /// <summary>--restore FILE.</summary>
        public string? Restore { get; init; }

        /// <summary>--mem-file MEM: the snapshots this run saves keep their RAM there.</summary>
        public string? MemoryFile { get; init; }

        /// <summary>--migrate-to or --incoming on KVM.</summary>
        public KvmMigrationPlan? Migration { get; init; }

        /// <summary>--cpu-model intel|amd.</summary>
        public string CpuModel { get; init; } = "intel";

        /// <summary>--cpus N.</summary>
        public int Cpus { get; init; } = 1;

        /// <summary>--deterministic.</summary>
        public bool Deterministic { get; init; }

        /// <summary>--clock virtual|host, or null for the engine's own.</summary>
        public string? Clock { get; init; }
    }

    /// <summary>The software machine's options from --technique, --mmu and --nested-pages, checked against the engine.</summary>
    internal static SimOptions ParseSimOptions(RunOptions o, EngineKind engine)
    {
        var technique = o.Technique.ToLowerInvariant() switch
        {
            "native" => Technique.Native,
            "hw" => Technique.HardwareAssist,
            "trap" => Technique.TrapAndEmulate,
            "bt" => Technique.BinaryTranslation,
            "pv" => Technique.Paravirtual,
            _ => throw new BadInputException($"there is no technique '{o.Technique}'", "Use --technique native, hw, trap, bt or pv"),
        };
        if (technique != Technique.Native && engine != EngineKind.Sim)
        {
            throw new BadInputException($"--technique {o.Technique} runs on Nestor's software machine",
                "Add --engine sim (KVM is the host's own hardware assistance, not a modelled technique)");
        }
        MemoryVirtualization? memory = o.Mmu?.ToLowerInvariant() switch
        {
            null => null,
            "nested" => MemoryVirtualization.Nested,
            "shadow" => MemoryVirtualization.Shadow,
            _ => throw new BadInputException($"there is no memory virtualization '{o.Mmu}'", "Use --mmu nested or --mmu shadow"),
        };
        bool large = (o.NestedPages ?? "4k").ToLowerInvariant() switch
        {
            "4k" => false,
            "2m" => true,
            _ => throw new BadInputException($"--nested-pages {o.NestedPages} is not a page size the nested table has", "Use --nested-pages 4k or 2m"),
        };
        // Which technique may use which memory virtualization and nested page size: the one home of those rules.
        if (TechniqueRules.Check(new TechniqueChoice(technique, memory, NestedPageSizeChosen: o.NestedPages is not null)) is { } violation)
        {
            throw new BadInputException(violation.Message, violation.Hint);
        }
        return new SimOptions { Technique = technique, Memory = memory, LargeNestedPages = large, Mmu = o.Caches };
    }

    private static int Execute(RunOptions o, bool verbose)
    {
        Stream? serialFile = null;
        // Both first, before the kernel is read: --timeout bounds the whole command, and a signal during loading
        // stops the run as soon as it starts, with the same report as during the run.
        var control = new RunControl();
        using var signals = o.Qemu ? null : new StopSignals(control); // QEMU gets the terminal's signals itself
        using var watchdog = o.Timeout is { } seconds && !o.Qemu ? new RunWatchdog(seconds) : null;
        try
        {
            if (o.Qemu)
            {
                return RunOnQemu(o);
            }
            var engineKind = o.Engine.ToLowerInvariant() switch
            {
                "kvm" => EngineKind.Kvm,
                "sim" => EngineKind.Sim,
                _ => throw new BadInputException($"there is no engine '{o.Engine}'", "Use --engine kvm or --engine sim"),
            };
            var snapshots = SnapshotCommand.Plan.Parse(o.SnapshotAt, o.SnapshotOnSignal, o.Restore, engineKind, o.ServiceVm, o.MemoryFile);
            var simOptions = snapshots.Apply(ParseSimOptions(o, engineKind));
            RefuseMultibootMisuse(o, engineKind);
            var serviceDisk = ParseServiceVm(o, engineKind, simOptions);
            if (o.Modules.Count > 0 && !o.Multiboot)
            {
                throw new BadInputException("--module gives a Multiboot kernel its modules", "Add --multiboot, or drop --module");
            }
            Hypervisor.Devices.Platform.PlatformDevices platformDevices;
            try
            {
                platformDevices = Hypervisor.Devices.Platform.PlatformDevices.Parse(o.PlatformDevices);
            }
            catch (ArgumentException e)
            {
                throw new BadInputException(e.Message, "Name one of them with --device, or drop it");
            }
            if (platformDevices.Any && !o.Multiboot)
            {
                throw new BadInputException("--device adds a device to the PC platform a Multiboot kernel finds", "Add --multiboot, or drop --device");
            }
            o.Migration?.Check(engineKind, snapshots.Any);
            var arrival = o.Migration?.Accept(o.Timeout); // a destination: the VM's kernel, RAM and command line come from the source
            using var incoming = arrival?.Incoming;
            ulong memoryBytes = arrival?.Description.MemoryBytes ?? Size.Parse(o.Memory, "--memory");
            var source = arrival?.Kernel ?? KernelSource(o, memoryBytes);
            var disks = o.Disks.Select(Hypervisor.Devices.Storage.DiskConfig.Parse).ToList();
            var modules = o.Modules.Select(m => Hypervisor.Boot.MultibootModule.FromOption(m, memoryBytes)).ToList();
            var captured = new MemoryStream();
            Stream serial;
            if (o.SerialLog is not null)
            {
                serialFile = OpenSerialLog(o.SerialLog);
                serial = o.Json ? new TeeStream(serialFile, captured) : serialFile;
            }
            else
            {
                serial = o.Json ? captured : Console.OpenStandardOutput();
            }
            if (serviceDisk is not null)
            {
                return RunWithServiceVm(o, simOptions, source, memoryBytes, disks, serviceDisk, serial, captured, control, watchdog);
            }
            var config = new VmConfig
            {
                Engine = engineKind,
                Sim = simOptions,
                Kernel = source,
                MemoryBytes = memoryBytes,
                CommandLine = arrival?.Description.CommandLine ?? o.CommandLine,
                Timeout = o.Timeout is { } s ? TypedOptions.ToTimeSpan(s) : null,
                Force = o.Force,
                SerialOutput = serial,
                Diagnostics = Console.Error,
                KvmDevicePath = o.KvmDevice,
                Multiboot = o.Multiboot,
                Modules = modules,
                PlatformDevices = platformDevices,
                Disks = disks,
                VirtioConsole = o.VirtioConsole,
                Balloon = o.Balloon,
                BalloonTargetPages = BalloonTargetPages(o),
                Cpus = o.Cpus,
                Deterministic = o.Deterministic,
                Clock = o.Clock switch
                {
                    null => null,
                    "virtual" => GuestClock.Virtual,
                    "host" => GuestClock.Host,
                    _ => throw new BadInputException($"unknown clock '{o.Clock}': the guest's time is virtual (instruction-counted) or host",
                        "Give --clock virtual (the software machine's default) or --clock host"),
                },
                CpuModel = Nestor.Machine.Processor.ProcessorModel.Named(o.CpuModel) ?? throw new BadInputException(
                    $"unknown processor model '{o.CpuModel}': the software machine is intel or amd",
                    "Give --cpu-model intel (the default) or --cpu-model amd"),
            };
            using var vm = Vm.Create(config);
            if (!o.Force && engineKind == EngineKind.Kvm)
            {
                RefuseIfHostCannotRun(vm);
            }
            var engine = EngineFactory.Create(config);
            using var disposeEngine = engine as IDisposable;
            var migrating = o.Migration?.Start(vm, engine, control, incoming) ?? KvmMigrationPlan.Unmigrated(vm, engine, control);
            watchdog?.Running(control);
            var clock = Stopwatch.StartNew();
            var continuations = new List<IEngine>();
            using var disposeContinuations = new DisposeAll(continuations);
            var (run, last, saved) = snapshots.Any
                ? SnapshotCommand.Run(vm, engine, control, snapshots, () => EngineFactory.Create(config), continuations)
                : (migrating?.Run() ?? vm.Run(engine, control), engine, null);
            engine = last;
            var outcome = run.Outcome;
            clock.Stop();
            vm.Serial.Flush();
            int status = saved is null && migrating?.MigratedAway != true ? ExitStatus.For(outcome) : 0; // stopped as asked, and saved or migrated
            var report = new RunReport(vm, engine, run, clock.Elapsed, status, captured);
            if (o.Json)
            {
                report.WriteJson(Console.Out, includeState: o.DumpState == "-");
            }
            else if (migrating?.MigratedAway == true)
            {
                Console.Error.WriteLine($"nestor: the VM left for {o.Migration!.Source!.Destination}, where it runs on");
            }
            else
            {
                report.WriteOutcome(Console.Error);
                if (Nestor.Hypervisor.Devices.Virtio.Balloon.VirtioBalloon.Of(vm) is { } b)
                {
                    Console.Error.WriteLine($"balloon: target {b.Target} pages, actual {b.Actual}, inflated now {b.InflatedPages}, " +
                        $"inflated {b.PagesInflated} and deflated {b.PagesDeflated} in all, {b.BytesReturnedToHost / 1024} KiB returned to the host, " +
                        $"{b.RefusedPfns} PFNs refused");
                }
                if (o.Stats)
                {
                    report.WriteStatistics(Console.Out);
                }
            }
            if (o.DumpState is { } path && !(o.Json && path == "-") && outcome.FinalState is { } state)
            {
                WriteState(path, state);
            }
            return status;
        }
        catch (Exception e)
        {
            return CommandErrors.Report(e, verbose);
        }
        finally
        {
            serialFile?.Dispose();
        }
    }

    /// <summary>The service VM's disk when --service-vm is given (null without it), with the combinations that cannot
    /// work refused: either option without the other, another engine than sim, a virtio disk (the service VM's driver
    /// is an ordinary one: ATA or the assigned controller).</summary>
    private static Hypervisor.Devices.Storage.DiskConfig? ParseServiceVm(RunOptions o, EngineKind engine, SimOptions sim)
    {
        if (!o.ServiceVm)
        {
            if (o.ServiceCommandLine.Length > 0)
            {
                throw new BadInputException("--service-cmdline gives the service VM its kernel options, but there is no --service-vm",
                    "Add --service-vm --service-disk FILE, or drop --service-cmdline");
            }
            return o.ServiceDisk is null ? null : throw new BadInputException(
                "--service-disk gives the service VM its disk, but there is no --service-vm",
                "Add --service-vm, or attach the disk to this VM itself with --disk FILE");
        }
        if (o.ServiceDisk is null)
        {
            throw new BadInputException("--service-vm needs the disk the service VM serves", "Add --service-disk FILE[,if=ata|assigned][,ro]");
        }
        if (engine != EngineKind.Sim)
        {
            throw new BadInputException($"--service-vm runs both VMs on one host of Nestor's software machine, not on --engine {o.Engine}",
                "Drop --engine kvm (sim is the default)");
        }
        if (sim.Technique == Technique.Native)
        {
            throw new BadInputException("--service-vm needs a VMM, and --technique native has none: its VMCALL would be #UD",
                "use --technique hw, pv, trap or bt");
        }
        NestorOSCommandLine.CheckKernelOptions(o.ServiceCommandLine);
        bool interfaceGiven = o.ServiceDisk.Split(',').Skip(1).Any(part => part.StartsWith("if=", StringComparison.Ordinal));
        var disk = Hypervisor.Devices.Storage.DiskConfig.Parse(interfaceGiven ? o.ServiceDisk : o.ServiceDisk + ",if=ata");
        if (disk.Interface == Hypervisor.Devices.Storage.DiskInterface.Virtio)
        {
            throw new BadInputException($"--service-disk {o.ServiceDisk}: the service VM owns its disk through an ordinary driver, ATA or the assigned controller, not virtio",
                "Give if=ata or if=assigned (or use --disk FILE,if=virtio without a service VM)");
        }
        return disk;
    }

    /// <summary><c>--service-vm</c>: the user VM (this command's kernel, options and disks, with
    /// <c>servicevm=front</c> first on its command line) and the service VM (the same kernel with
    /// <c>servicevm=back</c> and the service disk) on one host, run by <see cref="Hypervisor.ServiceVm.ServiceVmHost"/>.
    /// The user VM's console goes where it always does; the service VM's lines go there too, each prefixed
    /// <c>[service] </c>.</summary>
    private static int RunWithServiceVm(RunOptions o, SimOptions simOptions, KernelImageSource source, ulong memoryBytes,
        List<Hypervisor.Devices.Storage.DiskConfig> disks, Hypervisor.Devices.Storage.DiskConfig serviceDisk, Stream serial,
        MemoryStream captured, RunControl control, RunWatchdog? watchdog)
    {
        ulong serviceBytes = Size.Parse(o.ServiceMemory, "--service-memory");
        var timeout = o.Timeout is { } s ? TypedOptions.ToTimeSpan(s) : (TimeSpan?)null;
        using var serviceSerial = new LinePrefixStream(serial, "[service] ");
        using var host = Hypervisor.Host.ForGuestMemory(memoryBytes + serviceBytes);
        using var user = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Sim = simOptions,
            Kernel = source,
            MemoryBytes = memoryBytes,
            CommandLine = o.CommandLine.Length == 0 ? "servicevm=front" : "servicevm=front " + o.CommandLine,
            Timeout = timeout,
            Force = o.Force,
            SerialOutput = serial,
            Diagnostics = Console.Error,
            Multiboot = o.Multiboot,
            Disks = disks,
            VirtioConsole = o.VirtioConsole,
        }, host);
        using var service = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Sim = simOptions,
            Kernel = source,
            MemoryBytes = serviceBytes,
            CommandLine = ("servicevm=back " + NestorOSCommandLine.CheckKernelOptions(o.ServiceCommandLine)).TrimEnd(),
            Force = o.Force,
            SerialOutput = serviceSerial,
            Diagnostics = Console.Error,
            Multiboot = o.Multiboot,
            Disks = [serviceDisk],
        }, host);
        using var pair = new Hypervisor.ServiceVm.ServiceVmHost(user, service, simOptions);
        using var names = new SimEngine(simOptions);   // names the engine in the report; runs nothing
        watchdog?.Running(control);
        var clock = Stopwatch.StartNew();
        var run = pair.Run(control);
        clock.Stop();
        user.Serial.Flush();
        service.Serial.Flush();
        serviceSerial.Finish();
        int status = ExitStatus.For(run.Outcome);
        var report = new RunReport(user, names, new RunResult(run.Outcome, run.Counters), clock.Elapsed, status, captured);
        if (o.Json)
        {
            report.WriteJson(Console.Out, includeState: o.DumpState == "-");
        }
        else
        {
            report.WriteOutcome(Console.Error);
            if (o.Stats)
            {
                report.WriteStatistics(Console.Out);
                var serviceReport = new RunReport(service, names, new RunResult(run.ServiceOutcome ?? run.Outcome, []), clock.Elapsed, status, captured);
                Console.Out.WriteLine();
                Console.Out.WriteLine("Service VM (domain 0): its own exits and disk, in the same run:");
                serviceReport.WriteStatistics(Console.Out, withRunLine: false);
            }
        }
        if (o.DumpState is { } path && !(o.Json && path == "-") && run.Outcome.FinalState is { } state)
        {
            WriteState(path, state);
        }
        return status;
    }

    /// <summary>--multiboot loads a kernel file on the software machine; the advice names only what was given.</summary>
    private static void RefuseMultibootMisuse(RunOptions o, EngineKind engine)
    {
        if (!o.Multiboot)
        {
            return;
        }
        if (engine != EngineKind.Sim)
        {
            throw new BadInputException($"--multiboot boots a kernel on Nestor's software machine, not on --engine {o.Engine}",
                "Drop --engine kvm (sim is the default)" + (o.Flat ? ", and drop --flat (a Multiboot kernel says where it loads)" : ""));
        }
        if (o.Flat)
        {
            throw new BadInputException("--multiboot and --flat are two different ways of loading a kernel",
                "Drop --flat: a Multiboot kernel says where it loads");
        }
    }

    /// <summary>--balloon-target in 4 KiB pages (0 without it); refused without --balloon or when not whole pages.</summary>
    private static uint BalloonTargetPages(RunOptions o)
    {
        if (o.BalloonTarget is null)
        {
            return 0;
        }
        if (!o.Balloon)
        {
            throw new BadInputException("--balloon-target sets the target of a balloon, and the VM has none", "Add --balloon");
        }
        ulong bytes = Size.Parse(o.BalloonTarget, "--balloon-target");
        if (bytes % 4096 != 0 || bytes / 4096 > uint.MaxValue)
        {
            throw new BadInputException($"--balloon-target {o.BalloonTarget} is not a whole number of 4 KiB pages below 16 TiB",
                "Give a multiple of 4K, e.g. --balloon-target 8M");
        }
        return (uint)(bytes / 4096);
    }

    /// <summary><c>--qemu</c>: the same kernel on the reference machine (QEMU TCG), for comparison with Nestor.</summary>
    private static int RunOnQemu(RunOptions o)
    {
        string[] given = [.. new[] { (o.Flat, "--flat"), (o.Stats, "--stats"), (o.Json, "--json"), (o.DumpState is not null, "--dump-state"), (o.Disks.Count > 0, "--disk"), (o.ServiceVm, "--service-vm") }
            .Where(g => g.Item1).Select(g => g.Item2)];
        if (given.Length > 0)
        {
            throw new BadInputException("--qemu boots a Multiboot kernel and reports only its output and exit status",
                $"Drop {(given.Length == 1 ? given[0] : string.Join(", ", given[..^1]) + " and " + given[^1])} with --qemu");
        }
        ulong memory = Size.Parse(o.Memory, "--memory");
        var source = o.Kernel is null ? BuiltInGuests.Get("nestoros") : KernelSource(o, memory);
        string path = o.Kernel is not null && !o.Kernel.StartsWith("builtin:", StringComparison.Ordinal)
            ? o.Kernel
            : Path.Combine(Path.GetTempPath(), $"nestor-{Environment.ProcessId}-{Guid.NewGuid():N}.elf");
        bool temporary = path != o.Kernel;
        if (temporary)
        {
            File.WriteAllBytes(path, source.Contents);
        }
        try
        {
            using var serial = o.SerialLog is null ? Console.OpenStandardOutput() : OpenSerialLog(o.SerialLog);
            // QEMU is waited for with Process.WaitForExit, which takes at most int.MaxValue ms (24.8 days): a longer
            // limit is no limit there.
            TimeSpan? qemuLimit = o.Timeout is { } t ? TypedOptions.ToTimeSpan(t) : null;
            if (qemuLimit?.TotalMilliseconds >= int.MaxValue)
            {
                qemuLimit = null;
            }
            // --module is QEMU's -initrd (its Multiboot modules), the files checked as for Nestor's own loader.
            var modules = o.Modules.Select(m => Hypervisor.Boot.MultibootModule.FromOption(m, memory))
                .Select(m => new Nestor.Hypervisor.Reference.QemuModule(m.Name, m.CommandLine)).ToList();
            var outcome = Nestor.Hypervisor.Reference.QemuReferenceMachine.Run(path, memory, o.CommandLine, serial, qemuLimit, modules: modules);
            if (outcome.TimedOut)
            {
                Console.Error.WriteLine($"nestor: the guest was still running on QEMU after {o.Timeout} s (--timeout); QEMU was stopped");
                return ExitStatus.Timeout;
            }
            if (outcome.GuestStatus is { } g)
            {
                return (int)Math.Min(g, ExitStatus.GuestStatusCeiling);
            }
            Console.Error.WriteLine($"nestor: QEMU ended with status {outcome.ProcessStatus} without a debug exit:\n{outcome.Diagnostics.Trim()}");
            return ExitStatus.EngineFailure;
        }
        finally
        {
            if (temporary)
            {
                File.Delete(path);
            }
        }
    }

    /// <summary>The kernel to boot; a file is read only if it is a regular file no larger than guest RAM.</summary>
    private static KernelImageSource KernelSource(RunOptions o, ulong memoryBytes)
    {
        GuestPhysical? load = o.LoadAddress is null ? null : new GuestPhysical(AddressText.Parse(o.LoadAddress, "--load-addr"));
        if (o.Kernel == Hypervisor.Migration.Kvm.MigrationGuest.BuiltInName && load is null && !o.Flat)
        {
            return Hypervisor.Migration.Kvm.MigrationGuest.Build(Hypervisor.Migration.Kvm.MigrationWorkload.Parse(o.CommandLine, memoryBytes));
        }
        if (o.Kernel is null || o.Kernel.StartsWith("builtin:", StringComparison.Ordinal))
        {
            if (load is not null || o.Flat)
            {
                throw new BadInputException("--flat and --load-addr apply to a kernel file, not to a built-in guest",
                    "Give the path of a raw code file");
            }
            // The default guest: NestorOS where it can run anywhere (sim), the ring-0 demo on KVM, which on hosts
            // like ours cannot deliver guest exceptions.
            string fallback = o.Engine.Equals("kvm", StringComparison.OrdinalIgnoreCase) ? "hello" : "nestoros";
            string name = o.Kernel?["builtin:".Length..] ?? fallback;
            // The host's workload guests too (builtin:smp-spin, built for --cpus processors: docs/host.md).
            return Hypervisor.Hosting.WorkloadGuests.Get(name, o.Cpus)
                ?? (BuiltInGuests.Names.Contains(name) ? BuiltInGuests.Get(name)
                    : throw new BadInputException($"there is no built-in guest '{name}'",
                        $"Built-in guests: {string.Join(", ", [.. BuiltInGuests.Names, .. Hypervisor.Hosting.WorkloadGuests.Names])}"));
        }
        if (o.Kernel.StartsWith('-') && !File.Exists(o.Kernel))
        {
            throw new BadInputException($"'{o.Kernel}' is not an option of 'nestor run'", "Run 'nestor run --help' for the options");
        }
        // A Multiboot kernel need not be ELF (the a.out kludge loads any file): its loader checks the file itself.
        return KernelImageSource.FromFile(o.Kernel, o.Flat || o.Multiboot ? KernelFormat.Flat : KernelFormat.Elf, load, memoryBytes);
    }

    /// <summary>Refuses up front a guest whose code needs something the host KVM's probes show it cannot do, rather
    /// than failing mid-run with an emulation error.</summary>
    private static void RefuseIfHostCannotRun(Vm vm)
    {
        var needs = GuestRequirementScanner.Scan(vm.Kernel);
        if (needs.Count == 0)
        {
            return;
        }
        var host = HostCapabilities.Probe(vm.Config.KvmDevicePath, needs.Select(n => n.Feature).Distinct());
        if (host.Unavailable is { } unavailable)
        {
            throw unavailable;
        }
        var missing = needs.Where(n => !host.Supports(n.Feature)).ToList();
        if (missing.Count == 0)
        {
            return;
        }
        var lines = missing.Select(n =>
        {
            var failed = host.Probes.First(p => p.Feature == n.Feature && !p.Works);
            return $"  - {Describe(n.Feature)}: the guest has '{n.Instruction}' at 0x{n.Address:x}; " +
                   $"the probe for {failed.Description} failed here ({failed.Detail})";
        });
        throw new HostUnsupportedException(
            $"this host's KVM cannot run '{vm.Config.Kernel.Name}':\n{string.Join("\n", lines)}",
            "Run it on Nestor's software machine, which runs every guest on any host (--engine sim, the default), or on a host " +
            "whose KVM passes these probes ('nestor info' shows them); --force runs it here anyway");
    }

    private static string Describe(GuestFeature f) => f switch
    {
        GuestFeature.ExceptionDelivery => "exception and interrupt delivery",
        GuestFeature.UserMode => "entering CPL 3 (user mode)",
        GuestFeature.SystemCall => "system calls from CPL 3",
        GuestFeature.Popcnt => "the popcnt instruction",
        _ => "the cmpxchg16b instruction",
    };

    /// <summary>The serial log, written by this nestor alone: a second run given the same file is refused (120)
    /// before anything in it is truncated.</summary>
    private static Stream OpenSerialLog(string path) => HostFile.CreateExclusive(path, "serial log", "--serial-log");

    /// <summary>Disposes of the engines made for the continuations of a run (<see cref="SnapshotCommand.Run"/>).</summary>
    private sealed class DisposeAll(List<IEngine> engines) : IDisposable
    {
        public void Dispose()
        {
            foreach (var e in engines)
            {
                (e as IDisposable)?.Dispose();
            }
        }
    }

    private static void WriteState(string path, VcpuState state)
    {
        string text = VcpuStateWriter.ToJson(state) + "\n";
        if (path == "-")
        {
            Console.Out.Write(text);
            Console.Out.Flush();
            return;
        }
        try
        {
            File.WriteAllText(path, text);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new BadInputException($"cannot write the state dump '{path}': {e.Message}", "Give a writable path for --dump-state");
        }
    }
}
