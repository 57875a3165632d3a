using System.Diagnostics;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Tests.Hosting.ControlApi;

/// <summary>The control API of a host running a VM with two vCPUs: <c>GET /vms/NAME</c> keeps its shape (the VM's
/// counters, added over its vCPUs) and has a <c>vcpus</c> array with each vCPU's own; a snapshot of it is refused
/// saying why.</summary>
public class ControlApiMultiVcpuTests
{
    [Fact]
    public void Get_vm_has_a_vcpus_array_and_a_snapshot_is_refused_saying_why()
    {
        var guest = BuiltIn.GuestAssembler.Flat("smp-spin 2", WorkloadGuests.SmpSpin(2, long.MaxValue / 2));
        var vm = new HostedVmSpec("a", guest, "", new SimOptions(), new MemoryControls(64UL << 20, 64UL << 20, 640), new CpuControls(1000, 0, null)) { VcpuCount = 2 };
        var spec = new HostSpec(256UL << 20, 0, 1, SchedulerKind.ProportionalShare, [vm]) { Clock = HostTestSupport.SlowClock, WallTimeout = TimeSpan.FromMinutes(3) };
        using var host = new VirtualMachineHost(spec, console: null);
        var run = new Thread(host.Run) { IsBackground = true, Name = "test host dispatch" };
        using var api = new ControlApiHarness(host, ownsHost: false);
        run.Start();
        try
        {
            static ulong Counter(System.Text.Json.JsonElement counters, string name) => counters.EnumerateArray()
                .Single(c => c.GetProperty("name").GetString() == name).GetProperty("value").GetUInt64();
            var watch = Stopwatch.StartNew();
            System.Text.Json.JsonElement document;
            while (true)
            {
                document = api.GetJson("/vms/a");
                var each = document.GetProperty("vcpus").EnumerateArray().ToList();
                if (each.Count == 2 && each.All(v => Counter(v.GetProperty("counters"), "run_cycles") > 0))
                {
                    break;
                }
                Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), "both vCPUs did not run within 60 s");
                Thread.Sleep(20);
            }
            Assert.Equal(2, document.GetProperty("vcpu_count").GetInt32());
            var vcpus = document.GetProperty("vcpus").EnumerateArray().ToList();
            Assert.Equal([0, 1], vcpus.Select(v => v.GetProperty("index").GetInt32()));
            // One document is one moment (taken under the host's lock): the VM's run time is its vCPUs' added.
            Assert.Equal(vcpus.Sum(v => (long)Counter(v.GetProperty("counters"), "run_cycles")), (long)Counter(document.GetProperty("counters"), "run_cycles"));
            Assert.Contains(vcpus[1].GetProperty("counters").EnumerateArray(), c => c.GetProperty("name").GetString() == "costop_rounds");

            var refused = api.Send("PUT", "/vms/a/snapshot", """{"path":"/tmp/nestor-never-written.snap"}""");
            Assert.Equal(409, refused.Status);
            Assert.Contains("has 2 vCPUs", ControlApiHarness.FaultOf(refused.Body));
            Assert.False(File.Exists("/tmp/nestor-never-written.snap"));
        }
        finally
        {
            try
            {
                host.Stop("a");
            }
            catch (InvalidOperationException)
            {
            }
            run.Join(TimeSpan.FromSeconds(60));
        }
    }
}
