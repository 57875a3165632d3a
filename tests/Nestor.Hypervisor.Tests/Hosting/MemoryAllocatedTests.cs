using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>The <c>memory_allocated</c> counter: host memory backing a VM's guest pages now, measured from its P2M
/// (under a VMM) or from the residency of its RAM (native), read through the control interface while VMs run.</summary>
public class MemoryAllocatedTests
{
    private const ulong TouchFrom = 2UL << 20, TouchTo = 16UL << 20;

    /// <summary>Writes one page after another from 2 MiB to 16 MiB, with about 2,000 instructions of work between
    /// pages (so the touching is spread over hundreds of rounds), then exits with status 0.</summary>
    private static KernelImageSource SlowToucher() => GuestAssembler.Flat("slow-toucher", GuestAssembler.Assemble(a =>
    {
        var page = a.CreateLabel();
        var work = a.CreateLabel();
        var done = a.CreateLabel();
        a.mov(rdi, TouchFrom);
        a.Label(ref page);
        a.mov(__qword_ptr[rdi], rdi);
        a.mov(ecx, 1000);
        a.Label(ref work);
        a.dec(ecx);
        a.jnz(work);
        a.add(rdi, 0x1000);
        a.cmp(rdi, (int)TouchTo);
        a.jb(page);
        a.Label(ref done);
        a.mov(dx, DebugExitPort.Port);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.jmp(done);
    }));

    private static ulong Allocated(IReadOnlyList<EngineCounter> counters) => counters.Single(c => c.Name == "memory_allocated").Value;

    [Theory]
    [InlineData(Technique.HardwareAssist)]
    [InlineData(Technique.Native)]
    public void It_grows_as_a_guest_touches_memory_and_stays_small_for_one_that_touches_little(Technique technique)
    {
        var toucher = Vm("toucher", "spin", technique: technique, memory: 32UL << 20) with { Kernel = SlowToucher() };
        var spinner = Vm("spinner", "spin", technique: technique) with { RunLimitMilliseconds = 50 };
        var spec = new HostSpec(1UL << 30, 0, 1, SchedulerKind.ProportionalShare, [toucher, spinner]) { Clock = SlowClock, WallTimeout = TimeSpan.FromMinutes(3) };
        using var host = new VirtualMachineHost(spec, null);
        IHostControl control = host;
        var samples = new List<ulong>();
        var thread = new Thread(host.Run);
        thread.Start();
        while (!thread.Join(TimeSpan.FromMilliseconds(20)))
        {
            samples.Add(Allocated(control.Get("toucher").Counters));
        }
        Assert.Equal(0u, host.Vms[0].GuestStatus);
        ulong final = Allocated(control.Get("toucher").Counters);
        samples.Add(final);
        // It never shrinks while the guest only touches, and it was seen growing, not only at its end.
        for (int i = 1; i < samples.Count; i++)
        {
            Assert.True(samples[i] >= samples[i - 1], $"memory_allocated fell from {samples[i - 1]} to {samples[i]}");
        }
        Assert.True(samples.Distinct().Count() >= 3, $"memory_allocated took only the values {string.Join(", ", samples.Distinct())}");
        // Every page it wrote is backed, and it is still below its memory size.
        Assert.InRange(final, TouchTo - TouchFrom, 32UL << 20);
        // The spinner touched its code and page tables only: far below its 64 MiB.
        ulong spinnerAllocated = Allocated(control.Get("spinner").Counters);
        Assert.InRange(spinnerAllocated, 1UL, 4UL << 20);
        Assert.Equal(64UL << 20, control.Get("spinner").Counters.Single(c => c.Name == "memory_size").Value);
    }
}
