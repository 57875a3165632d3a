using System.Globalization;
using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Hosting;

/// <summary>The combined report at the end of a host run: one row per VM (its controls, what the scheduler gave it in
/// virtual time, how it ended) and the host's books.</summary>
public static class HostReport
{
    /// <summary>Writes the table.</summary>
    public static void Write(VirtualMachineHost host, TextWriter output)
    {
        var clock = host.Scheduler.Clock;
        long elapsed = Math.Max(1, host.Now);
        output.WriteLine($"host: {host.Scheduler.HostCpus} CPU(s), scheduler {host.Scheduler.Name}, {clock.Milliseconds(host.Now):0.###} ms of virtual time " +
                         $"({clock.CyclesPerMillisecond / 1000.0:0.###} MHz virtual clock), {host.Rounds:N0} rounds of {clock.Milliseconds(host.Scheduler.RoundCycles):0.###} ms");
        output.WriteLine($"{"vm",-12} {"state",-8} {"tech",-6} {"shares",6} {"resv%",5} {"limit%",6} {"run ms",10} {"ready ms",10} {"cpu %",6} {"wakeups",7} {"lat ms",7} {"mem MiB",7}  outcome");
        foreach (var vm in host.Vms)
        {
            var v = vm.Vcpu;
            string limit = v.Controls.LimitPercent is { } l ? l.ToString("0.#", CultureInfo.InvariantCulture) : "-";
            double latency = v.Wakeups > 0 ? clock.Milliseconds(v.WakeLatencyCycles) / v.Wakeups : 0;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{vm.Name,-12} {vm.State.ToString().ToLowerInvariant(),-8} {vm.Technique,-6} {v.Controls.Shares,6} {v.Controls.ReservationPercent,5:0.#} {limit,6} " +
                $"{clock.Milliseconds(v.RunCycles),10:0.###} {clock.Milliseconds(v.ReadyCycles),10:0.###} {100.0 * v.RunCycles / elapsed,6:0.0} {v.Wakeups,7} {latency,7:0.###} {vm.AllocatedBytes() / (1024.0 * 1024),7:0.0}  {vm.Outcome}"));
        }
        var a = host.Admission;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"admission: {a.Capacity.Memory >> 20} MiB memory, {a.Capacity.Swap >> 20} MiB swap, {a.Capacity.CpuPercent:0}% CPU; " +
            $"refused {host.Vms.Count(v => v.State == HostedVmState.Refused)} of {host.Vms.Count}"));
    }

    /// <summary>Whether every VM that powered on ended as it should: a debug exit with status 0, or the run limit it
    /// was given (a VM meant to run until stopped). Refused VMs do not count against it.</summary>
    public static bool AllSucceeded(VirtualMachineHost host) => host.Vms.All(vm =>
        vm.State == HostedVmState.Refused ||
        (vm.OutcomeKind == VmOutcomeKind.DebugExit && vm.GuestStatus == 0) ||
        vm.EndedAsPlanned);
}
