using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Devices.Virtio.Block;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using Nestor.Machine.Virtualization;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Virtio;

/// <summary>virtio-blk end to end on the software machine: Iced-assembled ring-0 guests drive it per the spec
/// (<see cref="VirtioGuest"/>) natively and under hardware assist with nested and with shadow paging, by polling and
/// with the interrupt through the I/O APIC, with direct and indirect descriptors, with and without EVENT_IDX.</summary>
public class VirtioBlockGuestTests
{
    private const ushort QueueSize = 16;
    private const long DiskSectors = 2048; // 1 MiB
    private const int Page = 4096;

    public static TheoryData<string> Techniques => new() { "native", "hw-nested", "hw-shadow" };

    public static TheoryData<string, bool, bool, bool> Modes()
    {
        var data = new TheoryData<string, bool, bool, bool>();
        foreach (string technique in new[] { "native", "hw-nested", "hw-shadow" })
        {
            data.Add(technique, false, false, false); // polling, direct, no EVENT_IDX
            data.Add(technique, true, false, false);  // interrupt, direct
            data.Add(technique, true, true, true);    // interrupt, indirect, EVENT_IDX
            data.Add(technique, false, true, true);   // polling, indirect, EVENT_IDX
        }
        return data;
    }

    internal static SimOptions Options(string technique) => technique switch
    {
        "native" => new SimOptions(),
        "hw-shadow" => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow },
        _ => new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
    };

    /// <summary>What the mark port saw at each mark: the VM's MMIO exits and all its exits, the device's notifies and
    /// interrupts, the bytes DMA wrote.</summary>
    internal sealed record Snapshot(long MmioExits, long Exits, long Notifies, long Interrupts, long DmaWritten);

    /// <summary>A port that records the counters each time the guest writes it.</summary>
    internal sealed class MarkPort(Vm vm) : IPortDevice
    {
        public Dictionary<uint, Snapshot> Marks { get; } = [];

        public string Name => "mark";

        public uint Read(ushort port, int size) => 0;

        public void Write(ushort port, int size, uint value)
        {
            var transport = VirtioSlots.Of(vm).First();
            Marks[value] = new Snapshot(vm.Exits.Count(VmExitReason.MmioRead) + vm.Exits.Count(VmExitReason.MmioWrite),
                vm.Exits.TotalExits, transport.Notifies, transport.Interrupts, vm.Dma.BytesWritten);
        }
    }

    internal static (Vm Vm, MemoryBlockBackend Disk, MarkPort Marks) NewVm(byte[] code, MemoryBlockBackend? disk = null)
    {
        disk ??= new MemoryBlockBackend(DiskSectors, serial: "NESTOR-VIRTIO-TEST");
        var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("virtio-blk", code),
            MemoryBytes = 16UL << 20,
            Timeout = TimeSpan.FromSeconds(60),
            Disks = [new DiskConfig("test-disk", DiskInterface.Virtio) { Backend = disk }],
        });
        var marks = new MarkPort(vm);
        vm.Bus.Claim(marks, VirtioGuest.MarkPort, 1);
        return (vm, disk, marks);
    }

    private static ulong Slot(Vm vm, int slot) => vm.Memory.ReadUInt64(new GuestPhysical(VirtioGuest.Results + (ulong)slot * 8));

    private static ulong Features(bool indirect, bool eventIndex) =>
        VirtioFeatures.Version1 | VirtioBlock.FeatureFlush | (indirect ? VirtioFeatures.IndirectDescriptors : 0)
        | (eventIndex ? VirtioFeatures.EventIndex : 0);

    private static void Fill(Span<byte> bytes, int seed)
    {
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(i * 7 + seed + (i >> 8));
        }
    }

    /// <summary>The guest of <see cref="A_guest_driver_reads_writes_flushes_and_gets_the_id"/>, with the MMIO accesses
    /// it makes during the read and during the batch.</summary>
    private static byte[] BatchGuest(bool interrupts, bool indirect, bool eventIndex, out int readMmioAccesses, out int batchMmioAccesses)
    {
        int readMmio = 0, batchMmio = 0;
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, QueueSize);
            g.Prologue(interrupts);
            g.Initialize(Features(indirect, eventIndex));
            // One 4 KiB read of sectors 8-15 into Data.
            var (header, status) = g.BlockHeader(0, VirtioBlock.TypeIn, 8);
            g.MakeAvailable([[new(header, 16, false), new(VirtioGuest.Data, Page, true), new(status, 1, true)]], indirect);
            g.Mark(1);
            int before = g.MmioAccesses;
            g.NotifyAndWait(1);
            readMmio = g.MmioAccesses - before;
            g.Mark(2);
            // The batch: IN sectors 0-7 into Data + 4 KiB, OUT Data + 8 KiB (a pattern the guest writes) to sectors
            // 100-107, FLUSH, GET_ID into Data + 12 KiB.
            a.mov(rdi, VirtioGuest.Data + 2 * Page);
            a.mov(ecx, Page / 8);
            var fill = a.CreateLabel();
            a.Label(ref fill);
            a.mov(__qword_ptr[rdi], rcx);
            a.add(rdi, 8);
            a.dec(ecx);
            a.jnz(fill);
            var (h1, s1) = g.BlockHeader(1, VirtioBlock.TypeIn, 0);
            var (h2, s2) = g.BlockHeader(2, VirtioBlock.TypeOut, 100);
            var (h3, s3) = g.BlockHeader(3, VirtioBlock.TypeFlush, 0);
            var (h4, s4) = g.BlockHeader(4, VirtioBlock.TypeGetId, 0);
            g.MakeAvailable([
                [new(h1, 16, false), new(VirtioGuest.Data + Page, Page / 2, true), new(VirtioGuest.Data + Page + Page / 2, Page / 2, true), new(s1, 1, true)],
                [new(h2, 16, false), new(VirtioGuest.Data + 2 * Page, Page, false), new(s2, 1, true)],
                [new(h3, 16, false), new(s3, 1, true)],
                [new(h4, 16, false), new(VirtioGuest.Data + 3 * Page, VirtioBlock.IdLength, true), new(s4, 1, true)],
            ], indirect);
            g.Mark(3);
            before = g.MmioAccesses;
            g.NotifyAndWait(4);
            batchMmio = g.MmioAccesses - before;
            g.Mark(4);
            g.Finish();
        });
        readMmioAccesses = readMmio;
        batchMmioAccesses = batchMmio;
        return code;
    }

    /// <summary>One 4 KiB read, then a batch of IN, OUT, FLUSH and GET_ID made available together and served by one
    /// notify (and, with interrupts, one interrupt). The guest's MMIO accesses during the read are counted as it
    /// emits them; the VM's MMIO exits, the device's notifies and interrupts must be exactly what it did.</summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public void A_guest_driver_reads_writes_flushes_and_gets_the_id(string technique, bool interrupts, bool indirect, bool eventIndex)
    {
        byte[] code = BatchGuest(interrupts, indirect, eventIndex, out int readMmio, out int batchMmio);
        var disk = new MemoryBlockBackend(DiskSectors, serial: "NESTOR-VIRTIO-TEST");
        Fill(disk.Contents, 3);
        var (vm, _, marks) = NewVm(code, disk);
        using var _vm = vm;
        using var engine = new SimEngine(Options(technique));
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        var transport = VirtioSlots.Of(vm).Single();
        var device = (VirtioBlock)transport.Device;

        // §3.1 as the guest saw it.
        Assert.Equal(VirtioMmioTransport.MagicValue, (uint)Slot(vm, VirtioGuest.Magic));
        Assert.Equal(VirtioMmioTransport.Version, (uint)Slot(vm, VirtioGuest.Version));
        Assert.Equal((uint)VirtioDeviceType.Block, (uint)Slot(vm, VirtioGuest.DeviceId));
        Assert.Equal(transport.OfferedFeatures, Slot(vm, VirtioGuest.FeaturesLow) | Slot(vm, VirtioGuest.FeaturesHigh) << 32);
        Assert.Equal(0xBUL, Slot(vm, VirtioGuest.StatusAfterFeatures));
        Assert.Equal(VirtioBlock.QueueSize, (ushort)Slot(vm, VirtioGuest.QueueSizeMax));
        Assert.Equal(1UL, Slot(vm, VirtioGuest.QueueReady));
        Assert.Equal((ulong)DiskSectors, Slot(vm, VirtioGuest.ConfigLow) | Slot(vm, VirtioGuest.ConfigHigh) << 32);
        Assert.True(Slot(vm, VirtioGuest.FinalStatus) == 0xF,
            $"status 0x{Slot(vm, VirtioGuest.FinalStatus):x}, fault {transport.Queues[0].Fault}, requests {device.Requests}, bad accesses {transport.BadAccesses}");
        Assert.NotEqual(0UL, Slot(vm, VirtioGuest.PollsLeft)); // the used index arrived

        // The data.
        Assert.True(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data), Page).SequenceEqual(disk.Contents.Slice(8 * 512, Page)));
        Assert.True(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data + Page), Page).SequenceEqual(disk.Contents[..Page]));
        Assert.True(disk.Contents.Slice(100 * 512, Page).SequenceEqual(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data + 2 * Page), Page)));
        Assert.Equal("NESTOR-VIRTIO-TEST\0\0", System.Text.Encoding.ASCII.GetString(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data + 3 * Page), VirtioBlock.IdLength)));
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(VirtioBlock.StatusOk, vm.Memory.Span(new GuestPhysical(VirtioGuest.Statuses + (ulong)i), 1)[0]);
        }
        Assert.True(disk.Flushes >= 1);
        Assert.Equal((5L, 2L, 1L, 1L, 1L), (device.Requests, device.Reads, device.Writes, device.Flushes, device.IdRequests));
        Assert.Equal(2L * Page, device.BytesRead);
        Assert.Equal((long)Page, device.BytesWritten);
        Assert.Equal(indirect ? 5 : 0, transport.Queues[0].IndirectChains);

        // The used ring: ids are the heads, lengths the bytes written (data + status).
        ulong usedElement(int i) => VirtioGuest.Used + 4 + 8 * (ulong)i;
        Assert.Equal((uint)Page + 1, vm.Memory.ReadUInt32(new GuestPhysical(usedElement(0) + 4)));
        Assert.Equal((uint)VirtioBlock.IdLength + 1, vm.Memory.ReadUInt32(new GuestPhysical(usedElement(4) + 4)));
        if (eventIndex)
        {
            // avail_event: the device wants a notify once the driver makes the entry after the last one taken available.
            Assert.Equal(5u, vm.Memory.ReadUInt32(new GuestPhysical(VirtioGuest.Used + 4 + 8 * QueueSize)) & 0xFFFF);
        }

        // The costs of one 4 KiB read, computed from what the guest did: one notify, one interrupt when it asked
        // for interrupts (none when it suppressed them), and exactly its MMIO accesses as MMIO exits (the notify,
        // plus the handler's InterruptStatus read and InterruptACK write each time it ran).
        int handlerRuns = interrupts ? 1 : 0;
        var (m1, m2, m3, m4) = (marks.Marks[1], marks.Marks[2], marks.Marks[3], marks.Marks[4]);
        Assert.Equal(1, m2.Notifies - m1.Notifies);
        Assert.Equal(handlerRuns, m2.Interrupts - m1.Interrupts);
        Assert.Equal(readMmio + handlerRuns * VirtioGuest.HandlerMmioAccesses, m2.MmioExits - m1.MmioExits);
        Assert.True(m2.DmaWritten - m1.DmaWritten >= Page);
        // The batch: four requests, still one notify and at most one interrupt.
        Assert.Equal(1, m4.Notifies - m3.Notifies);
        Assert.Equal(handlerRuns, m4.Interrupts - m3.Interrupts);
        Assert.Equal(batchMmio + handlerRuns * VirtioGuest.HandlerMmioAccesses, m4.MmioExits - m3.MmioExits);
        Assert.Equal((ulong)(2 * handlerRuns), Slot(vm, VirtioGuest.HandlerCount));
        if (interrupts)
        {
            Assert.Equal((ulong)VirtioMmioTransport.UsedBufferInterrupt, Slot(vm, VirtioGuest.LastInterruptStatus));
            Assert.Equal(2, transport.UsedBufferNotifications);
        }
        else
        {
            Assert.Equal(0, transport.UsedBufferNotifications);
            Assert.Equal(2, transport.Queues[0].NotificationsSuppressed);
        }
        Assert.Equal(0UL, Slot(vm, VirtioGuest.FinalInterruptStatus));
        Assert.False(transport.Line.Asserted);
        Assert.Equal(0, transport.BadAccesses);
        Assert.Equal(0, transport.Queues[0].TotalFaults);
    }

    /// <summary>The virtio device's state is part of a VM snapshot: the batch guest with interrupts, stopped at every
    /// tenth of its run, saved, restored into a fresh VM (with the disk as the first one's file would hold it then)
    /// and finished, ends with the same results, memory and disk as an uninterrupted run.</summary>
    [Theory]
    [InlineData("native")]
    [InlineData("hw-nested")]
    public void The_virtio_device_survives_a_snapshot_at_any_point(string technique)
    {
        byte[] code = BatchGuest(interrupts: true, indirect: true, eventIndex: true, out _, out _);
        MemoryBlockBackend NewDisk(ReadOnlySpan<byte> contents)
        {
            var disk = new MemoryBlockBackend(DiskSectors, serial: "NESTOR-VIRTIO-TEST");
            contents.CopyTo(disk.Contents);
            return disk;
        }
        var initial = new byte[DiskSectors * 512];
        Fill(initial, 5);
        byte[] ResultsOf(Vm vm) => vm.Memory.Span(new GuestPhysical(VirtioGuest.Results), 0x100).ToArray()
            .Concat(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data), 4 * Page).ToArray()).ToArray();

        byte[] expected, expectedDisk;
        long total;
        {
            var (vm, disk, _) = NewVm(code, NewDisk(initial));
            using var _vm = vm;
            using var engine = new SimEngine(Options(technique));
            var whole = vm.Run(engine).Outcome;
            Assert.True(whole.Kind == VmOutcomeKind.DebugExit && whole.GuestStatus == 0, whole.Message);
            expected = ResultsOf(vm);
            expectedDisk = disk.Contents.ToArray();
            total = vm.Vcpus[0].State.InstructionsRetired;
        }
        for (int tenth = 1; tenth < 10; tenth++)
        {
            long at = total * tenth / 10;
            byte[] snapshot, diskThen;
            {
                var (vm, disk, _) = NewVm(code, NewDisk(initial));
                using var _vm = vm;
                using var engine = new SimEngine(Options(technique) with { StopAtInstruction = at });
                Assert.Equal(VmOutcomeKind.Breakpoint, vm.Run(engine).Outcome.Kind);
                snapshot = Persistence.VmSnapshot.Capture(vm, engine);
                diskThen = disk.Contents.ToArray();
            }
            {
                var (vm, disk, _) = NewVm(code, NewDisk(diskThen));
                using var _vm = vm;
                using var engine = new SimEngine(Options(technique));
                Persistence.VmSnapshot.Restore(vm, snapshot, engine);
                var rest = vm.Run(engine).Outcome;
                Assert.True(rest.Kind == VmOutcomeKind.DebugExit && rest.GuestStatus == 0, $"restored at {at} of {total}: {rest.Message}");
                Assert.True(expected.AsSpan().SequenceEqual(ResultsOf(vm)), $"restored at {at} of {total}: results differ");
                Assert.True(expectedDisk.AsSpan().SequenceEqual(disk.Contents), $"restored at {at} of {total}: the disk differs");
                Assert.Equal(total, vm.Vcpus[0].State.InstructionsRetired);
            }
        }
    }
}
