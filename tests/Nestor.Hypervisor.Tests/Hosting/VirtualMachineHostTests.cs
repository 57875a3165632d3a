using System.Text;
using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>Many VMs on one host: every VM gives the RESULT lines it gives with a machine to itself (its time is its
/// own, so even the cycle counts agree), whatever its technique and its neighbours do.</summary>
public class VirtualMachineHostTests
{
    private const string Workload = "compute 100000 ; syscall 2000 ; forkwait 20";

    private static readonly (Technique Technique, MemoryVirtualization? Mmu)[] Techniques =
    [
        (Technique.Native, null), (Technique.HardwareAssist, MemoryVirtualization.Nested), (Technique.HardwareAssist, MemoryVirtualization.Shadow),
        (Technique.TrapAndEmulate, null), (Technique.BinaryTranslation, null), (Technique.Paravirtual, null),
        (Technique.Native, null), (Technique.HardwareAssist, MemoryVirtualization.Nested),
    ];

    /// <summary>The RESULT lines of a NestorOS run on a VM and host of its own.</summary>
    private static List<string> Solo(Technique technique, MemoryVirtualization? mmu, string cmdline)
    {
        var output = new MemoryStream();
        var sim = new SimOptions { Technique = technique, Memory = mmu };
        using var vm = Vm.Create(new VmConfig { Engine = EngineKind.Sim, Sim = sim, Kernel = BuiltInGuests.Get("nestoros"), MemoryBytes = 64UL << 20, CommandLine = cmdline, SerialOutput = output });
        using var engine = new SimEngine(sim);
        var run = vm.Run(engine);
        vm.Serial.Flush();
        Assert.Equal(VmOutcomeKind.DebugExit, run.Outcome.Kind);
        return [.. Encoding.UTF8.GetString(output.ToArray()).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal))];
    }

    [Fact]
    public void Eight_NestorOS_vms_on_two_host_cpus_give_their_native_results()
    {
        var specs = Techniques.Select((t, i) => Vm($"vm{i}", "nestoros", cmdline: Workload, technique: t.Technique, mmu: t.Mmu)).ToArray();
        using var host = Run(SchedulerKind.ProportionalShare, 2, null, specs);
        for (int i = 0; i < specs.Length; i++)
        {
            var vm = host.Vms[i];
            Assert.True(vm.GuestStatus == 0, $"{vm.Name}: {vm.Outcome}");
            var expected = Solo(Techniques[i].Technique, Techniques[i].Mmu, Workload);
            Assert.Contains(expected, l => l.StartsWith("RESULT compute", StringComparison.Ordinal));
            Assert.Equal(expected, vm.ResultLines);
        }
        // They shared the CPUs: each waited for one while others ran.
        Assert.All(host.Vms, vm => Assert.True(vm.Vcpu.ReadyCycles > 0, vm.Name));
    }

    /// <summary>A ring-0 guest that triple-faults at once: an IDT of limit 0, then INT3.</summary>
    private static KernelImageSource TripleFaulter() => GuestAssembler.Flat("triple-faulter", GuestAssembler.Assemble(a =>
    {
        a.mov(rdi, 0x16F000UL);
        a.mov(__word_ptr[rdi], 0);
        a.mov(__qword_ptr[rdi + 2], 0);
        a.lidt(__[rdi]);
        a.int3();
    }));

    /// <summary>A guest that writes to COM1 forever.</summary>
    private static KernelImageSource Flooder() => GuestAssembler.Flat("flooder", GuestAssembler.Assemble(a =>
    {
        var top = a.CreateLabel();
        a.mov(dx, Uart16550.Com1);
        a.mov(al, (byte)'x');
        a.Label(ref top);
        a.@out(dx, al);
        a.jmp(top);
    }));

    /// <summary>A guest that touches every page of its RAM above 2 MiB, forever.</summary>
    private static KernelImageSource MemoryToucher() => GuestAssembler.Flat("memory-toucher", GuestAssembler.Assemble(a =>
    {
        var again = a.CreateLabel();
        var page = a.CreateLabel();
        a.Label(ref again);
        a.mov(rdi, 0x200000UL);
        a.Label(ref page);
        a.mov(__qword_ptr[rdi], rdi);
        a.add(rdi, 0x1000);
        a.cmp(rdi, (int)(16 << 20));
        a.jb(page);
        a.jmp(again);
    }));

    [Fact]
    public void A_vm_that_faults_floods_spins_or_fills_its_memory_ends_or_is_throttled_alone()
    {
        const string workload = "compute 50000";
        var expected = Solo(Technique.Native, null, workload);
        var good = Vm("good", "nestoros", cmdline: workload);
        var goodUnderHw = Vm("good-hw", "nestoros", cmdline: workload, technique: Technique.HardwareAssist);
        var faulter = Vm("faulter", "spin") with { Kernel = TripleFaulter() };
        var flooder = Vm("flooder", "spin") with { Kernel = Flooder(), SerialLimitBytes = 64 << 10 };
        var spinner = Vm("spinner", "spin", new CpuControls(1000, 0, 30)) with { RunLimitMilliseconds = 100 };
        var toucher = Vm("toucher", "spin", technique: Technique.HardwareAssist, memory: 16UL << 20) with { Kernel = MemoryToucher(), RunLimitMilliseconds = 100 };
        using var host = Run(SchedulerKind.ProportionalShare, 2, null, good, faulter, flooder, spinner, toucher, goodUnderHw);
        Assert.Equal(expected, host.Vms[0].ResultLines);
        Assert.Equal(Solo(Technique.HardwareAssist, null, workload), host.Vms[5].ResultLines);
        Assert.Equal(VmOutcomeKind.TripleFault, host.Vms[1].OutcomeKind);
        Assert.True(host.Vms[2].Serial!.Flooded);
        Assert.Equal(64 << 10, host.Vms[2].Serial!.BytesWritten);
        Assert.Contains("flood", host.Vms[2].Outcome);
        Assert.True(host.Vms[3].EndedAsPlanned, host.Vms[3].Outcome);
        Assert.True(host.Vms[3].Vcpu.ThrottledRounds > 0);
        Assert.True(host.Vms[4].EndedAsPlanned, host.Vms[4].Outcome);
        Assert.True(HostReport.AllSucceeded(host) == false); // the faulter and the flooder did not end well
    }

    [Fact]
    public void Admission_control_refuses_what_does_not_fit_naming_the_shortfall()
    {
        ulong vmMemory = 64UL << 20;
        ulong overhead = AdmissionControl.OverheadBytes(vmMemory, 1);
        // Room for two reservations and a half; swap for one VM's unreserved half.
        ulong hostMemory = 2 * (vmMemory + overhead) + vmMemory / 2;
        const ulong small = 8UL << 20; // f and g: room for both in memory, their CPU reservations do not both fit
        var specs = new[]
        {
            Vm("a", "hello"), Vm("b", "hello"),
            Vm("c", "hello"),                                 // its min does not fit
            Vm("d", "hello", min: vmMemory / 4),              // fits in memory (16 MiB + overhead), needs 48 MiB of swap
            Vm("e", "hello", min: vmMemory / 4),              // no swap left
            Vm("f", "hello", new CpuControls(1000, 60, null), memory: small), Vm("g", "hello", new CpuControls(1000, 60, null), memory: small),
        };
        var spec = new HostSpec(hostMemory + 2 * (small + AdmissionControl.OverheadBytes(small, 1)), vmMemory - vmMemory / 4, 1, SchedulerKind.ProportionalShare, specs) { Clock = SlowClock };
        using var host = new VirtualMachineHost(spec, null);
        host.Run();
        var states = host.Vms.Select(v => v.State).ToArray();
        Assert.Equal([HostedVmState.Stopped, HostedVmState.Stopped, HostedVmState.Refused, HostedVmState.Stopped, HostedVmState.Refused,
            HostedVmState.Stopped, HostedVmState.Refused], states);
        double MiB(ulong bytes) => bytes / (1024.0 * 1024);
        ulong freeForC = spec.MemoryBytes - 2 * (vmMemory + overhead);
        Assert.Contains($"{MiB(vmMemory + overhead - freeForC):0.#} MiB short", host.Vms[2].Outcome);
        Assert.Contains("host swap", host.Vms[4].Outcome);
        Assert.Contains($"{MiB(vmMemory - vmMemory / 4):0.#} MiB short", host.Vms[4].Outcome);
        Assert.Contains("CPU reservation of 60%", host.Vms[6].Outcome);
        Assert.Contains("20 points short", host.Vms[6].Outcome);
        Assert.All(host.Vms.Where(v => v.State == HostedVmState.Stopped), v => Assert.Equal(0u, v.GuestStatus));
        // The books are back to nothing once every VM has ended.
        Assert.Equal(0UL, host.Admission.ReservedMemory);
    }

    [Fact]
    public void The_control_interface_pauses_resumes_changes_and_stops_a_vm()
    {
        var spec = new HostSpec(1UL << 30, 0, 1, SchedulerKind.ProportionalShare, [Vm("a", "spin"), Vm("b", "spin")]) { Clock = SlowClock, WallTimeout = TimeSpan.FromMinutes(2) };
        using var host = new VirtualMachineHost(spec, null);
        IHostControl control = host;
        var thread = new Thread(host.Run);
        thread.Start();
        SpinWait.SpinUntil(() => host.Rounds > 200);
        control.Pause("a");
        // The round under way when the pause came may still be running "a": its slice ends the round, so read the
        // count once a few rounds have passed.
        long roundsAtPauseCall = host.Rounds;
        SpinWait.SpinUntil(() => host.Rounds > roundsAtPauseCall + 20);
        long pausedAt = host.Vms[0].Vcpu.RunCycles;
        long roundsAtPause = host.Rounds;
        SpinWait.SpinUntil(() => host.Rounds > roundsAtPause + 200);
        Assert.Equal(HostedVmState.Paused, control.Get("a").State);
        Assert.Equal(pausedAt, host.Vms[0].Vcpu.RunCycles);
        Assert.Throws<InvalidOperationException>(() => control.Pause("a"));
        control.Resume("a");
        control.SetCpu("b", new CpuControls(1000, 0, 10));
        Assert.Throws<BadInputException>(() => control.SetCpu("b", new CpuControls(0, 0, null)));
        Assert.Throws<BadInputException>(() => control.Get("nobody"));
        long roundsAtResume = host.Rounds;
        SpinWait.SpinUntil(() => host.Rounds > roundsAtResume + 500);
        Assert.True(host.Vms[0].Vcpu.RunCycles > pausedAt);
        control.Stop("a");
        control.Stop("b");
        Assert.True(thread.Join(TimeSpan.FromMinutes(1)));
        Assert.All(control.List(), v => Assert.Equal(HostedVmState.Stopped, v.State));
        Assert.Equal("stopped by the operator", control.Get("a").Outcome);
        Assert.Contains(control.HostCounters(), c => c.Name == "scheduler_share");
        Assert.Contains(control.Get("b").Counters, c => c.Name == "ready_time" && c.Unit == "us");
    }

    [Fact]
    public void The_ticker_reads_its_steal_time_as_the_host_counted_it()
    {
        using var host = Run(SchedulerKind.ProportionalShare, 1, null,
            Vm("ticker", "ticker"), Vm("spin", "spin") with { RunLimitMilliseconds = 3000 });
        var ticker = host.Vms[0];
        Assert.Equal(0u, ticker.GuestStatus);
        string line = Assert.Single(ticker.ResultLines);
        Assert.StartsWith($"RESULT ticker ticks={WorkloadGuests.TickerTicks} steal_ns=", line);
        ulong reported = ulong.Parse(line[(line.LastIndexOf('=') + 1)..]);
        ulong counted = (ulong)(ticker.Vcpu.ReadyCycles * (1_000_000.0 / SlowClock.CyclesPerMillisecond));
        Assert.True(reported > 0);
        // Read just before its last slice ended: at most that slice's wait short of the final count.
        Assert.InRange(reported, counted - (ulong)(ticker.Vcpu.MaximumWakeLatencyCycles * 10) - 1, counted);
    }
}
