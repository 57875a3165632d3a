using Nestor.Host;

namespace Nestor.Kvm.Tests;

public class KvmBindingTests
{
    [Fact]
    public void Missing_device_is_reported_with_what_to_do()
    {
        var e = Assert.Throws<KvmUnavailableException>(() => KvmSystem.Open("/dev/no-such-kvm"));
        Assert.Contains("does not exist", e.Message);
        Assert.Contains("kvm_intel or kvm_amd", e.Message);
        Assert.Equal(2, e.ErrorNumber);
    }

    [Fact]
    public void A_file_that_is_not_kvm_is_refused()
    {
        var e = Assert.ThrowsAny<KvmException>(() => KvmSystem.Open("/dev/null"));
        Assert.Contains("KVM", e.Message);
    }

    [Fact]
    public void System_reports_the_stable_api_and_capabilities()
    {
        RequiresKvm.Check();
        using var kvm = KvmSystem.Open();
        Assert.Equal(12, kvm.ApiVersion);
        Assert.True(kvm.VcpuMmapSize >= 4096);
        Assert.True(kvm.CheckCapability(KvmCapability.UserMemory) > 0);
        var cpuid = kvm.GetSupportedCpuid();
        Assert.Contains(cpuid, e => e.Function == 0);
        Assert.Contains(kvm.GetMsrIndexList(), m => m == 0xC000_0081); // STAR (EFER travels in the special registers)
    }

    /// <summary>A real-mode guest (the vCPU's reset state) that does <c>out 0x10, al</c> and <c>hlt</c>: the
    /// binding must deliver the port I/O exit with its data, then the HLT exit, and read back the registers.</summary>
    [Fact]
    public void A_vcpu_runs_real_mode_code_and_reports_io_and_halt_exits()
    {
        RequiresKvm.Check();
        using var machine = new RealModeMachine([0xB0, 0x2A, 0xE6, 0x10, 0xF4]); // mov al, 42; out 0x10, al; hlt
        var vcpu = machine.Vcpu;
        Assert.Equal(KvmExitReason.Io, vcpu.Run());
        var io = vcpu.IoExit;
        Assert.True(io.IsOut);
        Assert.Equal(0x10, io.Port);
        Assert.Equal(1, io.Size);
        Assert.Equal(42, io.Data[0]);
        Assert.Equal(KvmExitReason.Halt, vcpu.Run());
        Assert.Equal(0x1005UL, vcpu.GetRegisters().Rip);
        using var statistics = vcpu.OpenStatistics();
        var exits = statistics.Read().Single(s => s.Name == "exits");
        Assert.True(exits.Value >= 2, $"KVM counted {exits.Value} exits, expected at least the 2 seen");
    }

    [Fact]
    public void A_kick_from_another_thread_interrupts_a_spinning_guest()
    {
        RequiresKvm.Check();
        using var machine = new RealModeMachine([0xEB, 0xFE]); // jmp $
        var vcpu = machine.Vcpu;
        KvmExitReason reason = KvmExitReason.Unknown;
        var thread = new Thread(() =>
        {
            vcpu.BindToCurrentThread();
            reason = vcpu.Run();
        });
        thread.Start();
        Thread.Sleep(200);
        vcpu.Kick();
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)), "the vCPU thread did not leave KVM_RUN after a kick");
        Assert.Equal(KvmExitReason.Interrupted, reason);
    }

    /// <summary>A VM with 64 KiB of RAM and one vCPU in its reset (real-mode) state, about to run
    /// <paramref name="code"/> at 0x1000.</summary>
    private sealed class RealModeMachine : IDisposable
    {
        private readonly KvmSystem kvm = KvmSystem.Open();
        private readonly KvmVm vm;
        private readonly HostMemory memory = HostMemory.MapAnonymous(0x10000);

        public RealModeMachine(byte[] code)
        {
            vm = kvm.CreateVm();
            vm.SetTssAddress(0xFFFB_D000);
            vm.SetUserMemoryRegion(0, 0, memory.Length, memory.Address);
            code.CopyTo(memory.Slice(0x1000, code.Length));
            Vcpu = vm.CreateVcpu(0);
            var sregs = Vcpu.GetSpecialRegisters();
            sregs.Cs.Base = 0;
            sregs.Cs.Selector = 0;
            Vcpu.SetSpecialRegisters(sregs);
            Vcpu.SetRegisters(new KvmRegisters { Rip = 0x1000, Rflags = 2 });
        }

        public KvmVcpu Vcpu { get; }

        public void Dispose()
        {
            vm.Dispose();
            memory.Dispose();
            kvm.Dispose();
        }
    }
}
