namespace Nestor.Hypervisor.Persistence;

/// <summary>A part of a VM whose state can be saved into a snapshot and restored from one: one section of the
/// snapshot's binary form (<see cref="SnapshotWriter"/>: a tag, a version, a length, then the fields).</summary>
public interface ISnapshottable
{
    /// <summary>The four-character tag of this part's section (e.g. <c>"CPU0"</c>).</summary>
    string SectionTag { get; }

    /// <summary>The newest version of the section's layout this code writes and reads; older ones may still be read.</summary>
    ushort SectionVersion { get; }

    /// <summary>Writes the fields of the section (the header is written by <see cref="SnapshotWriter.WriteSection"/>).</summary>
    void Save(SnapshotWriter writer);

    /// <summary>Reads the fields back from a section of layout <paramref name="version"/> (at most
    /// <see cref="SectionVersion"/>) and makes them this part's state.</summary>
    /// <exception cref="SnapshotFormatException">The section is shorter than its fields, or holds impossible values.</exception>
    void Restore(SnapshotReader reader, ushort version);
}
