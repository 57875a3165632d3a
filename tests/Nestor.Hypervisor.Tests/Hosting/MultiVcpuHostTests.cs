using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using static Nestor.Hypervisor.Tests.Hosting.HostTestSupport;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>VMs with several vCPUs on a host (docs/host.md, "VMs with several vCPUs"): each vCPU is placed on a host
/// CPU by the scheduler and runs, on its VM's one engine thread, for its own budget; the guest's results are those of
/// <c>nestor run --cpus N</c>, shares are the VM's (split over its vCPUs), and the report has a row per vCPU.</summary>
public class MultiVcpuHostTests
{
    /// <summary>The smp-spin guest's RESULT lines on a machine of its own (as <c>nestor run --cpus N</c>).</summary>
    private static List<string> Solo(int vcpus, Technique technique = Technique.Native, MemoryVirtualization? mmu = null)
    {
        var output = new MemoryStream();
        var sim = new SimOptions { Technique = technique, Memory = mmu };
        using var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim, Sim = sim, Kernel = WorkloadGuests.Get("smp-spin", vcpus)!, MemoryBytes = 64UL << 20, Cpus = vcpus, SerialOutput = output,
        });
        using var engine = new SimEngine(sim);
        var run = vm.Run(engine);
        vm.Serial.Flush();
        Assert.Equal(VmOutcomeKind.DebugExit, run.Outcome.Kind);
        return [.. Encoding.UTF8.GetString(output.ToArray()).Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith("RESULT ", StringComparison.Ordinal))];
    }

    private static HostedVmSpec SmpVm(string name, int vcpus, long iterations = WorkloadGuests.SmpSpinIterations, CpuControls? cpu = null,
        Technique technique = Technique.Native, MemoryVirtualization? mmu = null) =>
        new(name, BuiltIn.GuestAssembler.Flat($"smp-spin {vcpus}", WorkloadGuests.SmpSpin(vcpus, iterations)), "", new SimOptions { Technique = technique, Memory = mmu },
            new MemoryControls(64UL << 20, 64UL << 20, 640), cpu ?? new CpuControls(1000, 0, null)) { VcpuCount = vcpus };

    [Theory]
    [InlineData(SchedulerKind.ProportionalShare, 1)]
    [InlineData(SchedulerKind.ProportionalShare, 2)]
    [InlineData(SchedulerKind.Credit, 1)]
    [InlineData(SchedulerKind.Credit, 2)]
    public void A_two_vcpu_vm_and_a_one_vcpu_vm_give_their_native_results(SchedulerKind scheduler, int hostCpus)
    {
        using var host = Run(scheduler, hostCpus, null, SmpVm("a", 2), SmpVm("b", 1));
        var a = host.Vms[0];
        var b = host.Vms[1];
        Assert.True(a.GuestStatus == 0, $"a: {a.Outcome}");
        Assert.True(b.GuestStatus == 0, $"b: {b.Outcome}");
        var expectedA = Solo(2);
        Assert.Equal(3, expectedA.Count); // a line per vCPU and the total
        Assert.Equal(expectedA, a.ResultLines);
        Assert.Equal(Solo(1), b.ResultLines);
        // Both of a's vCPUs ran, each for its own work (the AP's clock started at its start-up IPI).
        Assert.All(a.Vcpus, v => Assert.True(v.RunCycles > 2L * WorkloadGuests.SmpSpinIterations, $"{v.Name}: ran {v.RunCycles}"));
        Assert.True(a.Vcpus[1].Dispatches > 0);
    }

    [Fact]
    public void A_two_vcpu_vm_under_hardware_assist_with_nested_paging_gives_its_results()
    {
        using var host = Run(SchedulerKind.ProportionalShare, 2, null,
            SmpVm("a", 2, technique: Technique.HardwareAssist, mmu: MemoryVirtualization.Nested), SmpVm("b", 1));
        Assert.True(host.Vms[0].GuestStatus == 0, host.Vms[0].Outcome);
        Assert.Equal(Solo(2, Technique.HardwareAssist, MemoryVirtualization.Nested), host.Vms[0].ResultLines);
    }

    [Theory]
    [InlineData(SchedulerKind.ProportionalShare)]
    [InlineData(SchedulerKind.Credit)]
    public void Shares_are_per_vm_a_two_vcpu_vm_gets_half_a_contended_cpu_not_two_thirds(SchedulerKind scheduler)
    {
        const long Forever = long.MaxValue / 2;
        using var host = Run(scheduler, 1, 300, SmpVm("a", 2, Forever), SmpVm("b", 1, Forever));
        var a = host.Vms[0];
        var b = host.Vms[1];
        double aShare = (double)a.Vcpus.Sum(v => v.RunCycles) / host.Now;
        double bShare = (double)b.Vcpu.RunCycles / host.Now;
        Assert.InRange(aShare, 0.45, 0.55);
        Assert.InRange(bShare, 0.45, 0.55);
        // Within a, the vCPUs shared its half: each about a quarter (its AP started a little late).
        Assert.InRange((double)a.Vcpus[1].RunCycles / host.Now, 0.2, 0.3);
        // Relaxed co-scheduling kept the siblings' clocks within the skew bound (plus the round that went past it).
        long skew = Math.Abs(a.Vcpus[0].GuestClock - a.Vcpus[1].GuestClock);
        Assert.True(skew <= host.Scheduler.CoStopSkewCycles + 2 * host.Scheduler.RoundCycles, $"skew {skew} cycles");
    }

    [Fact]
    public void Two_vcpus_on_two_host_cpus_run_side_by_side_and_skew_stays_bounded()
    {
        const long Forever = long.MaxValue / 2;
        // b's one vCPU and a's two over two host CPUs: a's share is the VM's, so its two vCPUs get one CPU's worth.
        using var host = Run(SchedulerKind.ProportionalShare, 2, 300, SmpVm("a", 2, Forever), SmpVm("b", 1, Forever));
        var a = host.Vms[0];
        double aShare = (double)a.Vcpus.Sum(v => v.RunCycles) / (2.0 * host.Now);
        Assert.InRange(aShare, 0.45, 0.55);
        long skew = Math.Abs(a.Vcpus[0].GuestClock - a.Vcpus[1].GuestClock);
        Assert.True(skew <= host.Scheduler.CoStopSkewCycles + 2 * host.Scheduler.RoundCycles, $"skew {skew} cycles");
    }

    [Fact]
    public void An_application_processor_waiting_for_its_start_up_ipi_is_neither_ready_nor_run()
    {
        // The BSP of a one-vCPU-built guest never sends a start-up IPI: the VM's second vCPU waits for it all run long.
        var spec = SmpVm("a", 1) with { };
        spec = spec with { VcpuCount = 2 };
        using var host = Run(SchedulerKind.ProportionalShare, 2, null, spec);
        var a = host.Vms[0];
        Assert.True(a.GuestStatus == 0, a.Outcome);
        Assert.Equal(Solo(1), a.ResultLines);
        Assert.Equal(0, a.Vcpus[1].RunCycles);
        Assert.Equal(0, a.Vcpus[1].ReadyCycles);
        Assert.Equal(0, a.Vcpus[1].Dispatches);
    }

    [Fact]
    public void The_report_has_a_row_per_vcpu()
    {
        using var host = Run(SchedulerKind.ProportionalShare, 1, null, SmpVm("a", 2), SmpVm("b", 1));
        var text = new StringWriter();
        HostReport.Write(host, text);
        var lines = text.ToString().Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        var a = host.Vms[0];
        foreach (var v in a.Vcpus)
        {
            var row = Assert.Single(lines, l => l.StartsWith($"  a/vcpu{v.Index} ", StringComparison.Ordinal));
            Assert.Contains(host.Scheduler.Clock.Milliseconds(v.RunCycles).ToString("0.###", System.Globalization.CultureInfo.InvariantCulture), row);
        }
        Assert.DoesNotContain(lines, l => l.StartsWith("  b/vcpu", StringComparison.Ordinal)); // a one-vCPU VM's row is its vCPU's
        // The VM's own row adds its vCPUs' run time.
        var vmRow = lines.First(l => l.StartsWith("a ", StringComparison.Ordinal)); // the CPU table's (the memory table has one too)
        Assert.Contains(host.Scheduler.Clock.Milliseconds(a.Vcpus.Sum(v => v.RunCycles)).ToString("0.###", System.Globalization.CultureInfo.InvariantCulture), vmRow);
    }

    [Fact]
    public void A_vcpu_is_not_counted_blocked_after_its_vm_ended()
    {
        // a ends long before b: its vCPUs' books stop at its end, they do not fill the rest of the host's run.
        using var host = Run(SchedulerKind.ProportionalShare, 1, null, SmpVm("a", 2), SmpVm("b", 1, iterations: 10 * WorkloadGuests.SmpSpinIterations));
        var a = host.Vms[0];
        Assert.NotNull(a.EndedAt);
        Assert.True(a.EndedAt < host.Now / 2, $"a ended at {a.EndedAt} of {host.Now} cycles");
        var text = new StringWriter();
        HostReport.Write(host, text);
        var clock = host.Scheduler.Clock;
        foreach (var v in a.Vcpus)
        {
            var row = text.ToString().Split('\n').Single(l => l.StartsWith($"  a/vcpu{v.Index} ", StringComparison.Ordinal));
            double blocked = double.Parse(row.Split(' ', StringSplitOptions.RemoveEmptyEntries)[5], System.Globalization.CultureInfo.InvariantCulture);
            double accounted = clock.Milliseconds(v.RunCycles + v.ReadyCycles + v.IdleCycles) + blocked; // EndedAt is to a round
            Assert.True(accounted <= clock.Milliseconds(a.EndedAt!.Value + host.Scheduler.RoundCycles) + 0.001, $"vCPU {v.Index}: {accounted} ms accounted in a life of {clock.Milliseconds(a.EndedAt!.Value)} ms: {row}");
        }
    }

    [Fact]
    public void A_host_refuses_several_vcpus_under_a_technique_that_runs_one()
    {
        var spec = new HostSpec(4UL << 30, 4UL << 30, 1, SchedulerKind.ProportionalShare, [SmpVm("a", 2, technique: Technique.BinaryTranslation)]) { Clock = SlowClock };
        var error = Assert.Throws<BadInputException>(() => new VirtualMachineHost(spec, console: null));
        Assert.Contains("VM 'a' has 2 vCPUs: several vCPUs under --technique bt", error.Message);
        Assert.Contains("--technique hw --mmu nested", error.Advice);
    }
}
