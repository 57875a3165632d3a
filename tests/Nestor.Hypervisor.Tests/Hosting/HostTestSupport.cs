using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>Hosts for the tests: VMs on the software machine with a slow virtual clock (100 MHz: a 100 µs round is
/// 10,000 instructions), so that hundreds of scheduling decisions take a second of wall time.</summary>
internal static class HostTestSupport
{
    public static readonly HostClock SlowClock = new(100_000);

    public static HostedVmSpec Vm(string name, string kernel, CpuControls? cpu = null, string cmdline = "", Technique technique = Technique.Native,
        MemoryVirtualization? mmu = null, ulong memory = 64UL << 20, ulong? min = null) =>
        new(name, WorkloadGuests.Get(kernel) ?? BuiltIn.BuiltInGuests.Get(kernel), cmdline, new SimOptions { Technique = technique, Memory = mmu },
            new MemoryControls(min ?? memory, memory, 640), cpu ?? new CpuControls(1000, 0, null));

    /// <summary>Runs the host to its end and returns it (to be disposed by the caller).</summary>
    public static VirtualMachineHost Run(SchedulerKind scheduler, int cpus, double? durationMs, params HostedVmSpec[] vms)
    {
        var spec = new HostSpec(4UL << 30, 4UL << 30, cpus, scheduler, vms) { Clock = SlowClock, DurationMilliseconds = durationMs, WallTimeout = TimeSpan.FromMinutes(5) };
        var host = new VirtualMachineHost(spec, console: null);
        host.Run();
        return host;
    }

    /// <summary>A VM's part of the host's CPU time, measured.</summary>
    public static double CpuFraction(VirtualMachineHost host, string name, int cpus = 1) =>
        (double)host.Vms.Single(v => v.Name == name).Vcpu.RunCycles / (host.Now * (double)cpus);
}
