using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.HardwareAssist;

/// <summary>The VMCS of one virtual CPU (Intel SDM Vol. 3C chapter 25), as far as the model needs one: the
/// VM-execution controls the VMM chose (installed in the CPU on VM entry), and the exit-information side: every exit
/// counted by its basic reason, and the last one kept. The guest-state area is the CPU model's own state while the
/// guest runs, and the host state is the VMM's, so neither is copied here.</summary>
public sealed class VmControlStructure
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
