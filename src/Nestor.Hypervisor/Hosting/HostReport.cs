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
            // A VM's row adds its vCPUs' books (its controls are the VM's, split over them: ScheduledVcpu.ForVm).
            long run = vm.Vcpus.Sum(x => x.RunCycles), ready = vm.Vcpus.Sum(x => x.ReadyCycles), wakeups = vm.Vcpus.Sum(x => x.Wakeups);
            double latency = wakeups > 0 ? clock.Milliseconds(vm.Vcpus.Sum(x => x.WakeLatencyCycles)) / wakeups : 0;
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{vm.Name,-12} {vm.State.ToString().ToLowerInvariant(),-8} {vm.Technique,-6} {v.Controls.Shares,6} {v.Controls.ReservationPercent,5:0.#} {limit,6} " +
                $"{clock.Milliseconds(run),10:0.###} {clock.Milliseconds(ready),10:0.###} {100.0 * run / elapsed,6:0.0} {wakeups,7} {latency,7:0.###} {vm.AllocatedBytes() / (1024.0 * 1024),7:0.0}  {vm.Outcome}"));
            if (vm.Vcpus.Count > 1)
            {
                WriteVcpus(vm, clock, elapsed, output);
            }
        }
        if (host.Scheduler is Scheduling.CreditScheduler credit)
        {
            // Xen's credit1 load balancing (per-CPU run queues): how often a CPU took a vCPU from a peer's queue.
            string migrations = string.Join(", ", host.Vms.Select(v => $"{v.Name} {v.Vcpu.Migrations}"));
            output.WriteLine($"credit: {host.Scheduler.HostCpus} run queue(s); load balancing stole {credit.StealsWhenIdle + credit.StealsWhenOver} vCPU(s) " +
                             $"({credit.StealsWhenIdle} by an idle CPU, {credit.StealsWhenOver} instead of an OVER one); migrations: {migrations}");
        }
        var a = host.Admission;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"admission: {a.Capacity.Memory >> 20} MiB memory, {a.Capacity.Swap >> 20} MiB swap, {a.Capacity.CpuPercent:0}% CPU; " +
            $"refused {host.Vms.Count(v => v.State == HostedVmState.Refused)} of {host.Vms.Count}"));
        WriteMemory(host, output);
    }

    /// <summary>A row per vCPU of a VM with several, under its VM's: run, ready (runnable, not placed), idle (in HLT),
    /// blocked (halted until an interrupt, or waiting for its start-up IPI: the rest of the time), co-stopped rounds
    /// (ahead of a sibling by more than the skew bound) and how far its clock is from the VM's slowest vCPU's.</summary>
    private static void WriteVcpus(HostedVm vm, Scheduling.HostClock clock, long elapsed, TextWriter output)
    {
        long slowest = vm.Vcpus.Min(x => x.GuestClock);
        output.WriteLine($"  {"vcpu",-10} {"state",-8} {"run ms",10} {"ready ms",10} {"idle ms",10} {"blocked ms",10} {"cpu %",6} {"dispatch",8} {"costop",6} {"skew ms",8}");
        foreach (var x in vm.Vcpus)
        {
            long lifetime = Math.Min(elapsed, vm.EndedAt ?? elapsed); // nothing is blocked after its VM ended
            long blocked = Math.Max(0, lifetime - x.RunCycles - x.ReadyCycles - x.IdleCycles);
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"  {$"{vm.Name}/vcpu{x.Index}",-10} {x.State.ToString().ToLowerInvariant(),-8} {clock.Milliseconds(x.RunCycles),10:0.###} {clock.Milliseconds(x.ReadyCycles),10:0.###} " +
                $"{clock.Milliseconds(x.IdleCycles),10:0.###} {clock.Milliseconds(blocked),10:0.###} {100.0 * x.RunCycles / elapsed,6:0.0} {x.Dispatches,8} {x.CoStopRounds,6} {clock.Milliseconds(x.GuestClock - slowest),8:0.###}"));
        }
    }

    /// <summary>The memory-overcommitment part (issue 15): the switches, the free-memory states with the time spent in
    /// each, what each mechanism took back, and one row per VM.</summary>
    public static void WriteMemory(VirtualMachineHost host, TextWriter output)
    {
        var m = host.MemoryManager;
        var clock = host.Scheduler.Clock;
        var c = CultureInfo.InvariantCulture;
        const double Mib = 1024.0 * 1024 / 4096; // pages per MiB
        output.WriteLine(string.Create(c,
            $"memory: {host.Spec.Overcommit}; host {m.HostPages / Mib:0.#} MiB, held at the end {m.HeldPages / Mib:0.#} MiB, peak held {m.PeakHeldPages / Mib:0.#} MiB " +
            $"({100.0 * m.PeakHeldPages / Math.Max(1, m.HostPages):0.#}% of host), lowest free {(m.LowestFreePages == long.MaxValue ? 0 : m.LowestFreePages) / Mib:0.#} MiB"));
        var states = m.States;
        string times = string.Join(", ", Enum.GetValues<Memory.Reclamation.MemoryState>().Select(s =>
            string.Create(c, $"{s.ToString().ToLowerInvariant()} {clock.Milliseconds(states.CyclesIn(s)):0.###} ms ({states.Entries(s)}×)")));
        output.WriteLine(string.Create(c, $"memory states: now {states.State.ToString().ToLowerInvariant()}, {states.Transitions} transitions; {times}"));
        if (m.Scanner is { } scanner)
        {
            var k = scanner.Counters();
            output.WriteLine(string.Create(c,
                $"sharing: pages_shared={k.PagesShared} pages_sharing={k.PagesSharing} pages_unshared={k.PagesUnshared} pages_volatile={k.PagesVolatile} " +
                $"zero_pages={k.ZeroPages} full_scans={k.FullScans} scanned={k.PagesScanned} cow_breaks={k.CopyOnWriteBreaks}; saved at peak {m.PeakSharingSavedPages / Mib:0.##} MiB " +
                $"({m.PeakSharingSavedPages} pages); scan time {k.ScanTime.TotalMilliseconds:0.#} ms"));
        }
        long inflated = host.Vms.Sum(v => v.Balloon?.PagesInflated ?? 0), deflated = host.Vms.Sum(v => v.Balloon?.PagesDeflated ?? 0);
        long returned = host.Vms.Sum(v => v.Balloon?.BytesReturnedToHost ?? 0);
        output.WriteLine(string.Create(c,
            $"balloon: {host.Vms.Count(v => v.Balloon is not null)} VMs with one; {inflated} pages inflated and {deflated} deflated in all, " +
            $"{returned / 1048576.0:0.##} MiB returned to the host; {m.BalloonTargetsSet} targets set"));
        long swappedOut = host.Vms.Sum(v => v.Memory.PagesSwappedOut), swappedIn = host.Vms.Sum(v => v.Memory.PagesSwappedIn);
        output.WriteLine(string.Create(c,
            $"host swap: {swappedOut} pages out, {swappedIn} in, double paging {host.Vms.Sum(v => v.Memory.DoublePaging)}; " +
            $"blocking: {m.BlockingRounds} rounds, {host.Vms.Sum(v => v.Memory.Blocks)} blocks"));
        output.WriteLine($"{"vm",-12} {"min MiB",7} {"max MiB",7} {"shares",6} {"target",7} {"peak",7} {"balloon",7} {"infl",6} {"swap out",8} {"swap in",7} {"shared",6} {"blocked ms",10}");
        foreach (var vm in host.Vms)
        {
            var a = vm.Memory;
            output.WriteLine(string.Create(c,
                $"{vm.Name,-12} {vm.Spec.Memory.MinBytes / 1048576.0,7:0.#} {vm.Spec.Memory.MaxBytes / 1048576.0,7:0.#} {vm.Spec.Memory.Shares,6} " +
                $"{(a.TargetPages < 0 ? "-" : (a.TargetPages / Mib).ToString("0.#", c)),7} {a.PeakHeldPages / Mib,7:0.#} {a.BalloonTargetPages / Mib,7:0.#} " +
                $"{vm.Balloon?.PagesInflated ?? 0,6} {a.PagesSwappedOut,8} {a.PagesSwappedIn,7} {a.SharedPages,6} {clock.Milliseconds(a.BlockedCycles),10:0.###}{(a.SwapError is { } e ? $"  host swap stopped: {e}" : "")}"));
        }
    }

    /// <summary>Whether every VM that powered on ended as it should: a debug exit with status 0, or the run limit it
    /// was given (a VM meant to run until stopped). Refused VMs do not count against it.</summary>
    public static bool AllSucceeded(VirtualMachineHost host) => host.Vms.All(vm =>
        vm.State == HostedVmState.Refused ||
        (vm.OutcomeKind == VmOutcomeKind.DebugExit && vm.GuestStatus == 0) ||
        vm.EndedAsPlanned);
}
