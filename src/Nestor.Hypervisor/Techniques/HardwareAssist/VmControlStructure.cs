using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.HardwareAssist;

/// <summary>The VMCS of one virtual CPU (Intel SDM Vol. 3C chapter 25), as far as the model needs one: the
/// VM-execution controls the VMM chose (installed in the CPU on VM entry), and the exit-information side: every exit
/// counted by its basic reason, and the last one kept. The guest-state area is the CPU model's own state while the
/// guest runs, and the host state is the VMM's, so neither is copied here.</summary>
public sealed partial class VmControlStructure
{
    private readonly long[] exits = new long[Enum.GetValues<ExitReason>().Max(r => (int)r) + 1];

    /// <summary>Which instructions and exceptions exit, and the nested page table.</summary>
    public ExecutionControls Controls { get; } = new();

    /// <summary>The most recent exit's information fields.</summary>
    public VmExit LastExit { get; private set; }

    /// <summary>All exits so far.</summary>
    public long TotalExits { get; private set; }

    /// <summary>Exits of one basic reason.</summary>
    public long Exits(ExitReason reason) => exits[(int)reason];

    /// <summary>Exits by basic reason, most frequent first, reasons that never happened left out.</summary>
    public IReadOnlyList<(ExitReason Reason, long Count)> ExitsByReason =>
        Enum.GetValues<ExitReason>().Where(r => exits[(int)r] > 0).Select(r => (r, exits[(int)r])).OrderByDescending(e => e.Item2).ToList();

    internal void Record(in VmExit exit)
    {
        exits[(int)exit.Reason]++;
        TotalExits++;
        LastExit = exit;
    }
}

// Snapshots (issue 11): the VM-execution controls and the exit counters. The last exit's information is not saved
// (it describes an exit handled before the snapshot and is read by no later one).
public sealed partial class VmControlStructure
{
    /// <summary>Writes the controls and the exit counters (fields of the VMM's snapshot section).</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        var c = Controls;
        foreach (bool control in (ReadOnlySpan<bool>)[c.HltExiting, c.IoExiting, c.MsrExiting, c.Cr3LoadExiting, c.Cr3StoreExiting,
                     c.Cr0Cr4WriteExiting, c.InvlpgExiting, c.RdtscExiting, c.NestedPaging])
        {
            writer.WriteBoolean(control);
        }
        writer.WriteUInt32(c.ExceptionBitmap);
        writer.WriteInt64(TotalExits);
        writer.WriteInt32(exits.Length);
        foreach (long count in exits)
        {
            writer.WriteInt64(count);
        }
    }

    /// <summary>Restores what <see cref="Save"/> wrote. The controls must be those this VMCS already has (the VMM
    /// restored into must use the same technique); the nested root is the restoring VMM's own.</summary>
    public void Restore(Persistence.SnapshotReader reader)
    {
        var c = Controls;
        bool[] saved = new bool[9];
        for (int i = 0; i < saved.Length; i++)
        {
            saved[i] = reader.ReadBoolean();
        }
        uint bitmap = reader.ReadUInt32();
        if (!saved.AsSpan().SequenceEqual([c.HltExiting, c.IoExiting, c.MsrExiting, c.Cr3LoadExiting, c.Cr3StoreExiting,
                c.Cr0Cr4WriteExiting, c.InvlpgExiting, c.RdtscExiting, c.NestedPaging]) || bitmap != c.ExceptionBitmap)
        {
            throw reader.Invalid("the VMCS controls differ from this VMM's: restore with the same technique and memory virtualization");
        }
        TotalExits = reader.ReadInt64();
        int count = reader.ReadInt32();
        if (count != exits.Length)
        {
            throw reader.Invalid($"{count} exit reasons where this Nestor counts {exits.Length}");
        }
        for (int i = 0; i < count; i++)
        {
            exits[i] = reader.ReadInt64();
        }
    }
}
