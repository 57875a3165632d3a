namespace Nestor.Hypervisor.Persistence;

/// <summary>A whole VM as bytes: the sections of <see cref="Vm.SnapshotParts"/> (vCPUs, RAM, COM1, debug-exit port), then
/// those of the engine's state (for the software machine, its VMM's: <see cref="Engines.SimEngine"/>). Taken between
/// runs; restored into a fresh VM of the same configuration (and a fresh engine of the same options), whose next run
/// continues where the saved one stopped.</summary>
public static class VmSnapshot
{
    /// <summary>Saves <paramref name="vm"/> and then <paramref name="engineParts"/>.</summary>
    public static byte[] Capture(Vm vm, params IEnumerable<ISnapshottable> engineParts)
    {
        var writer = new SnapshotWriter();
        foreach (var part in vm.SnapshotParts.Concat(engineParts))
        {
            writer.WriteSection(part);
        }
        return writer.ToArray();
    }

    /// <summary>Restores what <see cref="Capture"/> saved into <paramref name="vm"/> and <paramref name="engineParts"/>.</summary>
    /// <exception cref="SnapshotFormatException">The data is not such a snapshot, or not one of this kind of VM.</exception>
    public static void Restore(Vm vm, byte[] data, params IEnumerable<ISnapshottable> engineParts)
    {
        var reader = new SnapshotReader(data);
        foreach (var part in vm.SnapshotParts.Concat(engineParts))
        {
            reader.ReadSection(part);
        }
        if (!reader.AtEnd)
        {
            throw new SnapshotFormatException("the snapshot has sections after the last this VM and engine restore");
        }
    }
}
