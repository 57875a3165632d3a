namespace Nestor.Machine.Processor;

/// <summary>What the CPU model needs from the machine around it: I/O ports, memory-mapped devices, and the CPUID
/// leaves the platform presents. The hypervisor implements it; the CPU never knows about VMs.</summary>
public interface IPlatform
{
    uint PortRead(ushort port, int size);

    void PortWrite(ushort port, int size, uint value);

    ulong MmioRead(ulong physical, int size);

    void MmioWrite(ulong physical, int size, ulong value);

    /// <summary>CPUID for leaf EAX, subleaf ECX.</summary>
    (uint Eax, uint Ebx, uint Ecx, uint Edx) Cpuid(uint leaf, uint subleaf);

    /// <summary>True when a port write ended the machine's run (the debug-exit device): the CPU stops after it.</summary>
    bool StopRequested { get; }
}

/// <summary>Why <see cref="Cpu.Run"/> returned.</summary>
public enum StopReason
{
    /// <summary>The instruction budget ran out; call Run again to continue.</summary>
    Budget,
    /// <summary>HLT with nothing to wake the CPU.</summary>
    Halted,
    /// <summary>Triple fault: the CPU shut down.</summary>
    Shutdown,
    /// <summary>The platform asked to stop (debug exit).</summary>
    PlatformStop,
    /// <summary>The VMM's exit handler stopped the virtual machine.</summary>
    VmmStop,
}
