using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Hypervisor.Techniques.TrapAndEmulate;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.BinaryTranslation;

/// <summary>Binary translation of the guest kernel's code (VMware's software VMM, Adams &amp; Agesen §2.2): kernel code
/// runs translated, its privileged and sensitive instructions replaced by callouts into the VMM, so nothing of it traps
/// and nothing of it sees ring 1. Its page-table writes still fault on the shadow's write protection; an instruction
/// whose writes keep faulting is retranslated into a callout (adaptive binary translation, §3.3).</summary>
public sealed class BinaryTranslationTechnique(VmControlStructure vmcs, IMemoryVirtualization memory)
    : TrapAndEmulateTechnique(vmcs, memory, translated: true)
{
    // An instruction whose page-table writes trapped this many times becomes a callout.
    private const int AdaptiveThreshold = 2;

    private readonly Dictionary<ulong, int> hotPageTableWriters = [];

    private ShadowPaging Shadow => Memory.Shadow ?? throw new InvalidOperationException("binary translation without shadow paging");

    /// <inheritdoc/>
    public override Technique Kind => Technique.BinaryTranslation;

    /// <summary>Callouts from translated code that wrote page tables.</summary>
    public long Callouts { get; private set; }

    /// <summary>Translated instructions turned into callouts because their page-table writes kept trapping.</summary>
    public long Retranslations { get; private set; }

    /// <summary>Adaptive binary translation's state: how often each kernel instruction's page-table writes trapped
    /// (for a snapshot; an instruction becomes a callout when its count reaches the threshold).</summary>
    public IReadOnlyDictionary<ulong, int> PageTableWriteTraps => hotPageTableWriters;

    /// <summary>Restores <see cref="PageTableWriteTraps"/> from a snapshot.</summary>
    public void RestorePageTableWriteTraps(IEnumerable<KeyValuePair<ulong, int>> counts)
    {
        hotPageTableWriters.Clear();
        foreach (var (rip, count) in counts)
        {
            hotPageTableWriters[rip] = count;
        }
    }

    /// <summary>A page fault for shadow paging; a kernel instruction whose page-table writes trap twice is retranslated
    /// into a callout, so that its later writes do not trap.</summary>
    protected override VmExitAction Exception(Cpu cpu, ref VmExit exit)
    {
        if (exit.Vector != ExceptionVector.PageFault)
        {
            return base.Exception(cpu, ref exit);
        }
        ulong rip = cpu.Rip;
        var shadow = Shadow;
        long writes = shadow.PageTableWrites;
        var action = shadow.PageFault(cpu, ref exit);
        if (shadow.PageTableWrites > writes && cpu.PrivilegeLevel == 0)
        {
            int count = hotPageTableWriters[rip] = hotPageTableWriters.GetValueOrDefault(rip) + 1;
            if (count == AdaptiveThreshold && cpu.MarkCallout(rip))
            {
                Retranslations++;
            }
        }
        return action;
    }

    /// <summary>A callout from translated code: a page-table write the translator turned into a call, which the VMM
    /// carries out on the guest's table and its shadows.</summary>
    protected override VmExitAction Other(Cpu cpu, ref VmExit exit, out VmExitReason? reason)
    {
        if (exit.Reason != ExitReason.TranslatorCallout)
        {
            return base.Other(cpu, ref exit, out reason);
        }
        Callouts++;
        reason = VmExitReason.Callout;
        return Shadow.WriteCallout(cpu, ref exit);
    }
}
