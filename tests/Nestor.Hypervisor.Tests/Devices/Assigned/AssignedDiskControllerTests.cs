using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Assigned;
using Nestor.Hypervisor.Devices.Assigned.Iommu;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.State;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Devices.Assigned;

/// <summary>The assigned disk controller driven by ring-0 test guests on the software machine: natively and under
/// every VMM the harness runs flat guests with, where the controller's registers must be reached without one VM exit.</summary>
public class AssignedDiskControllerTests
{
    private const ulong Buffer = 0x30_0000, ReadBack = 0x38_0000;
    private const int Bytes = 8192;
    private const long Sector = 24;
    private const ulong MemoryBytes = 32UL << 20;

    public static TheoryData<Technique, MemoryVirtualization> Configurations => new()
    {
        { Technique.Native, MemoryVirtualization.Nested },
        { Technique.HardwareAssist, MemoryVirtualization.Nested },
        { Technique.HardwareAssist, MemoryVirtualization.Shadow },
        { Technique.TrapAndEmulate, MemoryVirtualization.Shadow },
        { Technique.BinaryTranslation, MemoryVirtualization.Shadow },
        { Technique.Paravirtual, MemoryVirtualization.Shadow },
    };

    internal static (Vm Vm, MemoryBlockBackend Disk, StringWriter Diagnostics) Create(byte[] code, bool readOnly = false, MemoryBlockBackend? disk = null)
    {
        disk ??= new MemoryBlockBackend(4096, readOnly, "assigned-test");
        var diagnostics = new StringWriter();
        var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("assigned", code),
            MemoryBytes = MemoryBytes,
            SerialOutput = Stream.Null,
            Diagnostics = diagnostics,
            Timeout = TimeSpan.FromSeconds(60),
            Disks = [new DiskConfig("assigned-test", DiskInterface.Assigned, readOnly) { Backend = disk }],
        });
        return (vm, disk, diagnostics);
    }

    internal static SimEngine Engine(Technique technique, MemoryVirtualization memory) =>
        new(technique == Technique.Native ? new SimOptions() : new SimOptions { Technique = technique, Memory = memory });

    internal static AssignedDiskController Controller(Vm vm, int index = 0) =>
        (AssignedDiskController)vm.Bus.MemoryDevice(AssignedDiskController.BaseAddress + (ulong)index * AssignedDiskController.RegisterStride)!;

    private static VcpuState Run(Vm vm, SimEngine engine)
    {
        var outcome = vm.Run(engine).Outcome;
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        Assert.Equal(0u, outcome.GuestStatus);
        return outcome.FinalState!;
    }

    private static byte Status(Vm vm, int request) =>
        vm.Memory.Span(new(AssignedDiskGuest.Ring + (ulong)request * AssignedDiskController.RequestSize + 1), 1)[0];

    [Theory]
    [MemberData(nameof(Configurations))]
    public void A_guest_writes_a_pattern_flushes_and_reads_it_back_with_no_exit_for_the_registers_under_a_vmm(Technique technique, MemoryVirtualization memory)
    {
        var guest = new AssignedDiskGuest();
        GuestRequest[] requests =
        [
            new(AssignedDiskController.OperationWrite, Bytes, Sector, Buffer),
            new(AssignedDiskController.OperationFlush, 0, 0, 0),
            new(AssignedDiskController.OperationRead, Bytes, Sector, ReadBack),
        ];
        var code = guest.Build((Buffer, Bytes), requests, (Buffer, ReadBack, Bytes));
        var (vm, disk, diagnostics) = Create(code);
        using var _ = vm;
        using var engine = Engine(technique, memory);

        var state = Run(vm, engine);

        Assert.Equal(AssignedDiskController.Identifier, (uint)state.R8);
        Assert.Equal((ulong)requests.Length, state.R9); // COMPLETED
        Assert.Equal(AssignedDiskController.InterruptCompletion, (uint)state.R10);
        Assert.Equal(0UL, state.R12); // the guest found what it wrote
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(AssignedDiskController.StatusDone, Status(vm, i));
        }
        Assert.Equal(AssignedDiskGuest.PatternBytes(Bytes), disk.Contents.Slice((int)Sector * 512, Bytes).ToArray());
        Assert.Equal(1, disk.Flushes);
        Assert.Equal("", diagnostics.ToString());

        var controller = Controller(vm);
        var counted = controller.Statistics;
        Assert.Equal((1L, 1L, 1L, 0L, (long)Bytes, (long)Bytes, 0L),
            (counted.Reads, counted.Writes, counted.Flushes, counted.Errors, counted.BytesRead, counted.BytesWritten, counted.Interrupts));
        Assert.Same(counted, Assert.Single(vm.Disks).Statistics); // what --stats shows
        Assert.Equal(guest.RegisterReads, controller.RegisterReads);
        Assert.Equal(guest.RegisterWrites, controller.RegisterWrites);
        var registers = Assert.Single(vm.Exits.ByDeviceMemory, d => d.Device == controller.Name);
        if (technique == Technique.Native)
        {
            // The bare machine traps every device access into Nestor's device code, as KVM must for a device it
            // emulates in user space: each register access is one MMIO exit.
            Assert.Equal((guest.RegisterReads, guest.RegisterWrites, 0L, 0L),
                (registers.TrappedReads, registers.TrappedWrites, registers.DirectReads, registers.DirectWrites));
            Assert.Equal(guest.RegisterReads, vm.Exits.Count(VmExitReason.MmioRead));
            Assert.Equal(guest.RegisterWrites, vm.Exits.Count(VmExitReason.MmioWrite));
        }
        else
        {
            // Mapped into the guest: every access direct, not one MMIO exit.
            Assert.Equal((0L, 0L, (long)guest.RegisterReads, (long)guest.RegisterWrites),
                (registers.TrappedReads, registers.TrappedWrites, registers.DirectReads, registers.DirectWrites));
            Assert.Equal(0, vm.Exits.Count(VmExitReason.MmioRead) + vm.Exits.Count(VmExitReason.MmioWrite));
        }
        // Every DMA went through the IOMMU page by page: each request's entry read and status write, and each page of
        // each transfer; no IOTLB, so as many walks.
        long pages = requests.Sum(r => r.Operation == AssignedDiskController.OperationFlush ? 0 : (long)r.Length / 4096);
        Assert.Equal(2 * requests.Length + pages, controller.Dma.Translations);
        Assert.Equal(controller.Dma.Translations, controller.Dma.Walks);
        Assert.Equal(6 * controller.Dma.Walks, controller.Dma.WalkReferences); // root, context, four levels
        Assert.Equal(0, controller.Dma.Faults.Count);
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void A_buffer_outside_ram_gets_a_dma_fault_leaves_memory_unchanged_and_the_vm_goes_on(Technique technique, MemoryVirtualization memory)
    {
        // The buffer's first page is the last page of RAM, its second is beyond it: the whole request is refused
        // before a byte moves, so the last page keeps its canary. Submitted twice: logged once.
        ulong lastPage = MemoryBytes - 0x1000;
        GuestRequest[] requests =
        [
            new(AssignedDiskController.OperationRead, 8192, 0, lastPage),
            new(AssignedDiskController.OperationRead, 8192, 0, lastPage),
            new(AssignedDiskController.OperationRead, 4096, 0, 0x1_0000_0000), // far outside
            new(AssignedDiskController.OperationRead, Bytes, Sector, ReadBack), // and the VM goes on
        ];
        var guest = new AssignedDiskGuest();
        var (vm, disk, diagnostics) = Create(guest.Build(null, requests, null));
        using var _ = vm;
        disk.Contents.Fill(0x5A);
        var canary = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7 + 3)).ToArray();
        canary.CopyTo(vm.Memory.Span(new(lastPage), 4096));
        using var engine = Engine(technique, memory);

        var state = Run(vm, engine);

        Assert.Equal(
            [AssignedDiskController.StatusDmaFault, AssignedDiskController.StatusDmaFault, AssignedDiskController.StatusDmaFault, AssignedDiskController.StatusDone],
            Enumerable.Range(0, requests.Length).Select(i => Status(vm, i)).ToArray());
        Assert.Equal(canary, vm.Memory.Span(new(lastPage), 4096).ToArray());
        Assert.True(vm.Memory.Span(new(ReadBack), Bytes).ToArray().All(b => b == 0x5A), "the good request after the faults was done");
        Assert.Equal(AssignedDiskController.InterruptCompletion | AssignedDiskController.InterruptDmaFault, (uint)state.R10);
        Assert.Equal(0UL, state.R11); // FAULT_ADDRESS_LOW of 0x1_0000_0000, the last fault
        var controller = Controller(vm);
        var faults = controller.Dma.Faults;
        Assert.Equal(3, faults.Count);
        var source = controller.Dma.Source;
        Assert.Equal(
            [new DmaFault(source, MemoryBytes, true, DmaFaultReason.WriteNotPermitted), new DmaFault(source, MemoryBytes, true, DmaFaultReason.WriteNotPermitted),
             new DmaFault(source, 0x1_0000_0000, true, DmaFaultReason.WriteNotPermitted)],
            faults.Records);
        var logged = diagnostics.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, logged.Length); // once per address
        Assert.Contains($"0x{MemoryBytes:x}", logged[0]);
        Assert.Contains("not mapped", logged[0]);
        Assert.Equal(3, controller.DmaFaultRequests);
        if (technique != Technique.Native)
        {
            // Host memory beyond the VM's: the frame pool's frames the VMM handed out are the VM's own pages and its
            // tables; none is the faulting address's, and the VM's own frames are intact.
            var map = vm.Host.PhysicalMapOf(vm)!;
            Assert.True(map.TryHostPhysical(lastPage, out ulong host));
            Assert.Equal(canary, map.Pool.Contents(host).ToArray());
        }
    }

    [Fact]
    public void Bad_requests_get_status_3_and_writes_to_a_read_only_medium_status_4_without_touching_anything()
    {
        GuestRequest[] requests =
        [
            new(AssignedDiskController.OperationRead, 0, 0, Buffer), // length 0
            new(AssignedDiskController.OperationRead, 100, 0, Buffer), // not a multiple of 512
            new(AssignedDiskController.OperationRead, (1 << 20) + 512, 0, Buffer), // more than 1 MiB
            new(AssignedDiskController.OperationRead, 1024, 4095, Buffer), // past the end (4,096 sectors)
            new(AssignedDiskController.OperationRead, 512, ulong.MaxValue, Buffer), // sector + length overflows
            new(7, 512, 0, Buffer), // unknown operation
            new(AssignedDiskController.OperationWrite, 512, 0, Buffer), // read-only medium
            new(AssignedDiskController.OperationRead, 512, 4095, Buffer), // the last sector: fine
        ];
        var guest = new AssignedDiskGuest();
        var (vm, disk, _) = Create(guest.Build((Buffer, 4096), requests, null), readOnly: true,
            disk: new MemoryBlockBackend(4096, readOnly: true));
        using var __ = vm;
        using var engine = Engine(Technique.HardwareAssist, MemoryVirtualization.Nested);

        var state = Run(vm, engine);

        byte bad = AssignedDiskController.StatusBadRequest;
        Assert.Equal([bad, bad, bad, bad, bad, bad, AssignedDiskController.StatusWriteProtected, AssignedDiskController.StatusDone],
            Enumerable.Range(0, requests.Length).Select(i => Status(vm, i)).ToArray());
        Assert.Equal((ulong)requests.Length, state.R9);
        // The refused requests moved nothing: the buffer still holds the pattern past the one sector read.
        Assert.Equal(AssignedDiskGuest.PatternBytes(4096).AsSpan(512).ToArray(), vm.Memory.Span(new(Buffer + 512), 4096 - 512).ToArray());
        Assert.True(vm.Memory.Span(new(Buffer), 512).ToArray().All(b => b == 0));
        Assert.True(disk.Contents.ToArray().All(b => b == 0));
        var controller = Controller(vm);
        Assert.Equal((6L, 1L, 512L, 0L), (controller.BadRequests, controller.WriteProtectedRequests, controller.BytesRead, controller.BytesWritten));
        Assert.Equal((1L, 7L), (controller.Statistics.Reads, controller.Statistics.Errors));
        Assert.Equal(1u, (uint)vm.Bus.ReadMemory(AssignedDiskController.BaseAddress + AssignedDiskController.ReadOnlyRegister, 4));
    }

    [Fact]
    public void The_level_interrupt_is_raised_on_completion_when_enabled_and_lowered_when_the_status_is_cleared()
    {
        var guest = new AssignedDiskGuest();
        var code = guest.Build(null, [new(AssignedDiskController.OperationFlush, 0, 0, 0)], null,
            control: AssignedDiskController.ControlEnable | AssignedDiskController.ControlInterruptOnCompletion);
        var (vm, _, _) = Create(code);
        using var __ = vm;
        var line = vm.Interrupts[AssignedDiskController.FirstGsi];
        using var engine = Engine(Technique.Native, MemoryVirtualization.Nested);

        Run(vm, engine);

        Assert.True(line.Asserted);
        Assert.Equal(1, Controller(vm).Statistics.Interrupts);
        ulong status = AssignedDiskController.BaseAddress + AssignedDiskController.InterruptStatusRegister;
        vm.Bus.WriteMemory(status, 4, AssignedDiskController.InterruptDmaFault); // clears nothing set
        Assert.True(line.Asserted);
        vm.Bus.WriteMemory(status, 4, AssignedDiskController.InterruptCompletion);
        Assert.False(line.Asserted);
        Assert.Equal(0UL, vm.Bus.ReadMemory(status, 4));
    }

    [Fact]
    public void Registers_read_as_documented_and_an_unusable_ring_is_not_enabled()
    {
        var (vm, disk, _) = Create(AssignedDiskGuest.PatternBytes(8));
        using var __ = vm;
        var bus = vm.Bus;
        ulong b = AssignedDiskController.BaseAddress;
        Assert.Equal(AssignedDiskController.Identifier, (uint)bus.ReadMemory(b, 4));
        Assert.Equal((byte)'N', (byte)bus.ReadMemory(b, 1));
        Assert.Equal(1UL, bus.ReadMemory(b + AssignedDiskController.VersionRegister, 4));
        Assert.Equal((ulong)disk.SectorCount, bus.ReadMemory(b + AssignedDiskController.CapacityRegister, 8));
        Assert.Equal(0UL, bus.ReadMemory(b + AssignedDiskController.ReadOnlyRegister, 4));
        foreach (var (ringBase, size) in new[] { (0x20_0800UL, 8u), (0x20_0000UL, 0u), (0x20_0000UL, 3u), (0x20_0000UL, 256u) })
        {
            bus.WriteMemory(b + AssignedDiskController.RingBaseRegister, 8, ringBase);
            bus.WriteMemory(b + AssignedDiskController.RingSizeRegister, 4, size);
            bus.WriteMemory(b + AssignedDiskController.ControlRegister, 4, AssignedDiskController.ControlEnable);
            Assert.Equal(0UL, bus.ReadMemory(b + AssignedDiskController.ControlRegister, 4));
        }
        Assert.Equal(4, Controller(vm).ProtocolErrors);
        // The second controller slot is empty: nothing claims its window.
        Assert.Null(vm.Bus.MemoryDevice(b + AssignedDiskController.RegisterStride));
    }

    [Fact]
    public void A_doorbell_far_ahead_of_completed_processes_one_ring_and_counts_an_error()
    {
        var (vm, _, _) = Create(AssignedDiskGuest.PatternBytes(8));
        using var __ = vm;
        var bus = vm.Bus;
        ulong b = AssignedDiskController.BaseAddress;
        // Ring entries of zeros are reads of length 0: bad requests, harmless.
        bus.WriteMemory(b + AssignedDiskController.RingBaseRegister, 8, AssignedDiskGuest.Ring);
        bus.WriteMemory(b + AssignedDiskController.RingSizeRegister, 4, 4);
        bus.WriteMemory(b + AssignedDiskController.ControlRegister, 4, AssignedDiskController.ControlEnable);
        bus.WriteMemory(b + AssignedDiskController.SubmitRegister, 4, 0x8000_0000);
        Assert.Equal(4UL, bus.ReadMemory(b + AssignedDiskController.CompletedRegister, 4));
        Assert.Equal(1, Controller(vm).ProtocolErrors);
    }

    [Fact]
    public void A_third_assigned_disk_is_refused_with_advice()
    {
        var config = new VmConfig
        {
            Kernel = GuestAssembler.Flat("assigned", AssignedDiskGuest.PatternBytes(8)),
            MemoryBytes = MemoryBytes,
            SerialOutput = Stream.Null,
            Disks = [.. Enumerable.Range(0, 3).Select(i => new DiskConfig($"d{i}", DiskInterface.Assigned) { Backend = new MemoryBlockBackend(8) })],
        };
        var e = Assert.Throws<Errors.BadInputException>(() => Vm.Create(config));
        Assert.Contains("2 assigned-controller slots", e.Message);
        Assert.NotNull(e.Advice);
    }

    [Fact]
    public void A_snapshot_keeps_the_registers_and_the_asserted_line_and_the_restored_controller_continues()
    {
        var guest = new AssignedDiskGuest();
        var code = guest.Build(null, [new(AssignedDiskController.OperationFlush, 0, 0, 0), new(AssignedDiskController.OperationFlush, 0, 0, 0)], null,
            control: AssignedDiskController.ControlEnable | AssignedDiskController.ControlInterruptOnCompletion);
        var (vm, _, _) = Create(code);
        using var __ = vm;
        using (var engine = Engine(Technique.Native, MemoryVirtualization.Nested))
        {
            Run(vm, engine);
        }
        byte[] snapshot = Persistence.VmSnapshot.Capture(vm);
        var (restored, disk, _) = Create(code);
        using var ___ = restored;

        Persistence.VmSnapshot.Restore(restored, snapshot);

        ulong b = AssignedDiskController.BaseAddress;
        foreach (int register in new[] { AssignedDiskController.RingBaseRegister, AssignedDiskController.RingSizeRegister,
                     AssignedDiskController.ControlRegister, AssignedDiskController.CompletedRegister, AssignedDiskController.InterruptStatusRegister })
        {
            Assert.Equal(vm.Bus.ReadMemory(b + (ulong)register, 4), restored.Bus.ReadMemory(b + (ulong)register, 4));
        }
        Assert.Equal(2UL, restored.Bus.ReadMemory(b + AssignedDiskController.CompletedRegister, 4));
        Assert.True(restored.Interrupts[AssignedDiskController.FirstGsi].Asserted);
        // The next doorbell processes entry 2 of the latched ring (RAM came with the snapshot: a zeroed entry, a bad
        // request), with the IOMMU programmed anew.
        restored.Bus.WriteMemory(b + AssignedDiskController.SubmitRegister, 4, 3);
        Assert.Equal(3UL, restored.Bus.ReadMemory(b + AssignedDiskController.CompletedRegister, 4));
        Assert.Equal(AssignedDiskController.StatusBadRequest, Status(restored, 2));
        Assert.Equal(0, disk.Flushes);
    }

    [Fact]
    public void An_impossible_controller_section_is_refused()
    {
        var (vm, _, _) = Create(AssignedDiskGuest.PatternBytes(8));
        using var __ = vm;
        var fields = new byte[44];
        BitConverter.TryWriteBytes(fields.AsSpan(12), 0x80u); // CONTROL with a bit the controller does not have
        var reader = Persistence.SnapshotReader.OverFields(fields, "NDM0");
        Assert.Throws<Persistence.SnapshotFormatException>(() => Controller(vm).Restore(reader, 1));
        fields = new byte[44];
        BitConverter.TryWriteBytes(fields.AsSpan(12), AssignedDiskController.ControlEnable);
        BitConverter.TryWriteBytes(fields.AsSpan(40), 3u); // enabled with a ring of 3 entries
        Assert.Throws<Persistence.SnapshotFormatException>(() => Controller(vm).Restore(Persistence.SnapshotReader.OverFields(fields, "NDM0"), 1));
    }

    [Fact]
    public void Shadow_paging_verified_after_every_change_agrees_that_the_registers_are_in_the_assigned_window()
    {
        var guest = new AssignedDiskGuest();
        var (vm, disk, _) = Create(guest.Build((Buffer, 4096), [new(AssignedDiskController.OperationWrite, 4096, 0, Buffer)], null));
        using var __ = vm;
        using var engine = new SimEngine(new SimOptions
        {
            Technique = Technique.HardwareAssist,
            Memory = MemoryVirtualization.Shadow,
            VerifyShadowPaging = true,
        });

        var run = vm.Run(engine);

        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit, run.Outcome.Message);
        Assert.Equal(AssignedDiskGuest.PatternBytes(4096), disk.Contents[..4096].ToArray());
        // The shadow's leaf for the register page points into the assigned window, as the verification expects.
        var machine = run.Machine!;
        Assert.Empty(machine.Monitor!.Shadow!.Verify(machine.Cpu.Mmu.Controls));
        Assert.Equal(guest.RegisterReads + guest.RegisterWrites, vm.Exits.DirectDeviceAccesses);
    }

    [Fact]
    public void A_ring_outside_ram_faults_each_entry_completes_them_and_leaves_the_vm_running()
    {
        var (vm, _, diagnostics) = Create(AssignedDiskGuest.PatternBytes(8));
        using var __ = vm;
        var bus = vm.Bus;
        ulong b = AssignedDiskController.BaseAddress, ring = 0xD000_0000; // in the device hole below 4 GiB
        bus.WriteMemory(b + AssignedDiskController.RingBaseRegister, 8, ring);
        bus.WriteMemory(b + AssignedDiskController.RingSizeRegister, 4, 2);
        bus.WriteMemory(b + AssignedDiskController.ControlRegister, 4, AssignedDiskController.ControlEnable);
        bus.WriteMemory(b + AssignedDiskController.SubmitRegister, 4, 2);

        Assert.Equal(2UL, bus.ReadMemory(b + AssignedDiskController.CompletedRegister, 4));
        Assert.Equal((ulong)(AssignedDiskController.InterruptCompletion | AssignedDiskController.InterruptDmaFault),
            bus.ReadMemory(b + AssignedDiskController.InterruptStatusRegister, 4));
        Assert.Equal(ring + AssignedDiskController.RequestSize, bus.ReadMemory(b + AssignedDiskController.FaultAddressLowRegister, 4));
        Assert.Equal(0UL, bus.ReadMemory(b + AssignedDiskController.FaultAddressHighRegister, 4));
        var faults = Controller(vm).Dma.Faults;
        Assert.Equal([new DmaFault(Controller(vm).Dma.Source, ring, false, DmaFaultReason.ReadNotPermitted),
            new DmaFault(Controller(vm).Dma.Source, ring + AssignedDiskController.RequestSize, false, DmaFaultReason.ReadNotPermitted)], faults.Records);
        Assert.Single(diagnostics.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries)); // one page
    }
}
