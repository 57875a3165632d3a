namespace Nestor.Machine.Processor;

/// <summary>What the CPU model needs from the machine around it: I/O ports, memory-mapped devices, and the CPUID
/// leaves the platform presents. The hypervisor implements it; the CPU never knows about VMs.</summary>
public interface IPlatform
{
    uint PortRead(ushort port, int size);

    void PortWrite(ushort port, int size, uint value);

    ulong MmioRead(ulong physical, int size);

    void MmioWrite(ulong physical, int size, ulong value);

    /// <summary>A load from device memory the VMM mapped into the guest (<see cref="Memory.PhysicalMemory.AssignedWindow"/>):
    /// it reaches the device at guest-physical <paramref name="physical"/> without a VM exit. By default it is an MMIO
    /// access like any other.</summary>
    ulong DirectDeviceRead(ulong physical, int size) => MmioRead(physical, size);

    /// <summary>A store to device memory the VMM mapped into the guest, without a VM exit (see
    /// <see cref="DirectDeviceRead"/>).</summary>
    void DirectDeviceWrite(ulong physical, int size, ulong value) => MmioWrite(physical, size, value);

    /// <summary>CPUID for leaf EAX, subleaf ECX.</summary>
    (uint Eax, uint Ebx, uint Ecx, uint Edx) Cpuid(uint leaf, uint subleaf);

    /// <summary>True when the machine's run should end: a port write that ended it (the debug-exit device), or any
    /// other request to stop (a timeout, Ctrl-C). The CPU looks after each OUT, and every few thousand iterations of a
    /// repeated string instruction, which it then suspends (RIP at it, not retired), and returns
    /// <see cref="StopReason.PlatformStop"/>; the platform knows which request it was. Otherwise the caller of
    /// <see cref="Cpu.Run"/> sees the request between calls.</summary>
    bool StopRequested { get; }

    /// <summary>The CPU clock value (<see cref="Cpu.Clock"/>) at which a platform device (the PIT, the HPET) next
    /// raises an interrupt, or <see cref="long.MaxValue"/> when none is armed: a halted CPU idles until then, as it
    /// does until its local APIC timer (SDM Vol. 3A §8.10.2: HLT is left by an interrupt, whoever raises it).</summary>
    long NextDeviceEvent => long.MaxValue;

    /// <summary>The CPU's clock reached <see cref="NextDeviceEvent"/> while halted: the devices deliver what fell due.</summary>
    void AdvanceDevices()
    {
    }
}

/// <summary>Why <see cref="Cpu.Run"/> returned.</summary>
public enum StopReason
{
    /// <summary>The instruction budget ran out, or a long repeated string instruction used up its share of the call
    /// (suspended between iterations, not retired); call Run again to continue.</summary>
    Budget,
    /// <summary>HLT with nothing to wake the CPU.</summary>
    Halted,
    /// <summary>Triple fault: the CPU shut down.</summary>
    Shutdown,
    /// <summary>The platform asked to stop (<see cref="IPlatform.StopRequested"/>: the debug exit, or a stop request
    /// seen during a long repeated string instruction, left suspended).</summary>
    PlatformStop,
    /// <summary>The VMM's exit handler stopped the virtual machine.</summary>
    VmmStop,
}
