using System.Diagnostics;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.State;
using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.Platform;

/// <summary>The machine around a VM's vCPUs, the same for every engine (cloud-hypervisor's <c>VmOps</c>): port and
/// MMIO accesses go to the VM's devices and are counted as exits with one meaning, the CPUID model answers CPUID, and
/// stop detection and the wording of every outcome live here. An engine only turns its own exit format into calls:
/// the software machine calls it through <see cref="IPlatform"/> for every access it traps, the KVM engine for every
/// <c>kvm_run</c> exit.</summary>
/// <remarks>An exit, in <see cref="ExitStatistics"/>, is one entry into the VMM's device code: one trapped access
/// on the software machine, one <c>KVM_RUN</c> return on KVM, where a string instruction (<c>rep outsb</c>) may
/// bring many items in one exit. The per-port table counts items, so both engines agree on it access by access;
/// the handling time of an exit runs from the moment the VMM got control to the moment the device returned.</remarks>
public sealed class VmPlatform : IPlatform
{
    private readonly Vm vm;
    private readonly RunControl control;
    private readonly ICpuidModel cpuid;
    private readonly ExitStatistics exits;

    /// <param name="vm">The VM whose devices and statistics this is.</param>
    /// <param name="control">Stop requests from outside (timeout, signals).</param>
    /// <param name="cpuid">What CPUID answers on this engine.</param>
    public VmPlatform(Vm vm, RunControl control, ICpuidModel cpuid)
    {
        this.vm = vm;
        this.control = control;
        this.cpuid = cpuid;
        exits = vm.Exits;
    }

    /// <summary>The VM this platform belongs to.</summary>
    public Vm Vm => vm;

    /// <summary>The guest wrote the debug-exit port, or someone asked the run to stop (timeout, Ctrl-C, a signal).
    /// The software CPU looks at it after port writes, after faults and between the iterations of long
    /// instructions; the KVM engine after every exit.</summary>
    public bool StopRequested => vm.GuestStatus is not null || control.StopReason is not null;

    /// <summary>When the PC platform's next timer interrupt (PIT, HPET) is due, in the software CPU's clock, so that
    /// a halted CPU idles until it (docs/boot-protocol.md, "Time").</summary>
    public long NextDeviceEvent => vm.PcPlatform.NextTimerEventInSourceCycles;

    /// <summary>Delivers the platform timer interrupts due by now (the halted CPU's clock reached one).</summary>
    public void AdvanceDevices() => vm.PcPlatform.AdvanceTimers();

    /// <summary>The outcome a stop request means, or null if there is none: a debug exit wins over a request from
    /// outside that came while the guest was writing it, since the guest has finished.</summary>
    public VmOutcome? StopOutcome(VcpuState state) =>
        vm.GuestStatus is { } status ? VmOutcomes.DebugExit(status, state)
        : control.StopReason is { } reason ? VmOutcomes.Stopped(reason, vm.Config.Timeout, state)
        : null;

    /// <summary>The diagnostic instruction pointer for unclaimed-access reports, and whether it names the accessing
    /// instruction (<c>false</c>) or the one after it (<c>true</c>, KVM, whose RIP has moved on at an I/O exit).</summary>
    public void ReportInstructionPointer(Func<ulong>? instructionPointer, bool isNext)
    {
        vm.Bus.InstructionPointer = instructionPointer;
        vm.Bus.UnclaimedAccesses.InstructionPointerIsNext = isNext;
    }

    /// <summary>Time spent running the guest (Stopwatch ticks), as opposed to handling its exits.</summary>
    public void AddGuestTicks(long ticks) => exits.AddGuestTicks(ticks);

    /// <summary>Records an exit the engine handled itself (HLT, a shutdown, a kick), with its handling time.</summary>
    public void RecordExit(VmExitReason reason, long handlingTicks = 0) => exits.Record(reason, handlingTicks);

    /// <summary>One trapped IN.</summary>
    public uint PortRead(ushort port, int size)
    {
        long start = Stopwatch.GetTimestamp();
        uint value = vm.Bus.ReadPort(port, size);
        Port(port, isWrite: false, 1, start);
        return value;
    }

    /// <summary>One trapped OUT.</summary>
    public void PortWrite(ushort port, int size, uint value)
    {
        long start = Stopwatch.GetTimestamp();
        vm.Bus.WritePort(port, size, value);
        Port(port, isWrite: true, 1, start);
    }

    /// <summary>An I/O exit of <paramref name="count"/> items of <paramref name="size"/> bytes each, little-endian
    /// in <paramref name="data"/> (KVM's <c>kvm_run.io</c>: a string instruction brings several); an IN fills
    /// <paramref name="data"/>. <paramref name="start"/> is when the VMM got control (Stopwatch timestamp).</summary>
    public void PortAccess(ushort port, int size, bool isWrite, Span<byte> data, int count, long start)
    {
        for (int i = 0; i < count; i++)
        {
            var item = data.Slice(i * size, size);
            if (isWrite)
            {
                vm.Bus.WritePort(port, size, (uint)ReadLittleEndian(item));
            }
            else
            {
                WriteLittleEndian(item, vm.Bus.ReadPort(port, size));
            }
        }
        Port(port, isWrite, count, start);
    }

    /// <summary>One trapped load from a guest-physical address that is not RAM.</summary>
    public ulong MmioRead(ulong physical, int size)
    {
        long start = Stopwatch.GetTimestamp();
        ulong value = vm.Bus.ReadMemory(physical, size);
        exits.Record(VmExitReason.MmioRead, Stopwatch.GetTimestamp() - start);
        exits.RecordDeviceMemory(DeviceName(physical), isWrite: false, direct: false);
        return value;
    }

    /// <summary>One trapped store to a guest-physical address that is not RAM.</summary>
    public void MmioWrite(ulong physical, int size, ulong value)
    {
        long start = Stopwatch.GetTimestamp();
        vm.Bus.WriteMemory(physical, size, value);
        exits.Record(VmExitReason.MmioWrite, Stopwatch.GetTimestamp() - start);
        exits.RecordDeviceMemory(DeviceName(physical), isWrite: true, direct: false);
    }

    /// <summary>A load from an assigned device's registers, which the VMM mapped into the guest: it reaches the device
    /// without a VM exit, so it is counted as a direct access, not as an exit.</summary>
    public ulong DirectDeviceRead(ulong physical, int size)
    {
        exits.RecordDeviceMemory(DeviceName(physical), isWrite: false, direct: true);
        return vm.Bus.ReadMemory(physical, size);
    }

    /// <summary>A store to an assigned device's registers mapped into the guest: no VM exit (see
    /// <see cref="DirectDeviceRead"/>).</summary>
    public void DirectDeviceWrite(ulong physical, int size, ulong value)
    {
        exits.RecordDeviceMemory(DeviceName(physical), isWrite: true, direct: true);
        vm.Bus.WriteMemory(physical, size, value);
    }

    private string DeviceName(ulong physical) => vm.Bus.MemoryDevice(physical)?.Name ?? "(unclaimed)";

    /// <summary>An MMIO exit with its data little-endian in <paramref name="data"/> (KVM's <c>kvm_run.mmio</c>); a
    /// load fills it. <paramref name="start"/> is when the VMM got control.</summary>
    public void MmioAccess(ulong physical, bool isWrite, Span<byte> data, long start)
    {
        if (isWrite)
        {
            vm.Bus.WriteMemory(physical, data.Length, ReadLittleEndian(data));
            exits.Record(VmExitReason.MmioWrite, Stopwatch.GetTimestamp() - start);
            exits.RecordDeviceMemory(DeviceName(physical), isWrite: true, direct: false);
        }
        else
        {
            WriteLittleEndian(data, vm.Bus.ReadMemory(physical, data.Length));
            exits.Record(VmExitReason.MmioRead, Stopwatch.GetTimestamp() - start);
            exits.RecordDeviceMemory(DeviceName(physical), isWrite: false, direct: false);
        }
    }

    /// <summary>CPUID as this engine's model answers it.</summary>
    public (uint Eax, uint Ebx, uint Ecx, uint Edx) Cpuid(uint leaf, uint subleaf) => cpuid.Query(leaf, subleaf);

    /// <summary>The vCPU shut down: recorded as an exit, worded once for every engine. <paramref name="cause"/> is
    /// what the engine knows about the cascade (the software machine knows which event failed first; KVM does not
    /// say, so null gives the general wording).</summary>
    public VmOutcome TripleFault(VcpuState state, string? cause, string? note = null, long handlingTicks = 0)
    {
        exits.Record(VmExitReason.Shutdown, handlingTicks);
        return VmOutcomes.TripleFault(state, cause, note);
    }

    /// <summary>HLT with nothing that could ever wake the vCPU, recorded as an exit.</summary>
    public VmOutcome Halted(VcpuState state, long handlingTicks = 0)
    {
        exits.Record(VmExitReason.Halt, handlingTicks);
        return VmOutcomes.Halted(state);
    }

    /// <summary>Flushes what the devices buffer (the serial port's output) at the end of a run.</summary>
    public void EndRun()
    {
        vm.Bus.InstructionPointer = null;
        vm.Serial.Flush();
    }

    private void Port(ushort port, bool isWrite, int items, long start)
    {
        exits.RecordPort(port, isWrite, items, vm.Bus.PortDevice(port)?.Name);
        exits.Record(isWrite ? VmExitReason.PortWrite : VmExitReason.PortRead, Stopwatch.GetTimestamp() - start);
    }

    private static ulong ReadLittleEndian(ReadOnlySpan<byte> b)
    {
        ulong v = 0;
        for (int i = b.Length - 1; i >= 0; i--)
        {
            v = (v << 8) | b[i];
        }
        return v;
    }

    private static void WriteLittleEndian(Span<byte> b, ulong v)
    {
        for (int i = 0; i < b.Length; i++)
        {
            b[i] = (byte)(v >> (8 * i));
        }
    }
}
