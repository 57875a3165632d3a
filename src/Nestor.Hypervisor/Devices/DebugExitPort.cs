namespace Nestor.Hypervisor.Devices;

/// <summary>The debug-exit device at I/O port 0xF4: a write of <c>v</c> ends the VM with guest status <c>v</c>
/// (QEMU's isa-debug-exit with iobase=0xf4,iosize=4, whose process status is <c>(v &lt;&lt; 1) | 1</c>; Nestor's
/// mapping to a process status is in docs/boot-protocol.md).</summary>
public sealed partial class DebugExitPort(Action<uint> stop) : IPortDevice
{
    public const ushort Port = 0xF4;
    public const int PortCount = 4;

    public string Name => "debug-exit";

    /// <summary>Reads return 0, as QEMU's device does.</summary>
    public uint Read(ushort port, int size) => 0;

    /// <summary>Any write ends the VM. The contract is a 32-bit write; narrower writes are accepted too,
    /// zero-extended, as QEMU accepts them.</summary>
    public void Write(ushort port, int size, uint value)
    {
        Status ??= value;
        stop(value);
    }
}

// Snapshots (issue 11): whether the guest has written its status, and which.
public sealed partial class DebugExitPort : Persistence.ISnapshottable
{
    /// <summary>The first status the guest wrote, or null.</summary>
    public uint? Status { get; private set; }

    public string SectionTag => "DBGX";

    public ushort SectionVersion => 1;

    public void Save(Persistence.SnapshotWriter writer)
    {
        writer.WriteBoolean(Status is not null);
        writer.WriteUInt32(Status ?? 0);
    }

    /// <summary>Restores the status; a status written before the snapshot ends the restored VM as it ended that one.</summary>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        bool written = reader.ReadBoolean();
        uint status = reader.ReadUInt32();
        if (written)
        {
            Status = status;
            stop(status);
        }
    }
}
