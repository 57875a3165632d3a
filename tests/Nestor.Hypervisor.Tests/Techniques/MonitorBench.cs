using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Platform;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Tests;

/// <summary>A VM with a small assembled kernel, its CPU at the kernel's entry and a VMM entered on it, built the way
/// the software engine builds them, but not run: a test hands the VMM exits as the CPU would raise them.</summary>
internal sealed class MonitorBench : IDisposable
{
    private MonitorBench(Vm vm, Cpu cpu, GuestPhysicalMap map, VirtualMachineMonitor monitor)
    {
        (Vm, Cpu, Map, Monitor) = (vm, cpu, map, monitor);
    }

    /// <summary>Where the kernel's code starts (the flat kernel's load address, also its entry).</summary>
    public static ulong CodeAddress => GuestMemoryLayout.DefaultFlatLoadAddress.Value;

    public Vm Vm { get; }
    public Cpu Cpu { get; }
    public GuestPhysicalMap Map { get; }
    public VirtualMachineMonitor Monitor { get; }

    public static MonitorBench Create(Technique technique, MemoryVirtualization memory, Action<Assembler>? code = null,
        bool largeNestedPages = false)
    {
        var vm = Vm.Create(new VmConfig
        {
            Kernel = GuestAssembler.Flat("bench", GuestAssembler.Assemble(code ?? (a => a.hlt()))),
            MemoryBytes = 32UL << 20,
            SerialOutput = Stream.Null,
        });
        var pool = vm.Host.FramePool;
        var platform = new VmPlatform(vm, new RunControl(), new SoftwareCpuidModel(technique == Technique.Paravirtual));
        var cpu = new Cpu(pool.Memory, platform, MmuConfiguration.Default, pool.Memory.Limit);
        cpu.LoadState(in vm.Vcpus[0].State);
        var map = vm.Host.NewPhysicalMap(vm);
        var nested = memory == MemoryVirtualization.Nested ? new NestedPageTable(pool) : null;
        var shadow = memory == MemoryVirtualization.Shadow ? new ShadowPaging(map, pool, vm.Memory) : null;
        map.Attach(cpu.Mmu, nested, shadow);
        var monitor = VirtualMachineMonitor.Create(vm, new VmControlStructure(), map, nested, shadow, largeNestedPages, technique);
        monitor.Enter(cpu);
        return new MonitorBench(vm, cpu, map, monitor);
    }

    /// <summary>Hands the VMM <paramref name="exit"/>, as the CPU does on a VM exit.</summary>
    public VmExitAction Exit(ref VmExit exit) => Monitor.HandleExit(Cpu, ref exit);

    /// <summary>Hands the VMM an exit with just <paramref name="reason"/> (and an instruction length).</summary>
    public VmExitAction Exit(ExitReason reason, int instructionLength = 0)
    {
        var exit = new VmExit { Reason = reason, InstructionLength = instructionLength };
        return Exit(ref exit);
    }

    public void Dispose()
    {
        Map.Dispose();
        Vm.Dispose();
    }
}
