using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Memory.Sharing;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.MemoryOvercommit;

/// <summary>Content-based page sharing (Waldspurger, OSDI 2002, §4): identical NestorOS VMs on one host share more
/// frames the more of them there are and still give their native RESULT lines; a guest writing a page the scanner
/// merged gets its own copy, under nested and under shadow paging; the scanner's hints and counters.</summary>
public class PageSharingTests
{
    private const string Workload = "compute 20000 ; syscall 500";

    /// <summary>Runs <paramref name="count"/> identical NestorOS VMs on one host with the scanner between rounds;
    /// the host, its VMs' RESULT lines and the counters after a final two full scans.</summary>
    private static (List<List<string>> Results, SharingCounters During, SharingCounters After) RunIdentical(int count, MemoryVirtualization memory, double rate = 2_000_000)
    {
        var specs = Enumerable.Range(0, count).Select(i => new HostedVmSpec($"vm{i}", BuiltInGuests.Get("nestoros"), Workload,
            new SimOptions { Technique = Technique.HardwareAssist, Memory = memory }, new MemoryControls(32UL << 20, 32UL << 20, 640),
            new CpuControls(1000, 0, null))).ToArray();
        var spec = new HostSpec(4UL << 30, 4UL << 30, 1, SchedulerKind.ProportionalShare, specs)
        {
            Clock = new HostClock(100_000),
            WallTimeout = TimeSpan.FromMinutes(5),
        };
        using var vmHost = new VirtualMachineHost(spec, console: null);
        PageSharingScanner? scanner = null;
        Host? host = null;
        vmHost.BetweenRounds = (h, round) =>
        {
            host = h;
            scanner ??= new PageSharingScanner(h, new ScanRates(PagesPerSecond: rate));
            scanner.Advance(spec.Clock.Milliseconds(round) / 1000.0);
        };
        vmHost.Run();
        Assert.NotNull(scanner);
        var during = scanner!.Counters();
        scanner.ScanAll(2);
        var after = scanner.Counters();
        var results = vmHost.Vms.Select(v =>
        {
            Assert.True(v.GuestStatus == 0, $"{v.Name}: {v.Outcome}");
            return v.ResultLines.ToList();
        }).ToList();
        // The pool's books agree with the counters: the frames saved are the guest pages beyond the frames behind them.
        long mapped = host!.Vms.Sum(vm => host.PhysicalMapOf(vm)!.TouchedPages);
        Assert.True(after.ZeroPages > 0, "NestorOS leaves zero-filled pages it touched");
        Assert.Equal(mapped - after.PagesSharing, host.FramePool.GuestFrames);
        scanner.Dispose();
        return (results, during, after);
    }

    [Fact]
    public void Identical_NestorOS_vms_share_more_pages_the_more_there_are_and_keep_their_results()
    {
        var solo = NestorOS.Solo(Technique.HardwareAssist, MemoryVirtualization.Nested, Workload);
        var (one, _, oneAfter) = RunIdentical(1, MemoryVirtualization.Nested);
        var (three, threeDuring, threeAfter) = RunIdentical(3, MemoryVirtualization.Nested);
        Assert.Equal(string.Join("\n", solo), string.Join("\n", one[0]));
        // Every result is the native one, cycle counts included: merges' EPT violations and copy-on-write faults are
        // invisible to the guest (they once shifted a timer tick: an interrupt delivery retried after an EPT violation
        // on its stack started at the wrong privilege, fixed in Cpu.Delivery; SharedPagesGuestTimeTests).
        Assert.All(three, r => Assert.Equal(string.Join("\n", solo), string.Join("\n", r)));
        Assert.True(threeDuring.Merges > 0, "the scanner merged pages while the VMs ran");
        Assert.True(threeAfter.PagesSharing > oneAfter.PagesSharing + oneAfter.PagesShared,
            $"three VMs share more than one: {threeAfter.PagesSharing} against {oneAfter.PagesSharing}");
        // Two more identical VMs save at least the pages one VM shares with itself plus one of each distinct frame.
        Assert.True(threeAfter.PagesSharing >= 2 * oneAfter.PagesShared, $"{threeAfter} against {oneAfter}");
        Assert.True(threeAfter.FullScans >= 2);
        Assert.True(threeAfter.ScanTime > TimeSpan.Zero);
        Assert.True(threeAfter.PagesScanned * ScanCosts.Default.HashCyclesPerPage <= threeAfter.ModelledCycles);
    }

    [Fact]
    public void Shadow_paged_identical_vms_share_pages_and_keep_their_results()
    {
        var solo = NestorOS.Solo(Technique.HardwareAssist, MemoryVirtualization.Shadow, Workload);
        var (two, during, after) = RunIdentical(2, MemoryVirtualization.Shadow);
        Assert.All(two, r => Assert.Equal(string.Join("\n", solo), string.Join("\n", r)));
        Assert.True(during.Merges > 0);
        Assert.True(after.PagesSharing > 0);
    }

    private const ulong PageA = 0x40_0000, PageB = 0x40_1000, PageZero = 0x40_2000;
    private const ushort ScanPort = 0xE0;
    private const ulong Value = 0x1111_AAAA, Written = 0x3333_CCCC;

    /// <summary>A port whose write runs the VMM's action.</summary>
    private sealed class VmmPort(Action action) : IPortDevice
    {
        public string Name => "scan-test";
        public uint Read(ushort port, int size) => 0;
        public void Write(ushort port, int size, uint value) => action();
    }

    [Theory]
    [InlineData(MemoryVirtualization.Nested)]
    [InlineData(MemoryVirtualization.Shadow)]
    public void A_guest_write_to_a_page_the_scanner_merged_gets_its_own_copy(MemoryVirtualization memory)
    {
        // The guest fills A and B with the same bytes and reads a zero page; the scanner runs (port 0xE0); the guest
        // reads B, writes B and the zero page, reads them back and reads A.
        byte[] code = GuestAssembler.Assemble(a =>
        {
            var fill = a.CreateLabel();
            a.mov(r8, PageA);
            a.mov(r9, PageB);
            a.mov(rcx, 0);
            a.mov(r10, Value);
            a.Label(ref fill);
            a.mov(__qword_ptr[r8 + rcx * 8], r10);
            a.mov(__qword_ptr[r9 + rcx * 8], r10);
            a.inc(rcx);
            a.cmp(rcx, 512);
            a.jb(fill);
            a.mov(r12, PageZero);
            a.mov(rax, __qword_ptr[r12]);
            a.mov(dx, ScanPort);
            a.@out(dx, al);
            a.mov(rbx, __qword_ptr[r9 + 8]);
            a.mov(r10, Written);
            a.mov(__qword_ptr[r9 + 8], r10);
            a.mov(__qword_ptr[r12], r10);
            a.mov(r11, __qword_ptr[r9 + 8]);
            a.mov(r13, __qword_ptr[r12]);
            a.mov(rsi, __qword_ptr[r8 + 8]);
            a.mov(dx, DebugExitPort.Port);
            a.mov(eax, 0);
            a.@out(dx, eax);
        });
        using var host = Host.ForGuestMemory(64UL << 20);
        using var vm = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("share", code), MemoryBytes = 32UL << 20, SerialOutput = Stream.Null, Timeout = TimeSpan.FromSeconds(60) }, host);
        using var scanner = new PageSharingScanner(host, new ScanRates(0));
        SharingCounters atScan = default;
        bool sharedAtScan = false, zeroAtScan = false;
        vm.Bus.Claim(new VmmPort(() =>
        {
            scanner.ScanAll(2);
            atScan = scanner.Counters();
            var map = host.PhysicalMapOf(vm)!;
            map.TryHostPhysical(new GuestPhysical(PageA), out var a);
            map.TryHostPhysical(new GuestPhysical(PageB), out var b);
            sharedAtScan = a == b && map.IsWriteProtected(new GuestPhysical(PageA));
            zeroAtScan = map.IsWriteProtected(new GuestPhysical(PageZero));
        }), ScanPort, 1);
        using var engine = new SimEngine(new SimOptions { Technique = Technique.HardwareAssist, Memory = memory });

        var outcome = vm.Run(engine).Outcome;

        Assert.True(outcome.Kind == VmOutcomeKind.DebugExit, outcome.Message);
        Assert.True(sharedAtScan, "A and B shared one write-protected frame after the scan");
        Assert.True(zeroAtScan, "the zero page was mapped to the zero frame");
        Assert.True(atScan.PagesSharing >= 1, atScan.ToString()); // B on A's frame
        Assert.True(atScan.ZeroPages >= 1);
        var state = outcome.FinalState!;
        Assert.Equal(Value, state.Rbx); // B read through the shared frame
        Assert.Equal(Written, state.R11); // B's write went to its own copy
        Assert.Equal(Written, state.R13); // so did the write to the zero page
        Assert.Equal(Value, state.Rsi); // A, the other sharer, is unchanged
        var after = host.PhysicalMapOf(vm)!;
        Assert.True(after.CopyOnWriteBreaks >= 2);
        Assert.True(scanner.Counters().CopyOnWriteBreaks >= 2);
        Assert.Equal(Value, vm.Memory.ReadUInt64(new(PageA + 8)));
        Assert.Equal(Written, vm.Memory.ReadUInt64(new(PageB + 8)));
        Assert.Equal(Written, vm.Memory.ReadUInt64(new(PageZero)));
    }

    [Fact]
    public void A_hint_that_changed_is_hashed_again_and_not_merged_and_equal_pages_are_compared_before_merging()
    {
        using var host = Host.ForGuestMemory(64UL << 20);
        using var one = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("x", [0xF4]), MemoryBytes = 16UL << 20, SerialOutput = Stream.Null }, host);
        using var two = Vm.Create(new VmConfig { Kernel = GuestAssembler.Flat("x", [0xF4]), MemoryBytes = 16UL << 20, SerialOutput = Stream.Null }, host);
        var first = host.NewPhysicalMap(one);
        var second = host.NewPhysicalMap(two);
        one.Memory.WriteUInt64(new(PageA), Value);
        two.Memory.WriteUInt64(new(PageA), Value);
        first.Touch(new GuestPhysical(PageA));
        using var scanner = new PageSharingScanner(host, new ScanRates(0));
        scanner.ScanAll();
        Assert.Equal(1, scanner.Counters().PagesUnshared); // A of the first VM is a hint
        // The first VM changes its page (a private page's bytes are its home's); the second's equal page comes along.
        one.Memory.WriteUInt64(new(PageA), Written);
        second.Touch(new GuestPhysical(PageA));
        scanner.ScanAll();
        var counters = scanner.Counters();
        Assert.True(counters.PagesVolatile >= 1 || counters.PagesUnshared == 2, counters.ToString());
        Assert.Equal(0, counters.PagesSharing);
        Assert.False(second.IsWriteProtected(new GuestPhysical(PageA)));
        // Now they are equal again: merged, after the comparison.
        one.Memory.WriteUInt64(new(PageA), Value);
        scanner.ScanAll(2);
        counters = scanner.Counters();
        Assert.Equal(1, counters.PagesShared);
        Assert.Equal(1, counters.PagesSharing);
        first.TryHostPhysical(new GuestPhysical(PageA), out var a);
        second.TryHostPhysical(new GuestPhysical(PageA), out var b);
        Assert.Equal(a, b);
        Assert.Equal(2, host.FramePool.ReferenceCount(a.Value));
    }

    [Fact]
    public void Bad_scan_rates_are_refused()
    {
        using var host = Host.ForGuestMemory(16UL << 20);
        Assert.Throws<ArgumentOutOfRangeException>(() => new PageSharingScanner(host, new ScanRates(-1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PageSharingScanner(host, new ScanRates(double.NaN)));
    }
}

/// <summary>NestorOS runs for the memory tests.</summary>
internal static class NestorOS
{
    /// <summary>The RESULT lines of a NestorOS run on a VM and host of its own; the engine's quantum optional.</summary>
    public static List<string> Solo(Technique technique, MemoryVirtualization? mmu, string cmdline, Func<Vm, IVcpuQuantum?>? quantum = null,
        Action<Vm, RunResult>? inspect = null)
    {
        var output = new MemoryStream();
        var sim = new SimOptions { Technique = technique, Memory = mmu };
        using var vm = Vm.Create(new VmConfig { Engine = EngineKind.Sim, Sim = sim, Kernel = BuiltInGuests.Get("nestoros"), MemoryBytes = 32UL << 20, CommandLine = cmdline, SerialOutput = output, Timeout = TimeSpan.FromMinutes(3) });
        using var engine = new SimEngine(sim) { Quantum = quantum?.Invoke(vm) };
        var run = vm.Run(engine);
        vm.Serial.Flush();
        Assert.True(run.Outcome.Kind == VmOutcomeKind.DebugExit, run.Outcome.Message);
        inspect?.Invoke(vm, run);
        return [.. System.Text.Encoding.UTF8.GetString(output.ToArray()).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal))];
    }
}
