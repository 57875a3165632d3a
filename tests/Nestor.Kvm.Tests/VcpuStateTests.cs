using System.Buffers.Binary;
using System.Diagnostics;

namespace Nestor.Kvm.Tests;

/// <summary>The vCPU-state ioctls a snapshot uses beyond the registers (issue 16): their structures have the kernel's
/// sizes, and each value set is the value read back, on a second vCPU of a second VM as a restore does it. This host's
/// nested KVM delivers no interrupts reliably, so what is checked is the state's transfer, not its effect on a
/// running guest: an NMI mask and an interrupt shadow carried over, a TPR in the in-kernel LAPIC, XMM0 in the XSAVE
/// area, XCR0, an MSR, and the kvmclock continuing from the value set.</summary>
public class VcpuStateTests
{
    [Fact]
    public void The_state_structures_match_the_installed_kernel_headers()
    {
        string dir = Directory.CreateTempSubdirectory("nestor-kvm-state-layout").FullName;
        try
        {
            string source = Path.Combine(dir, "sizes.c");
            File.WriteAllText(source, """
                #include <linux/kvm.h>
                #include <stdio.h>
                int main(void) {
                  printf("%zu %zu %zu %zu %zu\n", sizeof(struct kvm_xsave), sizeof(struct kvm_lapic_state),
                    sizeof(struct kvm_vcpu_events), sizeof(struct kvm_clock_data), sizeof(struct kvm_xcrs));
                  return 0;
                }
                """);
            Run("gcc", "-o", Path.Combine(dir, "sizes"), source);
            Assert.Equal($"{KvmVcpu.XsaveBytes} {KvmVcpu.LapicBytes} {KvmVcpu.VcpuEventsBytes} {KvmVcpu.ClockBytes} {KvmVcpu.XcrsBytes}",
                Run(Path.Combine(dir, "sizes")).Trim());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Xsave_xcrs_msrs_and_events_read_from_one_vcpu_are_what_a_vcpu_of_another_vm_reads_once_they_are_set()
    {
        RequiresKvm.Check();
        using var kvm = KvmSystem.Open();
        Assert.True(kvm.CheckCapability(KvmCapability.Xsave) > 0, "this host's KVM has no KVM_CAP_XSAVE");
        using var vmA = kvm.CreateVm();
        using var a = vmA.CreateVcpu(0);
        using var vmB = kvm.CreateVm();
        using var b = vmB.CreateVcpu(0);

        // XMM0 is at byte 160 of the legacy region (SDM Vol. 1 §10.5.1, Table 10-2).
        byte[] area = a.GetXsave();
        for (int i = 0; i < 16; i++)
        {
            area[160 + i] = (byte)(0xA0 + i);
        }
        area[512] |= 0x2; // XSTATE_BV.SSE: the SSE component is not in its initial state (SDM Vol. 1 §13.4.2, §13.8)
        a.SetXsave(area);
        byte[] saved = a.GetXsave();
        Assert.Equal(area.AsSpan(160, 16).ToArray(), saved.AsSpan(160, 16).ToArray());
        b.SetXsave(saved);
        Assert.Equal(saved.AsSpan(160, 16).ToArray(), b.GetXsave().AsSpan(160, 16).ToArray());

        if (kvm.CheckCapability(KvmCapability.ExtendedControlRegisters) > 0)
        {
            byte[] xcrs = a.GetXcrs();
            Assert.True(BinaryPrimitives.ReadUInt32LittleEndian(xcrs) >= 1, "KVM_GET_XCRS gave no XCR");
            b.SetXcrs(xcrs);
            Assert.Equal(xcrs.AsSpan(0, 24).ToArray(), b.GetXcrs().AsSpan(0, 24).ToArray()); // count, flags, XCR0
        }

        // IA32_SYSENTER_ESP (0x175): writable, and held by KVM for the guest.
        Assert.Equal(1, a.SetMsrs([new KvmMsrEntry(0x175, 0xFFFF_8000_1234_5000)]));
        Span<KvmMsrEntry> msr = [new KvmMsrEntry(0x175, 0)];
        Assert.Equal(1, a.GetMsrs(msr));
        Assert.Equal(1, b.SetMsrs(msr));
        Span<KvmMsrEntry> back = [new KvmMsrEntry(0x175, 0)];
        Assert.Equal(1, b.GetMsrs(back));
        Assert.Equal(0xFFFF_8000_1234_5000UL, back[0].Data);

        Assert.True(kvm.CheckCapability(KvmCapability.VcpuEvents) > 0, "this host's KVM has no KVM_CAP_VCPU_EVENTS");
        var events = a.GetVcpuEvents();
        Assert.False(events.NmiMasked);
        events.NmiMasked = true;
        events.InterruptShadow = 2; // KVM_X86_SHADOW_INT_STI
        events.Flags |= KvmVcpuEvents.ValidShadow;
        a.SetVcpuEvents(events);
        var read = a.GetVcpuEvents();
        Assert.True(read.NmiMasked);
        Assert.Equal(2, read.InterruptShadow);
        b.SetVcpuEvents(read);
        var carried = b.GetVcpuEvents();
        Assert.True(carried.NmiMasked);
        Assert.Equal(2, carried.InterruptShadow);
        Assert.False(carried.ExceptionInjected || carried.InterruptInjected || carried.NmiPending);
    }

    [Fact]
    public void The_in_kernel_lapic_and_the_kvmclock_carry_over_to_another_vm()
    {
        RequiresKvm.Check();
        using var kvm = KvmSystem.Open();
        using var vmA = kvm.CreateVm();
        vmA.CreateIrqChip();
        using var a = vmA.CreateVcpu(0);
        using var vmB = kvm.CreateVm();
        vmB.CreateIrqChip();
        using var b = vmB.CreateVcpu(0);

        // The task-priority register at offset 0x80 of the APIC page (SDM Vol. 3A §11.8.3.1, Table 11-1).
        byte[] lapic = a.GetLapic();
        lapic[0x80] = 0x50;
        a.SetLapic(lapic);
        byte[] saved = a.GetLapic();
        Assert.Equal(0x50, saved[0x80]);
        Assert.NotEqual(0x50, b.GetLapic()[0x80]); // B starts with its own TPR, not A's
        b.SetLapic(saved);
        Assert.Equal(0x50, b.GetLapic()[0x80]);

        Assert.True(kvm.CheckCapability(KvmCapability.AdjustClock) > 0, "this host's KVM has no KVM_CAP_ADJUST_CLOCK");
        ulong clock = vmA.GetClock();
        const ulong Later = 3_600_000_000_000UL; // an hour of guest time ahead of a fresh VM's clock
        vmB.SetClock(clock + Later);
        var watch = Stopwatch.StartNew();
        ulong after = vmB.GetClock();
        Assert.InRange(after, clock + Later, clock + Later + (ulong)(watch.Elapsed.TotalMilliseconds + 5_000) * 1_000_000UL);
        Assert.True(vmB.GetClock() >= after, "the kvmclock runs on from the value set");
    }

    private static string Run(string file, params string[] arguments)
    {
        using var p = Process.Start(new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string output = p.StandardOutput.ReadToEnd();
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} failed: {error}");
        return output;
    }
}
