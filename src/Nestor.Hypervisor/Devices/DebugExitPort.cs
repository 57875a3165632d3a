namespace Nestor.Hypervisor.Devices;

/// <summary>The debug-exit device at I/O port 0xF4: a write of <c>v</c> ends the VM with guest status <c>v</c>
/// (QEMU's isa-debug-exit with iobase=0xf4,iosize=4, whose process status is <c>(v &lt;&lt; 1) | 1</c>; Nestor's
/// mapping to a process status is in docs/boot-protocol.md).</summary>
public sealed class DebugExitPort(Action<uint> stop) : IPortDevice
{
    public const ushort Port = 0xF4;
    public const int PortCount = 4;

    public string Name => "debug-exit";

    /// <summary>Reads return 0, as QEMU's device does.</summary>
    public uint Read(ushort port, int size) => 0;

    /// <summary>Any write ends the VM. The contract is a 32-bit write; narrower writes are accepted too,
    /// zero-extended, as QEMU accepts them.</summary>
    public void Write(ushort port, int size, uint value) => stop(value);
}
