using Nestor.Host;

namespace Nestor.Kvm.Tests;

/// <summary>KVM's dirty-page log (api.rst §4.8, §4.117) on a real VM: a guest's writes show up as exactly the pages
/// it wrote, a read clears the log (or, with manual protect, KVM_CLEAR_DIRTY_LOG does).</summary>
public class DirtyLogTests
{
    // Real-mode code at 0x1000 (ring 0, the vCPU's reset state): writes one byte in pages 3, 7 and 12 and the last
    // byte of page 15, then `out 0x10, al`; then writes pages 9 and 3 again and halts. The code page is fetched,
    // never written.
    private static readonly byte[] Code =
    [
        0xB0, 0x11,             // mov al, 0x11
        0xA2, 0x00, 0x30,       // mov [0x3000], al
        0xA2, 0x34, 0x70,       // mov [0x7034], al
        0xA2, 0x00, 0xC0,       // mov [0xC000], al
        0xA2, 0xFF, 0xFF,       // mov [0xFFFF], al
        0xE6, 0x10,             // out 0x10, al
        0xA2, 0x00, 0x90,       // mov [0x9000], al
        0xA2, 0x01, 0x30,       // mov [0x3001], al
        0xF4,                   // hlt
    ];

    [Fact]
    public void The_log_holds_exactly_the_pages_the_guest_wrote_and_a_read_clears_it()
    {
        RequiresKvm.Check();
        using var machine = new LoggedMachine();
        Assert.Equal(KvmExitReason.Io, machine.Vcpu.Run());
        Assert.Equal([3, 7, 12, 15], machine.DirtyPages());
        Assert.Empty(machine.DirtyPages()); // the read cleared it, and nothing ran since
        Assert.Equal(KvmExitReason.Halt, machine.Vcpu.Run());
        Assert.Equal([3, 9], machine.DirtyPages()); // page 3 again: the read write-protected it again
        Assert.Empty(machine.DirtyPages());
    }

    [Fact]
    public void With_manual_protect_a_read_leaves_the_log_until_it_is_cleared()
    {
        RequiresKvm.Check();
        using var machine = new LoggedMachine();
        if (!machine.Vm.DirtyLogSupport.ManualProtect)
        {
            Assert.Fail($"this test needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, which this host's KVM does not offer ({machine.Vm.DirtyLogSupport})");
        }
        machine.Vm.EnableManualDirtyLogProtect();
        Assert.Equal(KvmExitReason.Io, machine.Vcpu.Run());
        Assert.Equal([3, 7, 12, 15], machine.DirtyPages());
        var bits = machine.Vm.GetDirtyLog(0).ToArray();
        Assert.Equal([3, 7, 12, 15], Pages(bits)); // still there: reading does not clear under manual protect
        machine.Vm.ClearDirtyLog(0, bits);
        Assert.Empty(machine.DirtyPages());
        Assert.Equal(KvmExitReason.Halt, machine.Vcpu.Run());
        Assert.Equal([3, 9], machine.DirtyPages());
    }

    [Fact]
    public void Reading_the_log_of_a_slot_that_does_not_log_is_refused_with_what_to_do()
    {
        RequiresKvm.Check();
        using var kvm = KvmSystem.Open();
        using var vm = kvm.CreateVm();
        using var memory = HostMemory.MapAnonymous(0x10000);
        vm.SetUserMemoryRegion(0, 0, memory.Length, memory.Address);
        var e = Assert.Throws<InvalidOperationException>(() => vm.GetDirtyLog(0));
        Assert.Contains("logDirtyPages", e.Message);
        Assert.Throws<InvalidOperationException>(() => vm.GetDirtyLog(5));
    }

    [Fact]
    public void Reading_the_log_allocates_nothing()
    {
        RequiresKvm.Check();
        using var machine = new LoggedMachine();
        machine.Vm.GetDirtyLog(0);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            machine.Vm.GetDirtyLog(0);
        }
        Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());
    }

    [Fact]
    public void The_probe_says_what_this_kvm_offers()
    {
        RequiresKvm.Check();
        using var kvm = KvmSystem.Open();
        using var vm = kvm.CreateVm();
        var support = vm.DirtyLogSupport;
        Assert.Equal(support.ManualProtectFlags, vm.CheckCapability(KvmCapability.ManualDirtyLogProtect2));
        Assert.Equal(support.RingBytes, vm.CheckCapability(KvmCapability.DirtyLogRing));
        Assert.Contains("KVM_CAP_DIRTY_LOG_RING: " + (support.RingBytes == 0 ? "no" : "yes"), support.ToString());
    }

    private static List<int> Pages(ReadOnlySpan<ulong> bits)
    {
        var pages = new List<int>();
        for (int word = 0; word < bits.Length; word++)
        {
            for (int bit = 0; bit < 64; bit++)
            {
                if ((bits[word] & (1UL << bit)) != 0)
                {
                    pages.Add(word * 64 + bit);
                }
            }
        }
        return pages;
    }

    /// <summary>64 KiB of RAM in one logged slot and a real-mode vCPU about to run <see cref="Code"/> at 0x1000.</summary>
    private sealed class LoggedMachine : IDisposable
    {
        private readonly KvmSystem kvm = KvmSystem.Open();
        private readonly HostMemory memory = HostMemory.MapAnonymous(0x10000);

        public LoggedMachine()
        {
            Vm = kvm.CreateVm();
            Vm.SetTssAddress(0xFFFB_D000);
            Code.CopyTo(memory.Slice(0x1000, Code.Length)); // before logging: the VMM's own writes are not the guest's
            Vm.SetUserMemoryRegion(0, 0, memory.Length, memory.Address, logDirtyPages: true);
            Vcpu = Vm.CreateVcpu(0);
            var sregs = Vcpu.GetSpecialRegisters();
            sregs.Cs.Base = 0;
            sregs.Cs.Selector = 0;
            sregs.Ds.Base = 0;
            sregs.Ds.Selector = 0;
            Vcpu.SetSpecialRegisters(sregs);
            Vcpu.SetRegisters(new KvmRegisters { Rip = 0x1000, Rflags = 2 });
        }

        public KvmVm Vm { get; }

        public KvmVcpu Vcpu { get; }

        public List<int> DirtyPages() => Pages(Vm.GetDirtyLog(0));

        public void Dispose()
        {
            Vm.Dispose();
            memory.Dispose();
            kvm.Dispose();
        }
    }
}
