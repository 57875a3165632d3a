using System.Text;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Hosting.ControlApi;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;
using Xunit;

namespace Nestor.Hypervisor.Tests.Snapshots;

/// <summary>Snapshots of a VM of a host of many VMs (issue 16), through <see cref="IHostControl.Snapshot"/> and the
/// control API's <c>PUT /vms/NAME/snapshot</c>: of a paused VM (its vCPU thread woken out of its wait to be saved)
/// and of a running one (paused, saved, resumed), into one file or with a memory file. Taking them leaves the VM's
/// run what it would have been (its console output and instructions retired equal an uninterrupted host's); each
/// restored, into a new host (<see cref="VirtualMachineHost.Restores"/>) or into a plain VM as <c>nestor run
/// --restore</c> makes, runs on to the same end. A save that cannot be written is refused and the VM runs on.</summary>
public class HostSnapshotTests
{
    private static readonly HostClock Clock = new(100_000);

    private static HostedVmSpec Spec() =>
        new("os", BuiltInGuests.Get("nestoros")!, "", new SimOptions { Technique = Technique.HardwareAssist, Memory = MemoryVirtualization.Nested },
            new MemoryControls(64UL << 20, 64UL << 20, 640), new CpuControls(1000, 0, null));

    private static HostSpec Host(params HostedVmSpec[] vms) =>
        new(1UL << 30, 0, 1, SchedulerKind.ProportionalShare, vms) { Clock = Clock, WallTimeout = TimeSpan.FromMinutes(5) };

    private static string TempPath(string suffix) => Path.Combine(Path.GetTempPath(), $"nestor-hostsnap-{Guid.NewGuid():N}{suffix}");

    private static (string Serial, long Instructions, IReadOnlyList<string> Results) Ended(VirtualMachineHost host)
    {
        var vm = host.Vms.Single(v => v.Name == "os");
        Assert.True(vm.OutcomeKind == VmOutcomeKind.DebugExit, vm.Outcome);
        return (vm.Serial!.Text, vm.Vm!.Vcpus[0].State.InstructionsRetired, vm.ResultLines);
    }

    [Fact]
    public void Snapshots_of_a_paused_and_a_running_hosted_vm_leave_its_run_unchanged_and_each_restores_to_the_same_end()
    {
        string paused = TempPath(".snap"), running = TempPath(".snap"), memory = TempPath(".mem"), socket = TempPath(".sock");
        string readOnly = Path.Combine(Path.GetTempPath(), $"nestor-hostsnap-missing-{Guid.NewGuid():N}", "vm.snap");
        try
        {
            (string Serial, long Instructions, IReadOnlyList<string> Results) whole;
            using (var host = new VirtualMachineHost(Host(Spec()), null))
            {
                host.Run();
                whole = Ended(host);
            }
            Assert.NotEmpty(whole.Results);

            SnapshotTaken first, second;
            using (var host = new VirtualMachineHost(Host(Spec()), null))
            using (ControlApiServer.Start(socket, host))
            using (var client = new ControlApiClient(socket, TimeSpan.FromMinutes(2)))
            {
                IHostControl control = host;
                // Each round held 2 ms of wall time (between rounds, every vCPU stopped: the virtual clock and so the
                // guest's run are unchanged) until the running snapshot is taken, so that a busy machine descheduling
                // this thread cannot let the VM run to its end first (a CI run met exactly that: 409, 'os' is stopped).
                int slow = 1;
                host.AfterReclaim = (_, _) =>
                {
                    if (Volatile.Read(ref slow) == 1)
                    {
                        Thread.Sleep(2);
                    }
                };
                var thread = new Thread(host.Run);
                thread.Start();
                try
                {
                    Assert.True(SpinWait.SpinUntil(() => host.Rounds > 20, TimeSpan.FromMinutes(1)));
                    // Paused: its thread waits to be dispatched, inside the engine; the snapshot wakes it, and it stays paused.
                    control.Pause("os");
                    first = control.Snapshot("os", new SnapshotRequest(paused));
                    Assert.Equal(HostedVmState.Paused, first.State);
                    Assert.Equal(HostedVmState.Paused, control.Get("os").State);
                    // A save that cannot be written (no such directory) is refused, and nothing changes.
                    var refused = Assert.Throws<BadInputException>(() => control.Snapshot("os", new SnapshotRequest(readOnly)));
                    Assert.Contains("VM 'os' was not saved, and runs on as before: cannot write the snapshot", refused.Message);
                    Assert.Equal(HostedVmState.Paused, control.Get("os").State);
                    control.Resume("os");
                    Assert.True(SpinWait.SpinUntil(() => host.Rounds > 200, TimeSpan.FromMinutes(1)));
                    // Running: through the control API's route, with a memory file; paused, saved and resumed.
                    var document = client.Snapshot("os", new SnapshotCreateDocument(running, memory));
                    Assert.Equal("Running", document.State);
                    Assert.Equal(memory, document.MemPath);
                    Assert.Equal(64L << 20, document.MemBytes);
                    Volatile.Write(ref slow, 0);
                    second = new SnapshotTaken(document.Path, document.Bytes, document.MemPath, document.MemBytes, document.InstructionsRetired, HostedVmState.Running);
                    Assert.True(second.InstructionsRetired > first.InstructionsRetired);
                    var conflict = Assert.Throws<ControlApiRefusedException>(() => client.Snapshot("nobody", new SnapshotCreateDocument(running)));
                    Assert.Equal(404, conflict.Status);
                }
                finally
                {
                    Volatile.Write(ref slow, 0);
                    thread.Join();
                }
                var taken = Ended(host);
                Assert.Equal(whole.Serial, taken.Serial);
                Assert.Equal(whole.Instructions, taken.Instructions);
            }

            // Each snapshot restored into a new host, and the second also into a VM as nestor run --restore builds it.
            foreach (var (file, at) in new[] { (paused, first.InstructionsRetired), (running, second.InstructionsRetired) })
            {
                using var host = new VirtualMachineHost(Host(Spec()), null) { Restores = new Dictionary<string, string> { ["os"] = file } };
                host.Run();
                var restored = Ended(host);
                Assert.Equal(whole.Instructions, restored.Instructions);
                Assert.EndsWith(restored.Serial, whole.Serial);
                Assert.Equal(at, SnapshotFile.Read(file).Header.InstructionsRetired);
            }
            var serial = new MemoryStream();
            var spec = Spec();
            using (var vm = Vm.Create(new VmConfig { Kernel = spec.Kernel, MemoryBytes = spec.Memory.MaxBytes, Sim = spec.Sim, SerialOutput = serial }))
            using (var engine = new SimEngine(spec.Sim))
            {
                SnapshotFile.Restore(running, vm, engine);
                Assert.Equal(VmOutcomeKind.DebugExit, vm.Run(engine).Outcome.Kind);
                vm.Serial.Flush();
                Assert.Equal(whole.Instructions, vm.Vcpus[0].State.InstructionsRetired);
            }
            string rest = Encoding.UTF8.GetString(serial.ToArray());
            Assert.NotEmpty(rest);
            Assert.EndsWith(rest, whole.Serial);
        }
        finally
        {
            foreach (string f in new[] { paused, running, memory })
            {
                File.Delete(f);
            }
        }
    }

    [Fact]
    public void A_snapshot_of_a_vm_that_is_not_running_or_of_a_wrong_snapshot_into_a_host_is_refused()
    {
        using (var host = new VirtualMachineHost(Host(Spec()), null))
        {
            host.Run();
            IHostControl control = host;
            var e = Assert.Throws<InvalidOperationException>(() => control.Snapshot("os", new SnapshotRequest(TempPath(".snap"))));
            Assert.Contains("VM 'os' is stopped: only a running or paused VM can be saved", e.Message);
        }
        string bogus = TempPath(".snap");
        File.WriteAllBytes(bogus, Encoding.ASCII.GetBytes("not a snapshot at all"));
        try
        {
            using var host = new VirtualMachineHost(Host(Spec()), null) { Restores = new Dictionary<string, string> { ["os"] = bogus } };
            var refused = Assert.Throws<SnapshotFormatException>(host.Run);
            Assert.Contains("not a Nestor snapshot file", refused.Message);
        }
        finally
        {
            File.Delete(bogus);
        }
    }
}
