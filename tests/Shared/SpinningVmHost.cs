using Nestor.Hypervisor;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Hosting;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Tests.Shared;

/// <summary>A small <see cref="IHostControl"/> over real VMs for the control API's tests, independent of the host
/// of many VMs: each VM is a real <see cref="Vm"/> on the software machine running a guest that counts in RBX and
/// writes COM1's scratch register (one port exit per iteration) forever, on a thread of its own. Pause stops the run
/// through its <see cref="RunControl"/> and returns once the vCPU's state is saved, so the instruction count read
/// after it is the guest's own and stays put until Resume runs it again from where it stopped.</summary>
internal sealed class SpinningVmHost : IHostControl, IDisposable
{
    private readonly object gate = new(); // Monitor.Wait/PulseAll: the run threads park on it
    private readonly List<Guest> guests = [];

    /// <param name="names">The VMs, in order.</param>
    /// <param name="running">Start them running (else paused: no host CPU spent until a test resumes one).</param>
    public SpinningVmHost(IEnumerable<string> names, bool running)
    {
        foreach (string name in names)
        {
            var guest = new Guest(name, Vm.Create(new VmConfig
            {
                Kernel = GuestAssembler.Flat(name, Spinner()),
                MemoryBytes = 16UL << 20,
                SerialOutput = Stream.Null,
            }), running ? HostedVmState.Running : HostedVmState.Paused);
            guests.Add(guest);
            guest.Thread = new Thread(() => RunLoop(guest)) { IsBackground = true, Name = $"test-vm-{name}" };
            guest.Thread.Start();
        }
    }

    /// <summary>How many times a member of the contract was called, by name: a test checks what reached the host.</summary>
    public Dictionary<string, int> Calls { get; } = [];

    private static byte[] Spinner() => GuestAssembler.Assemble(a =>
    {
        var loop = a.CreateLabel();
        a.mov(dx, (ushort)(Uart16550.Com1 + 7)); // the scratch register: a claimed port with no side effect
        a.Label(ref loop);
        a.inc(rbx);
        a.@out(dx, al);
        a.jmp(loop);
    });

    private sealed class Guest(string name, Vm vm, HostedVmState state)
    {
        public string Name { get; } = name;
        public Vm Vm { get; } = vm;
        public SimEngine Engine { get; } = new(new());
        public HostedVmState State = state;
        public CpuControls Cpu = new(1000, 0, null);
        public RunControl? Run;
        public bool Parked = true;
        public string? Outcome;
        public long Instructions;
        public long Runs;
        public Thread? Thread;
    }

    private void RunLoop(Guest guest)
    {
        while (true)
        {
            RunControl control;
            lock (gate)
            {
                while (guest.State != HostedVmState.Running)
                {
                    if (guest.State == HostedVmState.Stopped)
                    {
                        return;
                    }
                    guest.Parked = true;
                    Monitor.PulseAll(gate);
                    Monitor.Wait(gate);
                }
                guest.Parked = false;
                control = guest.Run = new RunControl();
            }
            var outcome = guest.Vm.Run(guest.Engine, control).Outcome;
            lock (gate)
            {
                guest.Runs++;
                guest.Instructions = guest.Vm.Vcpus[0].State.InstructionsRetired;
                guest.Run = null;
                if (outcome.Kind != VmOutcomeKind.Interrupted)
                {
                    guest.State = HostedVmState.Stopped;
                    guest.Outcome = outcome.Message;
                }
                guest.Parked = true;
                Monitor.PulseAll(gate);
            }
        }
    }

    private Guest Find(string name, string call)
    {
        Calls[call] = Calls.GetValueOrDefault(call) + 1;
        return guests.FirstOrDefault(g => g.Name == name) ?? throw new BadInputException($"no VM named '{name}'");
    }

    private HostedVmInfo Info(Guest g) => new(g.Name, g.State, "native", 1, g.Cpu, new MemoryControls(g.Vm.Memory.Size, g.Vm.Memory.Size, 1000),
        g.Outcome,
        [
            new("instructions_retired", (ulong)g.Instructions, ""),
            new("vm_exits", (ulong)g.Vm.Exits.TotalExits, ""),
            new("runs", (ulong)g.Runs, ""),
            new("memory_size", g.Vm.Memory.Size, "bytes"),
        ]);

    public IReadOnlyList<HostedVmInfo> List()
    {
        lock (gate)
        {
            Calls["List"] = Calls.GetValueOrDefault("List") + 1;
            return [.. guests.Select(Info)];
        }
    }

    public HostedVmInfo Get(string name)
    {
        lock (gate)
        {
            return Info(Find(name, "Get"));
        }
    }

    public void Pause(string name)
    {
        lock (gate)
        {
            var g = Find(name, "Pause");
            if (g.State != HostedVmState.Running)
            {
                throw new InvalidOperationException($"{name} is {g.State}: only a running VM can be paused");
            }
            g.State = HostedVmState.Paused;
            g.Run?.Stop(VmOutcomeKind.Interrupted);
            while (!g.Parked)
            {
                Monitor.Wait(gate);
            }
        }
    }

    public void Resume(string name)
    {
        lock (gate)
        {
            var g = Find(name, "Resume");
            if (g.State != HostedVmState.Paused)
            {
                throw new InvalidOperationException($"{name} is {g.State}: only a paused VM can be resumed");
            }
            g.State = HostedVmState.Running;
            Monitor.PulseAll(gate);
        }
    }

    public void Stop(string name)
    {
        lock (gate)
        {
            var g = Find(name, "Stop");
            if (g.State is not (HostedVmState.Running or HostedVmState.Paused))
            {
                throw new InvalidOperationException($"{name} is {g.State}: only a running or paused VM can be stopped");
            }
            g.State = HostedVmState.Stopped;
            g.Outcome = "stopped by the operator";
            g.Run?.Stop(VmOutcomeKind.Interrupted);
            Monitor.PulseAll(gate);
            while (!g.Parked)
            {
                Monitor.Wait(gate);
            }
        }
    }

    public void SetCpu(string name, CpuControls controls)
    {
        lock (gate)
        {
            var g = Find(name, "SetCpu");
            if (controls.Shares < 1)
            {
                throw new BadInputException($"shares {controls.Shares} is below 1", "Give 1 or more.");
            }
            if (controls.ReservationPercent is < 0 or > 100 || controls.LimitPercent is <= 0 or > 100)
            {
                throw new BadInputException("a reservation or limit is outside 0..100 percent of one host CPU");
            }
            if (controls.LimitPercent < controls.ReservationPercent)
            {
                throw new BadInputException($"the limit {controls.LimitPercent}% is below the reservation {controls.ReservationPercent}%");
            }
            g.Cpu = controls;
        }
    }

    public IReadOnlyList<EngineCounter> HostCounters()
    {
        lock (gate)
        {
            Calls["HostCounters"] = Calls.GetValueOrDefault("HostCounters") + 1;
            return
            [
                new("host_cpus", 1, ""),
                new("vms_running", (ulong)guests.Count(g => g.State == HostedVmState.Running), ""),
            ];
        }
    }

    /// <summary>Stops every VM and waits for their threads; then disposes of the VMs.</summary>
    public void Dispose()
    {
        lock (gate)
        {
            foreach (var g in guests)
            {
                g.State = HostedVmState.Stopped;
                g.Run?.Stop(VmOutcomeKind.Interrupted);
            }
            Monitor.PulseAll(gate);
        }
        foreach (var g in guests)
        {
            g.Thread?.Join(TimeSpan.FromSeconds(30));
            g.Engine.Dispose();
            g.Vm.Dispose();
        }
    }
}
