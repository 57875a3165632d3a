using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Devices.Virtio;
using Nestor.Hypervisor.Devices.Virtio.Block;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Integration.Tests;

/// <summary>virtio on KVM and through the real <c>nestor</c> command. On KVM the same device models serve the guest
/// through <c>KVM_EXIT_MMIO</c>; this host's nested KVM delivers no guest interrupts, so the driver polls the used
/// ring (the interrupt path is tested on sim, tests/Nestor.Hypervisor.Tests/Devices/Virtio).</summary>
public class VirtioTests
{
    private const ulong Descriptors = 0x200000, Available = 0x201000, Used = 0x202000, Header = 0x204000,
        Status = 0x205000, Data = 0x210000, Results = 0x191000;
    private const ushort QueueSize = 16;

    /// <summary>A polling ring-0 virtio-blk driver in straight-line code (a poll loop, no interrupts): §3.1, one
    /// queue, one 4 KiB IN of sectors 8-15 into Data, the status and the used index into the results, then the debug
    /// exit. It counts its MMIO accesses into <paramref name="mmioAccesses"/>.</summary>
    private static byte[] PollingReader(out int mmioAccesses)
    {
        int count = 0;
        byte[] code = GuestAssembler.Assemble(a =>
        {
            void Write(int offset, uint value)
            {
                a.mov(__dword_ptr[r12 + offset], value);
                count++;
            }
            void Read(int offset, int slot)
            {
                a.mov(eax, __dword_ptr[r12 + offset]);
                a.mov(__qword_ptr[r15 + slot * 8], rax);
                count++;
            }
            void Descriptor(int index, ulong address, uint length, ushort flags, ushort next)
            {
                a.mov(rdi, Descriptors + 16 * (ulong)index);
                a.mov(rax, address);
                a.mov(__qword_ptr[rdi], rax);
                a.mov(__dword_ptr[rdi + 8], length);
                a.mov(__word_ptr[rdi + 12], flags);
                a.mov(__word_ptr[rdi + 14], next);
            }
            a.mov(r15, Results);
            a.mov(r12, VirtioSlots.BaseOf(0));
            Read(0x000, 0);
            Read(0x008, 1);
            Write(0x070, 0);
            Write(0x070, 1);
            Write(0x070, 3);
            Write(0x024, 1);
            Write(0x020, 1);                                    // VIRTIO_F_VERSION_1 (bit 32)
            Write(0x070, 0xB);
            Read(0x070, 2);
            a.mov(rdi, Available);
            a.mov(__qword_ptr[rdi], 1);                         // VIRTQ_AVAIL_F_NO_INTERRUPT, idx 0
            a.mov(rdi, Used);
            a.mov(__qword_ptr[rdi], 0);
            Write(0x030, 0);
            Write(0x038, QueueSize);
            Write(0x080, (uint)Descriptors);
            Write(0x084, 0);
            Write(0x090, (uint)Available);
            Write(0x094, 0);
            Write(0x0A0, (uint)Used);
            Write(0x0A4, 0);
            Write(0x044, 1);
            Write(0x070, 0xF);
            a.mov(rdi, Header);
            a.mov(__dword_ptr[rdi], VirtioBlock.TypeIn);
            a.mov(__dword_ptr[rdi + 4], 0);
            a.mov(__qword_ptr[rdi + 8], 8);
            a.mov(rdi, Status);
            a.mov(__byte_ptr[rdi], 0xFF);
            Descriptor(0, Header, 16, 1, 1);
            Descriptor(1, Data, 4096, 2 | 1, 2);
            Descriptor(2, Status, 1, 2, 0);
            a.mov(rdi, Available);
            a.mov(__word_ptr[rdi + 4], 0);
            a.mov(__word_ptr[rdi + 2], 1);
            Write(0x050, 0);
            var poll = a.CreateLabel();
            var done = a.CreateLabel();
            a.mov(ecx, 100_000);
            a.mov(rdi, Used);
            a.Label(ref poll);
            a.movzx(eax, __word_ptr[rdi + 2]);
            a.cmp(eax, 1);
            a.je(done);
            a.dec(ecx);
            a.jnz(poll);
            a.Label(ref done);
            a.mov(__qword_ptr[r15 + 3 * 8], rax);
            Read(0x070, 4);
            a.mov(dx, 0xF4);
            a.mov(eax, 0);
            a.@out(dx, eax);
            a.hlt();
        });
        mmioAccesses = count;
        return code;
    }

    [Fact]
    public void A_polling_driver_reads_a_virtio_blk_disk_on_kvm()
    {
        NestorProcess.RequireKvm();
        byte[] code = PollingReader(out int mmioAccesses);
        var disk = new MemoryBlockBackend(64);
        for (int i = 0; i < disk.Contents.Length; i++)
        {
            disk.Contents[i] = (byte)(i * 13 + 1);
        }
        using var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Kvm,
            Kernel = GuestAssembler.Flat("virtio-kvm", code),
            MemoryBytes = 16UL << 20,
            Timeout = TimeSpan.FromSeconds(60),
            Disks = [new DiskConfig("kvm-disk", DiskInterface.Virtio) { Backend = disk }],
        });
        var run = vm.Run(new KvmEngine());
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        ulong Slot(int i) => vm.Memory.ReadUInt64(new GuestPhysical(Results + (ulong)i * 8));
        Assert.Equal(VirtioMmioTransport.MagicValue, (uint)Slot(0));
        Assert.Equal((uint)VirtioDeviceType.Block, (uint)Slot(1));
        Assert.Equal(0xBUL, Slot(2));
        Assert.Equal(1UL, Slot(3));
        Assert.Equal(0xFUL, Slot(4));
        Assert.Equal(VirtioBlock.StatusOk, vm.Memory.Span(new GuestPhysical(Status), 1)[0]);
        Assert.True(vm.Memory.Span(new GuestPhysical(Data), 4096).SequenceEqual(disk.Contents.Slice(8 * 512, 4096)));
        var transport = VirtioSlots.Of(vm).Single();
        Assert.Equal(1, transport.Notifies);
        Assert.Equal(0, transport.Interrupts); // suppressed by the driver's flag
        // Every MMIO access was one KVM_EXIT_MMIO.
        Assert.Equal(mmioAccesses, vm.Exits.Count(VmExitReason.MmioRead) + vm.Exits.Count(VmExitReason.MmioWrite));
    }

    [Fact]
    public void The_same_polling_driver_gets_the_same_bytes_on_sim()
    {
        byte[] code = PollingReader(out int mmioAccesses);
        var disk = new MemoryBlockBackend(64);
        for (int i = 0; i < disk.Contents.Length; i++)
        {
            disk.Contents[i] = (byte)(i * 13 + 1);
        }
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("virtio-sim", code),
            MemoryBytes = 16UL << 20,
            Timeout = TimeSpan.FromSeconds(60),
            Disks = [new DiskConfig("sim-disk", DiskInterface.Virtio) { Backend = disk }],
        });
        using var engine = new SimEngine();
        var run = vm.Run(engine);
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit && run.Outcome.GuestStatus == 0, run.Outcome.Message);
        Assert.True(vm.Memory.Span(new GuestPhysical(Data), 4096).SequenceEqual(disk.Contents.Slice(8 * 512, 4096)));
        Assert.Equal(mmioAccesses, vm.Exits.Count(VmExitReason.MmioRead) + vm.Exits.Count(VmExitReason.MmioWrite));
    }

    /// <summary><c>nestor run --virtio-console</c>: a guest writes a line through the console's emergency write
    /// (§5.3.4, usable before any queue is set up) and it appears on the command's standard output.</summary>
    [Fact]
    public void Nestor_run_with_virtio_console_prints_what_the_guest_writes_to_it()
    {
        const string text = "virtio-console says hello\n";
        string guest = NestorProcess.FlatGuest(a =>
        {
            a.mov(rdi, VirtioSlots.BaseOf(0) + 0x108);
            foreach (char c in text)
            {
                a.mov(__dword_ptr[rdi], c);
            }
            a.mov(dx, 0xF4);
            a.mov(eax, 0);
            a.@out(dx, eax);
            a.hlt();
        });
        var result = NestorProcess.Run("run", guest, "--flat", "--virtio-console", "--timeout", "30");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains(text, result.Stdout);
        var without = NestorProcess.Run("run", guest, "--flat", "--timeout", "30");
        Assert.DoesNotContain(text, without.Stdout);
    }
}
