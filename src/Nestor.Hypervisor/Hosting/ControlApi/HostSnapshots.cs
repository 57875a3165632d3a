using System.Text.Json.Serialization;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Persistence;
using Nestor.Hypervisor.Scheduling;

namespace Nestor.Hypervisor.Hosting
{
    /// <summary>A snapshot to take of a hosted VM (<see cref="IHostControl.Snapshot"/>; the control API's
    /// <c>PUT /vms/{name}/snapshot</c>, Firecracker's <c>PUT /snapshot/create</c> for one VM of many).</summary>
    /// <param name="Path">The snapshot (state) file.</param>
    /// <param name="MemoryPath">A separate memory file for its RAM (Firecracker's <c>mem_file_path</c>), or null to
    /// keep the RAM in the state file.</param>
    /// <param name="StayPaused">Leave the VM paused after the save (to copy its disks, or to migrate it).</param>
    public sealed record SnapshotRequest(string Path, string? MemoryPath = null, bool StayPaused = false);

    /// <summary>A snapshot a host took.</summary>
    /// <param name="Path">The state file.</param>
    /// <param name="Bytes">Its length.</param>
    /// <param name="MemoryPath">The memory file, if one was written.</param>
    /// <param name="MemoryBytes">Its length (its holes included), or 0.</param>
    /// <param name="InstructionsRetired">The VM's instructions retired when it was taken.</param>
    /// <param name="State">The VM's state after the snapshot: running again, or paused.</param>
    public sealed record SnapshotTaken(string Path, long Bytes, string? MemoryPath, long MemoryBytes, long InstructionsRetired, HostedVmState State);

    // Snapshots of hosted VMs (issue 16). A VM's state can be saved only between two runs of its engine (the
    // software machine's registers, VMM and caches live in the run), so a snapshot stops the VM's run as SIGUSR1 does
    // in `nestor run`: its RunControl is asked to stop, the engine returns at its next check, the vCPU thread saves
    // the VM and continues it on a fresh engine restored from those very bytes, so what runs on is exactly what the
    // file holds. A paused VM's thread waits to be dispatched, inside the engine: VcpuQuantum.Interrupt wakes it for
    // one instruction (outside any round, so not charged to the scheduler's books) so that it sees the stop.
    public sealed partial class VirtualMachineHost
    {
        private readonly Dictionary<HostedVm, PendingSnapshot> snapshots = [];

        /// <summary>Snapshots to restore VMs from at power-on, by VM name (<c>nestor host run --restore NAME=FILE</c>):
        /// the VM is created from its configuration as usual, checked against the snapshot, and continues from it.</summary>
        public IReadOnlyDictionary<string, string> Restores { get; init; } = new Dictionary<string, string>();

        /// <summary>How long <see cref="Snapshot"/> waits for the VM's thread to come out of its run and save.</summary>
        public TimeSpan SnapshotTimeout { get; init; } = TimeSpan.FromMinutes(2);

        private sealed class PendingSnapshot(SnapshotRequest request)
        {
            public SnapshotRequest Request { get; } = request;
            public ManualResetEventSlim Done { get; } = new(false);
            public SnapshotTaken? Taken { get; set; }
            public Exception? Failure { get; set; }
        }

        private void RestoreIfAsked(HostedVm vm)
        {
            if (!Restores.TryGetValue(vm.Name, out string? path))
            {
                return;
            }
            var header = SnapshotFile.Restore(path, vm.Vm!, vm.Engine!);
            lock (consoleGate)
            {
                console?.WriteLine($"nestor: VM '{vm.Name}' restored from '{path}' ({header.TechniqueName}, {header.InstructionsRetired:N0} instructions retired)");
            }
        }

        // The vCPU thread's run: each stop for a snapshot saves the VM and continues it on a fresh engine.
        private RunResult RunTakingSnapshots(HostedVm vm)
        {
            while (true)
            {
                var result = vm.Vm!.Run(vm.Engine!, vm.Control);
                PendingSnapshot? pending;
                lock (gate)
                {
                    snapshots.TryGetValue(vm, out pending);
                }
                if (pending is null || result.Outcome.Kind != VmOutcomeKind.Breakpoint || vm.Control.StopReason != VmOutcomeKind.Breakpoint)
                {
                    if (pending is not null)
                    {
                        Complete(vm, pending, null, new InvalidOperationException($"VM '{vm.Name}' ended before its snapshot was taken: {result.Outcome.Message}"));
                    }
                    return result;
                }
                TakenSnapshot taken = SnapshotFile.Take(vm.Vm, vm.Engine!);
                SnapshotTaken? done = null;
                Exception? failure = null;
                try
                {
                    var saved = SnapshotFile.Save(taken, pending.Request.Path, pending.Request.MemoryPath);
                    done = new SnapshotTaken(saved.Path, saved.Bytes, saved.MemoryFile?.Path, saved.MemoryFile?.Bytes ?? 0,
                        taken.Contents.Header.InstructionsRetired, HostedVmState.Paused);
                }
                catch (NestorException e)
                {
                    failure = e; // not saved (a full disk, a read-only directory): the VM runs on as it was
                }
                // Saved or not, the VM continues from the state taken, on a fresh engine (the software machine
                // rebuilds its VMM for each run: what continues is what the snapshot holds).
                var fresh = new SimEngine(vm.Spec.Sim) { Quantum = vm.Quantum };
                SnapshotFile.Restore(taken.Contents, vm.Vm, fresh);
                var old = vm.Engine;
                vm.Engine = fresh;
                old?.Dispose();
                vm.Control.Resume(VmOutcomeKind.Breakpoint);
                if (vm.StopCause is not null)
                {
                    vm.Control.Stop(VmOutcomeKind.Terminated); // the host stopped it meanwhile: that stop stands
                }
                Complete(vm, pending, done, failure);
            }
        }

        private void Complete(HostedVm vm, PendingSnapshot pending, SnapshotTaken? taken, Exception? failure)
        {
            lock (gate)
            {
                snapshots.Remove(vm);
            }
            pending.Taken = taken;
            pending.Failure = failure;
            pending.Done.Set();
        }

        /// <inheritdoc/>
        public SnapshotTaken Snapshot(string name, SnapshotRequest request)
        {
            if (string.IsNullOrWhiteSpace(request.Path))
            {
                throw new BadInputException("the snapshot needs a path", "Give {\"path\": FILE} (and \"mem_path\" for a separate memory file)");
            }
            HostedVm vm;
            PendingSnapshot pending;
            bool wasPaused;
            lock (gate)
            {
                vm = Find(name);
                if (vm.State is not (HostedVmState.Running or HostedVmState.Paused) || vm.Thread is null || vm.Vcpu.State == VcpuRunState.Done)
                {
                    throw new InvalidOperationException($"VM '{name}' is {Describe(vm)}: only a running or paused VM can be saved");
                }
                if (vm.Spec.VcpuCount > 1)
                {
                    // Its vCPUs are paused round by round, not all at one instruction boundary a snapshot could record.
                    throw new InvalidOperationException($"VM '{name}' has {vm.Spec.VcpuCount} vCPUs: a hosted VM with several cannot be saved yet (run it with --cpus {vm.Spec.VcpuCount} under `nestor run` to snapshot it)");
                }
                if (vm.Vm is { } machine && Paging.GuestPhysicalMap.AwaitsPages(machine.Memory))
                {
                    throw new InvalidOperationException($"VM '{name}' is still receiving pages of its post-copy migration: save it once they have all arrived");
                }
                if (snapshots.ContainsKey(vm))
                {
                    throw new InvalidOperationException($"a snapshot of VM '{name}' is being taken: wait for it to finish");
                }
                wasPaused = vm.State == HostedVmState.Paused;
                if (!wasPaused)
                {
                    vm.State = HostedVmState.Paused; // as Pause: descheduled from the next round
                    vm.Vcpu.State = VcpuRunState.Paused;
                    vm.Vcpu.ReadySince = -1;
                }
                pending = new PendingSnapshot(request);
                snapshots[vm] = pending;
            }
            // The event is not disposed of: a vCPU thread late past the timeout may still set it.
            {
                vm.Control.Stop(VmOutcomeKind.Breakpoint);
                var clock = System.Diagnostics.Stopwatch.StartNew();
                // Mid-round, the engine sees the stop at its next check; between rounds its thread waits to be
                // dispatched and is woken for it.
                while (!pending.Done.Wait(1))
                {
                    if (!pending.Done.IsSet)
                    {
                        vm.Quantum.Interrupt();
                    }
                    if (vm.Quantum.Finished && !pending.Done.Wait(100))
                    {
                        lock (gate)
                        {
                            snapshots.Remove(vm);
                        }
                        throw new InvalidOperationException($"VM '{name}' ended before its snapshot was taken");
                    }
                    if (clock.Elapsed > SnapshotTimeout)
                    {
                        throw new InvalidOperationException($"VM '{name}' did not stop for its snapshot within {SnapshotTimeout.TotalSeconds:0} s");
                    }
                }
                if (!wasPaused && !request.StayPaused)
                {
                    lock (gate)
                    {
                        if (vm.State == HostedVmState.Paused)
                        {
                            vm.State = HostedVmState.Running;
                            if (vm.Vcpu.State == VcpuRunState.Paused)
                            {
                                vm.Vcpu.State = VcpuRunState.Runnable;
                                vm.Vcpu.ReadySince = now;
                                scheduler.Woke(vm.Vcpu, now);
                            }
                            operatorActed.Set();
                        }
                    }
                }
                if (pending.Failure is { } failure)
                {
                    throw failure is NestorException n ? new BadInputException($"VM '{name}' was not saved, and runs on as before: {n.Message}", n.Advice) : failure;
                }
                var taken = pending.Taken!;
                lock (gate)
                {
                    return taken with { State = vm.State };
                }
            }
        }
    }
}

namespace Nestor.Hypervisor.Hosting.ControlApi
{
    /// <summary>The body of <c>PUT /vms/{name}/snapshot</c>: Firecracker's <c>snapshot_path</c>/<c>mem_file_path</c>
    /// as <c>path</c> and <c>mem_path</c>, and <c>stay_paused</c>.</summary>
    public sealed record SnapshotCreateDocument(string? Path, string? MemPath = null, bool StayPaused = false);

    /// <summary>What <c>PUT /vms/{name}/snapshot</c> answers: the files written and the VM's state after.</summary>
    public sealed record SnapshotDocument(string Path, long Bytes, string? MemPath, long MemBytes, long InstructionsRetired, string State);

    /// <summary>The snapshot route's JSON, with the control API's options (snake_case, strict).</summary>
    [JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow, NumberHandling = JsonNumberHandling.Strict,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
    [JsonSerializable(typeof(SnapshotCreateDocument))]
    [JsonSerializable(typeof(SnapshotDocument))]
    public sealed partial class ControlApiSnapshotJson : JsonSerializerContext;

    /// <summary>The snapshot route, as a row of <see cref="ControlApiRoutes"/>' table, and its client call.</summary>
    internal static class SnapshotRoute
    {
        /// <summary>Handles <c>PUT /vms/{name}/snapshot</c>.</summary>
        public static SnapshotDocument Put(IHostControl host, string name, SnapshotCreateDocument document)
        {
            var taken = host.Snapshot(name, new SnapshotRequest(
                document.Path ?? throw new BadInputException("path is missing: give {\"path\": FILE}"), document.MemPath, document.StayPaused));
            return new SnapshotDocument(taken.Path, taken.Bytes, taken.MemoryPath, taken.MemoryBytes, taken.InstructionsRetired, taken.State.ToString());
        }
    }
}
