using System.Collections.Concurrent;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Hosting.ControlApi;
using Nestor.Hypervisor.Memory.Reclamation;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Hosting;

/// <summary>Memory overcommitment on a host of NestorOS VMs (issue 15): the free-memory states a host deliberately
/// short of memory goes through, what each reclaims, and the operator's balloon through the control API.</summary>
public class OvercommitHostTests
{
    private const string Touch = "memtouch 8 seq ; compute 20000";

    private static HostedVmSpec Vm(string name, string cmdline, bool balloon = true, ulong max = 16UL << 20, ulong min = 4UL << 20) =>
        HostTestSupport.Vm(name, "nestoros", cmdline: cmdline, technique: Technique.HardwareAssist, mmu: MemoryVirtualization.Nested, memory: max, min: min)
            with
        { Balloon = balloon };

    private static (VirtualMachineHost Host, List<MemoryState> States) RunShort(ulong hostMemory, OvercommitOptions options, params HostedVmSpec[] vms)
    {
        var spec = new HostSpec(hostMemory, 1UL << 30, 2, SchedulerKind.ProportionalShare, vms)
        {
            Clock = HostTestSupport.SlowClock,
            WallTimeout = TimeSpan.FromMinutes(5),
            Overcommit = options,
        };
        var host = new VirtualMachineHost(spec, console: null);
        var states = new List<MemoryState>();
        host.AfterReclaim = (h, _) =>
        {
            var state = h.MemoryManager.States.State;
            if (states.Count == 0 || states[^1] != state)
            {
                states.Add(state);
            }
        };
        host.Run();
        return (host, states);
    }

    [Fact]
    public void A_host_short_of_memory_goes_down_through_the_states_reclaims_and_comes_back_up_with_every_vm_finishing()
    {
        // Four VMs of 16 MiB on 32 MiB: their maxes add up to twice the host, their targets (7.5 MiB) are below what
        // memtouch 8 needs.
        var vms = Enumerable.Range(0, 4).Select(i => Vm($"vm{i}", Touch, min: 2UL << 20)).ToArray();
        var (host, states) = RunShort(32UL << 20, OvercommitOptions.On with { Sharing = null }, vms);
        using (host)
        {
            var m = host.MemoryManager;
            Assert.All(host.Vms, vm => Assert.Equal(0u, vm.GuestStatus));
            Assert.All(host.Vms, vm => Assert.Contains(vm.ResultLines, l => l.StartsWith("RESULT compute n=20000 primes=2262 crc=3cd3bea1", StringComparison.Ordinal)));
            Assert.Contains(MemoryState.Soft, states);
            Assert.Equal(MemoryState.High, states[^1]); // as the VMs end, their frames come back
            Assert.True(m.States.Transitions >= 2, string.Join(" ", states));
            Assert.True(m.States.CyclesIn(MemoryState.Soft) > 0);
            Assert.True(host.Vms.Sum(v => v.Balloon!.PagesInflated) > 0, "the balloons took pages");
            Assert.True(m.BalloonTargetsSet > 0);
            // The manager acts between rounds; within one a VM can take a little more (docs/overcommit.md).
            Assert.True(m.PeakHeldPages <= m.HostPages * 102 / 100, $"held {m.PeakHeldPages} pages at the peak, of {m.HostPages}");
            Assert.Contains(MemoryState.Hard, states);
            Assert.True(m.States.CyclesIn(MemoryState.Hard) > 0);
            Assert.True(host.Vms.Sum(v => v.Memory.PagesSwappedOut) > 0, "the hard state swapped");
        }
    }

    [Fact]
    public void With_the_idle_memory_tax_the_host_samples_each_vm_and_gives_the_active_one_more_than_the_idle_one()
    {
        // Two 32 MiB VMs with equal shares on 48 MiB: the idle one touches its memory once and then computes in a few
        // pages, the active one rewrites a 20 MiB buffer over and over (the idle-tax bench's workloads). Under
        // τ = 0.75 the host's own samplers (--idle-tax) must see the difference and the policy tax the idle VM.
        var vms = new[]
        {
            Vm("idle", "memtouch 24 seq ; steal 4000000000", max: 32UL << 20),
            Vm("active", string.Join(" ; ", Enumerable.Repeat("memtouch 20 rand", 12)), max: 32UL << 20),
        };
        var spec = new HostSpec(48UL << 20, 1UL << 30, 2, SchedulerKind.ProportionalShare, vms)
        {
            Clock = HostTestSupport.SlowClock,
            WallTimeout = TimeSpan.FromMinutes(5),
            DurationMilliseconds = 20,
            Overcommit = OvercommitOptions.On with { Sharing = null, HostSwap = null },
            AllocationPolicy = new IdleMemoryTax(0.75),
        };
        using var host = new VirtualMachineHost(spec, console: null);
        long widest = long.MinValue;
        host.AfterReclaim = (h, _) =>
        {
            var (idle, active) = (h.Vms[0].Memory, h.Vms[1].Memory);
            if (idle.TargetPages >= 0 && active.TargetPages >= 0)
            {
                widest = Math.Max(widest, active.TargetPages - idle.TargetPages);
            }
        };
        host.Run();
        var (idleVm, activeVm) = (host.Vms[0].Memory, host.Vms[1].Memory);
        Assert.True(idleVm.ActiveFraction < 1 && activeVm.ActiveFraction < 1, "both VMs were sampled");
        Assert.True(idleVm.ActiveFraction < activeVm.ActiveFraction, $"f idle {idleVm.ActiveFraction:F2}, active {activeVm.ActiveFraction:F2}");
        Assert.True(widest > 0, $"the active VM's target never exceeded the idle one's (widest gap {widest} pages)");
    }

    [Fact]
    public void Without_reclamation_the_same_host_overruns_its_memory_and_nothing_is_taken_back()
    {
        var vms = Enumerable.Range(0, 4).Select(i => Vm($"vm{i}", Touch, min: 2UL << 20)).ToArray();
        var (host, states) = RunShort(32UL << 20, OvercommitOptions.On with { Sharing = null, Reclaim = false }, vms);
        using (host)
        {
            var m = host.MemoryManager;
            Assert.All(host.Vms, vm => Assert.Equal(0u, vm.GuestStatus));
            Assert.Contains(MemoryState.Low, states);
            Assert.True(m.PeakHeldPages > m.HostPages, $"held {m.PeakHeldPages} pages of {m.HostPages}: more than the host has");
            Assert.Equal(0, host.Vms.Sum(v => v.Balloon!.PagesInflated));
            Assert.Equal(0, host.Vms.Sum(v => v.Memory.PagesSwappedOut));
            Assert.Equal(0, m.BlockingRounds);
        }
    }

    [Fact]
    public void An_operators_balloon_target_through_the_api_takes_the_vms_memory_and_a_vm_without_one_is_refused()
    {
        var spec = new HostSpec(512UL << 20, 1UL << 30, 2, SchedulerKind.ProportionalShare,
            [Vm("a", "memtouch 8 seq ; balloon wait 2048 ; compute 20000"), Vm("b", "compute 20000", balloon: false)])
        {
            Clock = HostTestSupport.SlowClock,
            WallTimeout = TimeSpan.FromMinutes(5),
            Overcommit = OvercommitOptions.On with { Sharing = null },
        };
        using var host = new VirtualMachineHost(spec, console: null);
        var held = new ConcurrentQueue<(bool AfterSet, long Pages)>();
        bool set = false, asked = false;
        host.AfterReclaim = (h, _) =>
        {
            // Until the test has made its requests, each round waits 2 ms of wall time once the guest waits for its
            // balloon: under load the test thread could otherwise ask after the VM ended (409 whatever the request).
            // The pause is between rounds: virtual time and the guest's run are unchanged.
            if (!Volatile.Read(ref asked) && (h.Vms[0].Serial?.Text.Contains("balloon: waiting for 2048 pages") ?? false))
            {
                Thread.Sleep(2);
            }
            if (h.Vms[0].State == HostedVmState.Running && h.Vms[0].Memory.HeldPages > 0)
            {
                held.Enqueue((Volatile.Read(ref set), h.Vms[0].Memory.HeldPages));
            }
        };
        var run = new Thread(host.Run) { IsBackground = true, Name = "test host dispatch" };
        using var api = new ControlApi.ControlApiHarness(host, ownsHost: false);
        using var client = new ControlApiClient(api.SocketPath);
        run.Start();
        try
        {
            var deadline = DateTime.UtcNow.AddMinutes(3);
            while (!(host.Vms[0].Serial?.Text.Contains("balloon: waiting for 2048 pages") ?? false))
            {
                Assert.True(DateTime.UtcNow < deadline, "the guest reached its balloon wait");
                Thread.Sleep(20);
            }
            Assert.Equal(0u, client.Balloon("a").TargetPages);
            // The refusals first, while the guest waits: once it has its target it may run to its end before a
            // later request arrives (a stopped VM answers 409, whatever the request).
            var refused = Assert.Throws<ControlApiRefusedException>(() => client.SetBalloon("b", 8));
            Assert.Equal(409, refused.Status);
            Assert.Contains("has no balloon", refused.Message);
            Assert.Equal(400, Assert.Throws<ControlApiRefusedException>(() => client.SetBalloon("a", 64)).Status); // more than its 16 MiB
            client.SetBalloon("a", 8);
            Volatile.Write(ref set, true);
            Volatile.Write(ref asked, true);
            Assert.True(run.Join(TimeSpan.FromMinutes(3)), "the host ended");
        }
        finally
        {
            foreach (var vm in host.Vms.Where(v => v.State is HostedVmState.Running or HostedVmState.Paused))
            {
                try
                {
                    host.Stop(vm.Name);
                }
                catch (InvalidOperationException)
                {
                }
            }
            run.Join(TimeSpan.FromMinutes(1));
        }
        var a = host.Vms[0];
        Assert.Contains(a.ResultLines, l => l.StartsWith("RESULT balloon-wait pages=2048 actual=2048 target=2048", StringComparison.Ordinal));
        Assert.Contains(a.ResultLines, l => l.StartsWith("RESULT compute n=20000 primes=2262", StringComparison.Ordinal));
        var samples = held.ToArray();
        long before = samples.Where(s => !s.AfterSet).Max(s => s.Pages);
        long after = samples.Where(s => s.AfterSet).Min(s => s.Pages);
        Assert.True(after <= before - 1800, $"held {before} pages before the target and {after} after: the balloon's 2048 pages went back to the host");
        Assert.True(a.Balloon!.BytesReturnedToHost >= 1800L * 4096);
        Assert.Equal(0u, host.Vms[1].GuestStatus);
    }
}
