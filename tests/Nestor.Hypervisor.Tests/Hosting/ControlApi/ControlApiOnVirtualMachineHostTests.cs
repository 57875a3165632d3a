using System.Diagnostics;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Hosting.ControlApi;

/// <summary>The control API wired to the real host of many VMs (<see cref="VirtualMachineHost"/>, its scheduler
/// dispatching two spinning guests on one host CPU): pause, resume, CPU controls and stop through HTTP over the
/// socket, measured on the host's own counters.</summary>
public class ControlApiOnVirtualMachineHostTests
{
    private static byte[] Spinner() => GuestAssembler.Assemble(a =>
    {
        var loop = a.CreateLabel();
        a.mov(dx, (ushort)(Uart16550.Com1 + 7)); // the scratch register: one port exit per iteration, no output
        a.Label(ref loop);
        a.inc(rbx);
        a.@out(dx, al);
        a.jmp(loop);
    });

    private static HostedVmSpec Vm(string name) => new(name, GuestAssembler.Flat(name, Spinner()), "", new SimOptions(),
        new MemoryControls(16UL << 20, 16UL << 20, 1000), new CpuControls(1000, 0, null));

    [Fact]
    public void Pause_resume_cpu_and_stop_act_on_the_hosts_scheduler()
    {
        var spec = new HostSpec(256UL << 20, 0, 1, SchedulerKind.ProportionalShare, [Vm("left"), Vm("right")])
        {
            WallTimeout = TimeSpan.FromMinutes(3), // a safety net: the test stops both VMs itself
        };
        using var host = new VirtualMachineHost(spec, console: null);
        var run = new Thread(host.Run) { IsBackground = true, Name = "test host dispatch" };
        using var api = new ControlApiHarness(host, ownsHost: false);
        run.Start();
        try
        {
            ulong Counter(string vm, string name) => api.GetJson($"/vms/{vm}/counters").GetProperty("counters").EnumerateArray()
                .Single(c => c.GetProperty("name").GetString() == name).GetProperty("value").GetUInt64();
            WaitUntil(() => Counter("left", "vm_exits") > 0 && Counter("right", "vm_exits") > 0);
            Assert.Equal(["Running", "Running"], api.GetJson("/vms").GetProperty("vms").EnumerateArray().Select(v => v.GetProperty("state").GetString()));

            Assert.Equal(204, api.Send("PATCH", "/vms/left", """{"state":"Paused"}""").Status);
            Assert.Equal(HostedVmState.Paused, host.Get("left").State);
            // The quantum running when the pause came may finish; after that the count stands still.
            ulong paused = Settled(() => Counter("left", "vm_exits"));
            ulong rightBefore = Counter("right", "vm_exits");
            Thread.Sleep(300);
            Assert.Equal(paused, Counter("left", "vm_exits"));
            Assert.True(Counter("right", "vm_exits") > rightBefore, "the other VM went on while this one was paused");
            Assert.Equal(409, api.Send("PATCH", "/vms/left", """{"state":"Paused"}""").Status);

            Assert.Equal(204, api.Send("PATCH", "/vms/left", """{"state":"Resumed"}""").Status);
            WaitUntil(() => Counter("left", "vm_exits") > paused);

            Assert.Equal(204, api.Send("PUT", "/vms/right/cpu", """{"shares":3000,"limit":50}""").Status);
            Assert.Equal(new CpuControls(3000, 0, 50), host.Get("right").Cpu);
            var refused = api.Send("PATCH", "/vms/right/cpu", """{"reservation":150}""");
            Assert.Equal(400, refused.Status);
            Assert.Contains("out of range", ControlApiHarness.FaultOf(refused.Body));

            Assert.Equal(204, api.Send("PUT", "/vms/left/actions", """{"action_type":"Stop"}""").Status);
            Assert.Equal(204, api.Send("PUT", "/vms/right/actions", """{"action_type":"Stop"}""").Status);
            Assert.True(run.Join(TimeSpan.FromSeconds(60)), "the host's run ended once both VMs were stopped");
            var left = api.GetJson("/vms/left");
            Assert.Equal("Stopped", left.GetProperty("state").GetString());
            Assert.Contains("stopped by the operator", left.GetProperty("outcome").GetString());
            Assert.Equal(409, api.Send("PATCH", "/vms/left", """{"state":"Resumed"}""").Status);
            Assert.Contains(api.GetJson("/host").GetProperty("counters").EnumerateArray(), c => c.GetProperty("name").GetString() == "host_cpus");
        }
        finally
        {
            // Also when an assertion failed: the VMs end and the dispatch thread with them, before the host goes.
            foreach (string name in new[] { "left", "right" })
            {
                try
                {
                    host.Stop(name);
                }
                catch (InvalidOperationException)
                {
                }
            }
            run.Join(TimeSpan.FromSeconds(60));
        }
    }

    /// <summary>The value once two reads 100 ms apart agree.</summary>
    private static ulong Settled(Func<ulong> read)
    {
        var watch = Stopwatch.StartNew();
        ulong last = read();
        while (true)
        {
            Thread.Sleep(100);
            ulong now = read();
            if (now == last)
            {
                return now;
            }
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), "the paused VM's count did not settle within 20 s");
            last = now;
        }
    }

    private static void WaitUntil(Func<bool> condition)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), "the condition did not come within 60 s");
            Thread.Sleep(20);
        }
    }
}
