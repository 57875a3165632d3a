using System.Diagnostics;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Platform;
using Nestor.Hypervisor.State;
using Nestor.Kvm;

namespace Nestor.Hypervisor.Tests;

/// <summary>The platform both engines hand their exits to: one meaning for an exit, one place that decides a stop.</summary>
public class VmPlatformTests
{
    private static Vm NewVm(MemoryStream? serial = null) => Vm.Create(new VmConfig
    {
        Kernel = GuestAssembler.Flat("nothing", [0xF4]),
        MemoryBytes = 4UL << 20,
        SerialOutput = serial ?? new MemoryStream(),
    });

    [Fact]
    public void A_string_io_exit_is_one_exit_whose_items_all_reach_the_device_and_the_port_table()
    {
        var serial = new MemoryStream();
        using var vm = NewVm(serial);
        var platform = new VmPlatform(vm, new RunControl(), new SoftwareCpuidModel(false));
        byte[] data = "ok\n"u8.ToArray();
        platform.PortAccess(Uart16550.Com1, 1, isWrite: true, data, data.Length, Stopwatch.GetTimestamp());
        platform.EndRun();
        Assert.Equal("ok\n", System.Text.Encoding.ASCII.GetString(serial.ToArray()));
        Assert.Equal(1, vm.Exits.Count(VmExitReason.PortWrite));
        var port = Assert.Single(vm.Exits.ByPort);
        Assert.Equal((Uart16550.Com1, 3L, 0L), (port.Port, port.Writes, port.Reads));
        // The same bytes one trapped OUT at a time (the software machine) are three exits and the same table row.
        using var other = NewVm();
        var trapped = new VmPlatform(other, new RunControl(), new SoftwareCpuidModel(false));
        foreach (byte b in data)
        {
            trapped.PortWrite(Uart16550.Com1, 1, b);
        }
        Assert.Equal(3, other.Exits.Count(VmExitReason.PortWrite));
        Assert.Equal(3L, Assert.Single(other.Exits.ByPort).Writes);
    }

    [Fact]
    public void Port_reads_fill_every_item_little_endian_and_unclaimed_ports_read_as_all_ones()
    {
        using var vm = NewVm();
        var platform = new VmPlatform(vm, new RunControl(), new SoftwareCpuidModel(false));
        byte[] data = new byte[4];
        platform.PortAccess(0x80, 2, isWrite: false, data, 2, Stopwatch.GetTimestamp());
        Assert.Equal(new byte[] { 0xFF, 0xFF, 0xFF, 0xFF }, data);
        Assert.Equal(0xFFFFu, platform.PortRead(0x80, 2));
        Assert.Equal(2, vm.Exits.Count(VmExitReason.PortRead));
        Assert.Equal(3L, Assert.Single(vm.Exits.ByPort).Reads);
    }

    [Fact]
    public void Mmio_exits_reach_the_bus_with_their_bytes_in_order()
    {
        using var vm = NewVm();
        var device = new RecordingMmio();
        vm.Bus.Claim(device, 0xFE00_0000, 0x1000);
        var platform = new VmPlatform(vm, new RunControl(), new SoftwareCpuidModel(false));
        platform.MmioAccess(0xFE00_0010, isWrite: true, new byte[] { 0x11, 0x22, 0x33, 0x44 }, Stopwatch.GetTimestamp());
        Assert.Equal((0xFE00_0010UL, 4, 0x4433_2211UL), device.LastWrite);
        byte[] read = new byte[2];
        platform.MmioAccess(0xFE00_0020, isWrite: false, read, Stopwatch.GetTimestamp());
        Assert.Equal(new byte[] { 0x20, 0x00 }, read); // the device returns the offset
        Assert.Equal(0x30UL, platform.MmioRead(0xFE00_0030, 8));
        Assert.Equal(1, vm.Exits.Count(VmExitReason.MmioWrite));
        Assert.Equal(2, vm.Exits.Count(VmExitReason.MmioRead));
    }

    [Fact]
    public void A_debug_exit_decides_the_outcome_even_when_a_stop_was_asked_for_at_the_same_time()
    {
        using var vm = NewVm();
        var control = new RunControl();
        var platform = new VmPlatform(vm, control, new SoftwareCpuidModel(false));
        var state = new VcpuState { Rip = 0x1234 };
        Assert.False(platform.StopRequested);
        Assert.Null(platform.StopOutcome(state));
        control.Stop(VmOutcomeKind.Timeout);
        Assert.True(platform.StopRequested);
        Assert.Equal(VmOutcomeKind.Timeout, platform.StopOutcome(state)!.Kind);
        platform.PortWrite(DebugExitPort.Port, 4, 5);
        var outcome = platform.StopOutcome(state)!;
        Assert.Equal((VmOutcomeKind.DebugExit, 5u), (outcome.Kind, outcome.GuestStatus!.Value));
    }

    [Fact]
    public void Triple_fault_and_halt_are_worded_once_and_counted_as_exits()
    {
        using var vm = NewVm();
        var platform = new VmPlatform(vm, new RunControl(), new SoftwareCpuidModel(false));
        var noIdt = platform.TripleFault(new VcpuState { Rip = 0x100000 }, cause: null);
        Assert.Equal(VmOutcomeKind.TripleFault, noIdt.Kind);
        Assert.Contains("at rip=0x100000", noIdt.Message);
        Assert.Contains("because the guest has no IDT", noIdt.Message);
        Assert.Contains("nor the double fault that followed", noIdt.Message);
        var known = platform.TripleFault(new VcpuState { Idtr = new DescriptorTableState(0x1000, 0xFFF) }, "#PF at rip=0x5 could not be delivered", "A note.");
        Assert.Contains(": #PF at rip=0x5 could not be delivered, nor the double fault", known.Message);
        Assert.EndsWith("state below. A note.", known.Message);
        Assert.Equal(VmOutcomeKind.Halted, platform.Halted(new VcpuState { Rip = 0x101 }).Kind);
        Assert.Equal(2, vm.Exits.Count(VmExitReason.Shutdown));
        Assert.Equal(1, vm.Exits.Count(VmExitReason.Halt));
        Assert.Equal(3, vm.Exits.TotalExits);
    }

    [Fact]
    public void Cpuid_models_answer_per_engine()
    {
        using var vm = NewVm();
        var sim = new VmPlatform(vm, new RunControl(), new SoftwareCpuidModel(paravirtual: false));
        var (_, b, c, d) = sim.Cpuid(0x4000_0000, 0);
        Assert.Equal("NestorNestor", string.Concat(new[] { b, c, d }.Select(r => System.Text.Encoding.ASCII.GetString(BitConverter.GetBytes(r)))));
        var kvm = new KvmCpuidModel(
        [
            new KvmCpuidEntry { Function = 7, Index = 0, Flags = KvmCpuidEntry.SignificantIndex, Ebx = 0x11 },
            new KvmCpuidEntry { Function = 7, Index = 1, Flags = KvmCpuidEntry.SignificantIndex, Ebx = 0x22 },
            new KvmCpuidEntry { Function = 1, Ecx = 0x33 },
        ]);
        Assert.Equal(0x22u, kvm.Query(7, 1).Ebx);
        Assert.Equal(0x11u, kvm.Query(7, 0).Ebx);
        Assert.Equal(0x33u, kvm.Query(1, 5).Ecx); // no significant index: every subleaf
        Assert.Equal((0u, 0u, 0u, 0u), kvm.Query(0x8000_0008, 0));
    }

    [Fact]
    public void The_engine_factory_builds_what_the_configuration_names()
    {
        var sim = new VmConfig { Kernel = GuestAssembler.Flat("x", [0xF4]), Sim = new Techniques.SimOptions { Technique = Techniques.Technique.Paravirtual } };
        using var engine = Assert.IsType<SimEngine>(EngineFactory.Create(sim));
        Assert.Equal(Techniques.Technique.Paravirtual, engine.Options.Technique);
        Assert.IsType<KvmEngine>(EngineFactory.Create(new VmConfig { Kernel = sim.Kernel, Engine = EngineKind.Kvm }));
    }

    private sealed class RecordingMmio : IMmioDevice
    {
        public (ulong Address, int Size, ulong Value) LastWrite;

        public string Name => "recording";

        public ulong Read(ulong address, int size) => address & 0xFFF;

        public void Write(ulong address, int size, ulong value) => LastWrite = (address, size, value);
    }
}
