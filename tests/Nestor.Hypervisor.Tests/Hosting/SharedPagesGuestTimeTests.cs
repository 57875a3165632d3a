using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Memory.Sharing;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Architecture;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>Page sharing under a running host changes no guest's time: identical NestorOS VMs whose pages the scanner
/// merges between rounds (their kernel stacks among them) give, cycle counts included, the RESULT lines of a VM alone.
/// It once did not: a user-mode program interrupted by the timer while its kernel stack page was shared took an EPT
/// violation on the first push of the interrupt frame; the CPU had already loaded the handler's CS, and the retried
/// delivery, seeing CPL 0, neither switched stacks nor saved the user's CS, so the guest's handler took its
/// kernel-mode path and the program went on in ring 0, 1,047 instructions short (Cpu.Delivery's DeliverOnce now
/// restores CS for an EPT violation as for a fault). An Iced-assembled guest shows the same failure class without
/// sharing: an INT from ring 3 whose kernel stack page has no host frame yet.</summary>
public class SharedPagesGuestTimeTests
{
    private const string Workload = "compute 20000 ; syscall 500";

    private static (List<List<string>> Results, long Merges) Run(int count, bool share)
    {
        var specs = Enumerable.Range(0, count).Select(i => new HostedVmSpec($"vm{i}", BuiltInGuests.Get("nestoros"), Workload,
            new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested }, new MemoryControls(32UL << 20, 32UL << 20, 640),
            new CpuControls(1000, 0, null))).ToArray();
        var spec = new HostSpec(4UL << 30, 4UL << 30, 1, SchedulerKind.ProportionalShare, specs) { Clock = new HostClock(100_000), WallTimeout = TimeSpan.FromMinutes(5) };
        using var host = new VirtualMachineHost(spec, console: null);
        PageSharingScanner? scanner = null;
        if (share)
        {
            host.BetweenRounds = (h, round) =>
            {
                scanner ??= new PageSharingScanner(h, new ScanRates(PagesPerSecond: 2_000_000));
                scanner.Advance(spec.Clock.Milliseconds(round) / 1000.0);
            };
        }
        try
        {
            host.Run();
            var results = host.Vms.Select(v =>
            {
                Assert.True(v.GuestStatus == 0, $"{v.Name}: {v.Outcome}");
                return v.ResultLines.Append($"guest_clock={v.Vcpu.GuestClock}").ToList();
            }).ToList();
            return (results, scanner?.Counters().Merges ?? 0);
        }
        finally
        {
            scanner?.Dispose();
        }
    }

    [Fact]
    public void Vms_whose_pages_are_shared_keep_their_solo_cycle_counts()
    {
        var (solo, _) = Run(1, share: false);
        Assert.Contains(solo[0], l => l.StartsWith("RESULT compute", StringComparison.Ordinal) && l.Contains("total_cycles=", StringComparison.Ordinal));
        var (shared, merges) = Run(3, share: true);
        Assert.True(merges > 0, "the scanner merged pages while the VMs ran");
        Assert.All(shared, r => Assert.Equal(solo[0], r));
    }

    private const ulong KernelStackTop = 0x50_1000, UserStackTop = 0x60_0000, Idt = 0x3000;
    private const ushort UserCode = 0x28 | 3, UserData = 0x30 | 3;

    /// <summary>Makes the identity map user-accessible, adds ring-3 code and data descriptors to the boot GDT, points the
    /// TSS's RSP0 at a page nothing has touched (so that under nested paging the first push of an interrupt frame is an
    /// EPT violation), installs an INT 0x80 gate of DPL 3, goes to ring 3 by IRETQ and executes INT 0x80; the handler
    /// puts the saved CS in RBX, the saved SS in RCX and its own RSP in RSI, and ends the run.</summary>
    private static byte[] UserInterruptGuest() => GuestAssembler.Assemble(a =>
    {
        var user = a.CreateLabel();
        var handler = a.CreateLabel();
        // U/S in the PML4 entry, the PDPT entry and the 2 MiB entries of the first GiB (LongModeSetup's tables).
        a.mov(rbx, GuestMemoryLayout.PageTables.Value);
        a.or(__qword_ptr[rbx], 4);
        a.or(__qword_ptr[rbx + 0x1000], 4);
        a.mov(rbx, GuestMemoryLayout.PageTables.Value + 0x2000);
        a.mov(ecx, 512);
        var next = a.CreateLabel();
        a.Label(ref next);
        a.or(__qword_ptr[rbx], 4);
        a.add(rbx, 8);
        a.dec(ecx);
        a.jnz(next);
        a.mov(rax, cr3);
        a.mov(cr3, rax);
        // Ring-3 descriptors in the free slots after the boot TSS descriptor, and a GDTR that covers them.
        a.mov(rbx, GuestMemoryLayout.BootGdt.Value);
        a.mov(rax, SegmentDescriptor.Flat(0xB, 3, longMode: true));
        a.mov(__qword_ptr[rbx + 0x28], rax);
        a.mov(rax, SegmentDescriptor.Flat(0x3, 3, longMode: false));
        a.mov(__qword_ptr[rbx + 0x30], rax);
        a.sub(rsp, 16);
        a.mov(__word_ptr[rsp], 0x37);
        a.mov(__qword_ptr[rsp + 2], rbx);
        a.lgdt(__[rsp]);
        // RSP0 in the boot TSS (offset 4).
        a.mov(rax, KernelStackTop);
        a.mov(rbx, GuestMemoryLayout.BootTss.Value);
        a.mov(__qword_ptr[rbx + 4], rax);
        // The INT 0x80 gate: a 64-bit interrupt gate, DPL 3, to the kernel's code segment.
        a.lea(rax, __[handler]);
        a.mov(rbx, Idt + 0x80 * 16);
        a.mov(__word_ptr[rbx], ax);
        a.mov(__word_ptr[rbx + 2], 0x08);
        a.mov(__word_ptr[rbx + 4], 0xEE00);
        a.shr(rax, 16);
        a.mov(__word_ptr[rbx + 6], ax);
        a.shr(rax, 16);
        a.mov(__dword_ptr[rbx + 8], eax);
        a.mov(__dword_ptr[rbx + 12], 0);
        a.mov(__word_ptr[rsp], 0xFFF);
        a.mov(rax, Idt);
        a.mov(__qword_ptr[rsp + 2], rax);
        a.lidt(__[rsp]);
        a.add(rsp, 16);
        // To ring 3: SS, RSP, RFLAGS, CS, RIP.
        a.push(UserData);
        a.mov(rax, UserStackTop);
        a.push(rax);
        a.push(2);
        a.push(UserCode);
        a.lea(rax, __[user]);
        a.push(rax);
        a.iretq();
        a.Label(ref user);
        a.@int(0x80);
        a.hlt();
        a.Label(ref handler);
        a.mov(rbx, __qword_ptr[rsp + 8]);
        a.mov(rcx, __qword_ptr[rsp + 32]);
        a.mov(rsi, rsp);
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, 0);
        a.@out(dx, eax);
    });

    [Fact]
    public void An_interrupt_from_ring_3_whose_kernel_stack_is_not_mapped_yet_saves_the_users_cs_and_switches_stacks()
    {
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("ring3-int", UserInterruptGuest()),
            MemoryBytes = 32UL << 20,
            SerialOutput = Stream.Null,
            Timeout = TimeSpan.FromSeconds(60),
        });
        using var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });
        var outcome = vm.Run(engine).Outcome;
        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        var state = outcome.FinalState!;
        // The frame's first push took an EPT violation (the page had no host frame yet); the retried delivery must
        // still be the one from ring 3: the user's CS and SS saved, and the frame on the TSS's RSP0 stack.
        Assert.Equal((ulong)UserCode, state.Rbx);
        Assert.Equal((ulong)UserData, state.Rcx);
        Assert.Equal(KernelStackTop - 40, state.Rsi);
    }
}
