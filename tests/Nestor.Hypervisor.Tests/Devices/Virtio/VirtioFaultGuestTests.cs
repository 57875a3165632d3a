using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Devices.Virtio.Block;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Virtio;

/// <summary>A hostile or broken driver: malformed rings end with the device in DEVICE_NEEDS_RESET and a configuration
/// change in InterruptStatus, the VM running on and the device usable again after a reset; a driver without
/// VIRTIO_F_VERSION_1 is refused at FEATURES_OK; and a virtio-blk read that DMAs over code the guest already ran
/// is seen by the CPU, natively and under a VMM.</summary>
public class VirtioFaultGuestTests
{
    private const ushort QueueSize = 16;
    private const int Page = 4096;
    private const ulong Code = 0x220000;

    private static ulong Slot(Vm vm, int slot) => vm.Memory.ReadUInt64(new GuestPhysical(VirtioGuest.Results + (ulong)slot * 8));

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (string technique in new[] { "native", "hw-nested", "hw-shadow" })
        {
            data.Add(technique, "loop");
            data.Add(technique, "outside-ram");
        }
        data.Add("native", "index-too-far");
        data.Add("native", "indirect-in-indirect");
        data.Add("native", "readable-after-writable");
        data.Add("native", "head-out-of-range");
        return data;
    }

    private static VirtqueueFault Expected(string kind) => kind switch
    {
        "loop" => VirtqueueFault.ChainTooLong,
        "outside-ram" => VirtqueueFault.OutsideRam,
        "index-too-far" => VirtqueueFault.AvailableIndexTooFar,
        "indirect-in-indirect" => VirtqueueFault.BadIndirectTable,
        "readable-after-writable" => VirtqueueFault.ReadableAfterWritable,
        _ => VirtqueueFault.DescriptorIndexOutOfRange,
    };

    /// <summary>The malformed chain, one notify, Status and InterruptStatus read; then a reset, the §3.1 sequence again
    /// and a good 4 KiB read.</summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void A_malformed_ring_sets_needs_reset_and_the_device_works_again_after_a_reset(string technique, string kind)
    {
        const ulong OutsideRam = 0x8000_0000; // the VM has 16 MiB
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, QueueSize);
            g.Prologue(withInterrupts: false);
            g.Initialize(VirtioFeatures.Version1 | VirtioFeatures.IndirectDescriptors);
            var (header, status) = g.BlockHeader(0, VirtioBlock.TypeIn, 0);
            ushort head = 0, step = 1;
            switch (kind)
            {
                case "loop":
                    g.Descriptor(VirtioGuest.Descriptors, 0, header, 16, 1, 1);
                    g.Descriptor(VirtioGuest.Descriptors, 1, header, 16, 1, 1); // next is itself
                    break;
                case "outside-ram":
                    g.Descriptor(VirtioGuest.Descriptors, 0, header, 16, 1, 1);
                    g.Descriptor(VirtioGuest.Descriptors, 1, OutsideRam, Page, 2 | 1, 2);
                    g.Descriptor(VirtioGuest.Descriptors, 2, status, 1, 2, 0);
                    break;
                case "index-too-far":
                    g.Descriptor(VirtioGuest.Descriptors, 0, header, 16, 0, 0);
                    step = QueueSize + 1;
                    break;
                case "indirect-in-indirect":
                    g.Descriptor(VirtioGuest.IndirectTables, 0, VirtioGuest.IndirectTables + 0x100, 16, 4, 0);
                    g.Descriptor(VirtioGuest.Descriptors, 0, VirtioGuest.IndirectTables, 16, 4, 0);
                    break;
                case "readable-after-writable":
                    g.Descriptor(VirtioGuest.Descriptors, 0, status, 1, 2 | 1, 1);
                    g.Descriptor(VirtioGuest.Descriptors, 1, header, 16, 0, 0);
                    break;
                default:
                    head = QueueSize;
                    break;
            }
            g.MakeAvailableAsIs(head, step);
            g.Notify();
            g.ReadRegister(0x070, VirtioGuest.First);
            g.ReadRegister(0x060, VirtioGuest.Second);
            // Recovery (§2.1.2): the driver resets the device and initializes it again.
            g.Initialize(VirtioFeatures.Version1);
            var (h, s) = g.BlockHeader(1, VirtioBlock.TypeIn, 0);
            g.MakeAvailable([[new(h, 16, false), new(VirtioGuest.Data, Page, true), new(s, 1, true)]], indirect: false);
            g.NotifyAndWait(1);
            g.Finish();
        });
        var disk = new MemoryBlockBackend(64);
        disk.Contents[..Page].Fill(0x5A);
        var (vm, _, _) = VirtioBlockGuestTests.NewVm(code, disk);
        using var _vm = vm;
        using var engine = new SimEngine(VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        var transport = VirtioSlots.Of(vm).Single();
        Assert.True((Slot(vm, VirtioGuest.First) & (ulong)VirtioDeviceStatus.DeviceNeedsReset) != 0, $"status 0x{Slot(vm, VirtioGuest.First):x}");
        Assert.Equal((ulong)VirtioMmioTransport.ConfigurationChangeInterrupt, Slot(vm, VirtioGuest.Second));
        Assert.Equal(1, transport.NeedsResetCount);
        Assert.Equal(1, transport.Queues[0].Faults(Expected(kind)));
        Assert.Equal(1L, ((VirtioBlock)transport.Device).Reads); // the good one
        Assert.Equal(0xFUL, Slot(vm, VirtioGuest.FinalStatus));
        Assert.Null(transport.Queues[0].Fault);
        Assert.True(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data), Page).SequenceEqual(disk.Contents[..Page]));
        if (kind == "outside-ram")
        {
            // Nothing of the bad chain was written: only the good read's data, status byte, used element and used index.
            Assert.Equal(Page + 1 + 8 + 2, vm.Dma.BytesWritten);
        }
    }

    private sealed class VmmPort(Action action) : Nestor.Hypervisor.Devices.IPortDevice
    {
        public string Name => "vmm-test";
        public uint Read(ushort port, int size) => 0;
        public void Write(ushort port, int size, uint value) => action();
    }

    /// <summary>Under a VMM, a virtio read into a guest page whose frame the VMM shares copy-on-write with another
    /// page: the engine's DMA hook gives the written page its private copy first (as a guest write would), so the
    /// guest sees the disk's bytes there while the other sharer keeps the old ones.</summary>
    [Theory]
    [InlineData("hw-nested")]
    [InlineData("hw-shadow")]
    public void A_virtio_read_into_a_shared_frame_gets_a_private_copy(string technique)
    {
        const ulong PageA = VirtioGuest.Data, PageB = 0x230000;
        const ushort SharePort = 0xE1;
        const int OtherAfter = VirtioGuest.PollsLeft + 1;
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, QueueSize);
            g.Prologue(withInterrupts: false);
            g.Initialize(VirtioFeatures.Version1 | VirtioBlock.FeatureFlush);
            a.mov(r8, PageA);
            a.mov(r9, PageB);
            a.mov(rax, __qword_ptr[r8]);
            a.mov(rax, __qword_ptr[r9]);
            a.mov(dx, SharePort);
            a.@out(dx, al);                                     // the VMM shares A's frame with B
            a.mov(rax, __qword_ptr[r9]);
            a.mov(__qword_ptr[r15 + VirtioGuest.First * 8], rax);
            a.mov(rax, __qword_ptr[r8]);
            var (h, s) = g.BlockHeader(0, VirtioBlock.TypeIn, 0);
            g.MakeAvailable([[new(h, 16, false), new(PageA, Page, true), new(s, 1, true)]], indirect: false);
            g.NotifyAndWait(1);
            a.mov(r8, PageA);
            a.mov(r9, PageB);
            a.mov(rax, __qword_ptr[r8]);
            a.mov(__qword_ptr[r15 + VirtioGuest.Second * 8], rax);
            a.mov(rax, __qword_ptr[r9]);
            a.mov(__qword_ptr[r15 + OtherAfter * 8], rax);
            g.Finish();
        });
        var disk = new MemoryBlockBackend(64);
        disk.Contents[..Page].Fill(0x5A);
        var (vm, _, _) = VirtioBlockGuestTests.NewVm(code, disk);
        using var _vm = vm;
        vm.Memory.Span(new GuestPhysical(PageA), Page).Fill(0x11);
        vm.Memory.Span(new GuestPhysical(PageB), Page).Fill(0x22);
        Nestor.Hypervisor.Paging.GuestPhysicalMap? map = null;
        vm.Bus.Claim(new VmmPort(() =>
        {
            map = vm.Host.PhysicalMapOf(vm)!;
            map.Share(new GuestPhysical(PageA), map, new GuestPhysical(PageB));
        }), SharePort, 1);
        using var engine = new SimEngine(VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        ulong old = vm.Memory.ReadUInt64(new GuestPhysical(PageB)); // B as the VMM reads it, through the P2M: A's bytes, shared
        Assert.Equal(0x1111_1111_1111_1111UL, Slot(vm, VirtioGuest.First));    // B shares A's frame
        Assert.Equal(0x5A5A_5A5A_5A5A_5A5AUL, Slot(vm, VirtioGuest.Second));   // A got the disk's bytes
        Assert.Equal(0x1111_1111_1111_1111UL, Slot(vm, OtherAfter));           // B kept the old ones
        Assert.Equal(old, Slot(vm, OtherAfter));
        Assert.NotNull(map);
        Assert.Equal(1, map.CopyOnWriteBreaks);
    }

    [Fact]
    public void A_driver_without_version_1_is_refused_at_features_ok()
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, QueueSize);
            g.Prologue(withInterrupts: false);
            g.Initialize(VirtioBlock.FeatureFlush); // a legacy driver's choice
            g.Finish();
        });
        var (vm, _, _) = VirtioBlockGuestTests.NewVm(code);
        using var _vm = vm;
        using var engine = new SimEngine();
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit, run.Outcome.Message);
        var transport = VirtioSlots.Of(vm).Single();
        Assert.Equal((ulong)(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver), Slot(vm, VirtioGuest.StatusAfterFeatures));
        Assert.Equal(0UL, Slot(vm, VirtioGuest.FinalStatus) & (ulong)(VirtioDeviceStatus.FeaturesOk | VirtioDeviceStatus.DriverOk));
        Assert.True(transport.FeaturesRefused >= 1);
        Assert.Equal(0UL, transport.NegotiatedFeatures);
    }

    /// <summary>The guest calls a function (it returns 1), reads a sector over it with virtio-blk (the disk holds a
    /// function returning 2) and calls it again: it must run the new code, so the CPU dropped what it had decoded
    /// from the page the device wrote.</summary>
    [Theory]
    [MemberData(nameof(VirtioBlockGuestTests.Techniques), MemberType = typeof(VirtioBlockGuestTests))]
    public void Code_a_virtio_read_dmas_over_runs_as_the_new_code(string technique)
    {
        byte[] Function(int value) => GuestAssembler.Assemble(f =>
        {
            f.mov(eax, value);
            f.ret();
        }, Code);
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, QueueSize);
            g.Prologue(withInterrupts: false);
            g.Initialize(VirtioFeatures.Version1 | VirtioBlock.FeatureFlush);
            a.mov(rax, Code);
            a.call(rax);
            a.mov(__qword_ptr[r15 + VirtioGuest.First * 8], rax);
            var (h, s) = g.BlockHeader(0, VirtioBlock.TypeIn, 0);
            g.MakeAvailable([[new(h, 16, false), new(Code, 512, true), new(s, 1, true)]], indirect: false);
            g.NotifyAndWait(1);
            a.mov(rax, Code);
            a.call(rax);
            a.mov(__qword_ptr[r15 + VirtioGuest.Second * 8], rax);
            g.Finish();
        });
        var disk = new MemoryBlockBackend(64);
        Function(2).CopyTo(disk.Contents);
        var (vm, _, _) = VirtioBlockGuestTests.NewVm(code, disk);
        using var _vm = vm;
        Function(1).CopyTo(vm.Memory.Span(new GuestPhysical(Code), 16));
        using var engine = new SimEngine(VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        Assert.Equal(1UL, Slot(vm, VirtioGuest.First));
        Assert.Equal(2UL, Slot(vm, VirtioGuest.Second));
        Assert.True(run.Machine!.Cpu.Counters.DecodeCacheInvalidations >= 1);
        Assert.Null(vm.Dma.BeforeWrite); // unhooked when the run ended
        Assert.Null(vm.Dma.Written);
    }
}
