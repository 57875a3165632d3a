using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Persistence;

/// <summary>Why a snapshot was refused (<see cref="SnapshotFormatException.Refusal"/>).</summary>
public enum SnapshotRefusal
{
    /// <summary>Data that is not a snapshot, a section of an unknown kind, or values that do not fit.</summary>
    Invalid,
    /// <summary>The file is shorter than its header says: a save that did not finish, or a copy cut short.</summary>
    Truncated,
    /// <summary>The CRC-64 over the file does not match the one stored in it.</summary>
    Corrupted,
    /// <summary>A format or section layout newer than this Nestor reads.</summary>
    NewerVersion,
    /// <summary>Taken on another engine than the one asked to restore it.</summary>
    WrongEngine,
    /// <summary>Taken of a VM configured otherwise (memory size, technique, kernel, command line, disks).</summary>
    WrongConfiguration,
    /// <summary>A disk image's content differs from what it was when the snapshot was taken.</summary>
    DiskChanged,
    /// <summary>The memory file the snapshot keeps its RAM in is missing, of another length, or of other bytes.</summary>
    MemoryFileMismatch,
}

/// <summary>Snapshot data that cannot be restored: not a snapshot, a section of an unknown kind or of a newer layout
/// than this Nestor reads, a truncated section, or values that do not fit the VM restored into.</summary>
public sealed class SnapshotFormatException(string message, SnapshotRefusal refusal = SnapshotRefusal.Invalid, string? advice = null)
    : NestorException(message, advice ?? "restore a snapshot taken by this version of Nestor, of a VM with the same configuration")
{
    /// <summary>Which kind of refusal this is.</summary>
    public SnapshotRefusal Refusal { get; } = refusal;

    public override FailureClass Class => FailureClass.BadInput;
}
