using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Persistence;

/// <summary>Snapshot data that cannot be restored: not a snapshot, a section of an unknown kind or of a newer layout
/// than this Nestor reads, a truncated section, or values that do not fit the VM restored into.</summary>
public sealed class SnapshotFormatException(string message)
    : NestorException(message, "restore a snapshot taken by this version of Nestor, of a VM with the same configuration")
{
    public override FailureClass Class => FailureClass.BadInput;
}
