using System.Text;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Devices.Virtio.Console;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Virtio;

/// <summary>virtio-console driven by a ring-0 guest: both queues set up, a receive buffer filled from the VM's
/// console input, a message transmitted to the VM's console output, an emergency write.</summary>
public class VirtioConsoleGuestTests
{
    private const ushort QueueSize = 16;
    private const ulong TransmitDescriptors = 0x206000, TransmitAvailable = 0x207000, TransmitUsed = 0x208000;
    private const ulong Message = VirtioGuest.Data + 0x1000;

    [Theory]
    [MemberData(nameof(VirtioBlockGuestTests.Techniques), MemberType = typeof(VirtioBlockGuestTests))]
    public void A_guest_receives_input_and_transmits_to_the_console(string technique)
    {
        const string input = "input from the host", text = "hello from virtio-console\n";
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var g = new VirtioGuest(a, slot: 0, QueueSize);
            g.Prologue(withInterrupts: false);
            g.Initialize(VirtioFeatures.Version1 | VirtioConsole.FeatureEmergencyWrite, driverOk: false);
            // The transmitq (queue 1), polled too: VIRTQ_AVAIL_F_NO_INTERRUPT.
            a.mov(rdi, TransmitAvailable);
            a.mov(__qword_ptr[rdi], 1);
            a.mov(rdi, TransmitUsed);
            a.mov(__qword_ptr[rdi], 0);
            g.WriteRegister(0x030, 1);
            g.WriteRegister(0x038, QueueSize);
            g.WriteRegister(0x080, (uint)TransmitDescriptors);
            g.WriteRegister(0x084, 0);
            g.WriteRegister(0x090, (uint)TransmitAvailable);
            g.WriteRegister(0x094, 0);
            g.WriteRegister(0x0A0, (uint)TransmitUsed);
            g.WriteRegister(0x0A4, 0);
            g.WriteRegister(0x044, 1);
            g.WriteRegister(0x070, 0xF);
            // A 64-byte receive buffer on the receiveq (queue 0).
            g.Descriptor(VirtioGuest.Descriptors, 0, VirtioGuest.Data, 64, 2, 0);
            g.MakeAvailableAsIs(0);
            g.Notify();
            // The message, byte by byte, then one descriptor on the transmitq.
            byte[] bytes = Encoding.ASCII.GetBytes(text);
            a.mov(rdi, Message);
            for (int i = 0; i < bytes.Length; i++)
            {
                a.mov(__byte_ptr[rdi + i], bytes[i]);
            }
            g.Descriptor(TransmitDescriptors, 0, Message, (uint)bytes.Length, 0, 0);
            a.mov(rdi, TransmitAvailable);
            a.mov(__word_ptr[rdi + 4], 0);
            a.mov(__word_ptr[rdi + 2], 1);
            g.WriteRegister(0x050, 1);
            g.WriteRegister(0x108, 'Z');                      // emerg_wr
            g.Finish();
        });
        var output = new MemoryStream();
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("virtio-console", code),
            MemoryBytes = 16UL << 20,
            Timeout = TimeSpan.FromSeconds(60),
            SerialOutput = output,
            VirtioConsole = true,
            VirtioConsoleInput = new MemoryStream(Encoding.ASCII.GetBytes(input)),
        });
        using var engine = new SimEngine(VirtioBlockGuestTests.Options(technique));
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        var transport = VirtioSlots.Of(vm).Single();
        var console = (VirtioConsole)transport.Device;
        Assert.Equal(0, transport.Slot); // no virtio disks: the first slot
        Assert.Equal((uint)VirtioDeviceType.Console, (uint)vm.Memory.ReadUInt64(new GuestPhysical(VirtioGuest.Results + VirtioGuest.DeviceId * 8)));
        Assert.Equal(0xFUL, vm.Memory.ReadUInt64(new GuestPhysical(VirtioGuest.Results + VirtioGuest.FinalStatus * 8)));
        Assert.Equal(text + "Z", Encoding.ASCII.GetString(output.ToArray()));
        Assert.Equal(input, Encoding.ASCII.GetString(vm.Memory.Span(new GuestPhysical(VirtioGuest.Data), input.Length)));
        Assert.Equal((uint)input.Length, vm.Memory.ReadUInt32(new GuestPhysical(VirtioGuest.Used + 4 + 4)));
        Assert.Equal(input.Length, console.BytesReceived);
        Assert.Equal(text.Length + 1, console.BytesTransmitted);
        Assert.Equal(0, transport.BadAccesses);
    }

    [Fact]
    public void The_console_takes_the_slot_after_the_virtio_disks()
    {
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("idle", GuestAssembler.Assemble(a => a.hlt())),
            MemoryBytes = 16UL << 20,
            VirtioConsole = true,
            Disks = [new DiskConfig("a", DiskInterface.Virtio) { Backend = new MemoryBlockBackend(8) },
                     new DiskConfig("b", DiskInterface.Virtio) { Backend = new MemoryBlockBackend(8) }],
        });
        var slots = VirtioSlots.Of(vm).Select(t => (t.Slot, t.Device.DeviceType, t.Line.Gsi)).ToArray();
        Assert.Equal([(0, VirtioDeviceType.Block, VirtioSlots.FirstGsi), (1, VirtioDeviceType.Block, VirtioSlots.FirstGsi + 1),
            (2, VirtioDeviceType.Console, VirtioSlots.FirstGsi + 2)], slots);
        // Each is part of the VM's snapshots, after the platform's own parts.
        Assert.Equal(["VIO0", "VIO1", "VIO2"], vm.SnapshotParts.Select(p => p.SectionTag).Where(t => t.StartsWith("VIO", StringComparison.Ordinal)));
    }
}
