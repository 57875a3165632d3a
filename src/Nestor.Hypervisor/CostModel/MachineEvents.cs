using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.CostModel;

/// <summary>The counted events of <see cref="MachineEvents"/>, as indices of its vector of counts.</summary>
public enum MachineEvent
{
    /// <summary>Privileged instructions of a ring-1 kernel that trapped and were emulated (trap-and-emulate).</summary>
    PrivilegedTraps,
    /// <summary>Callouts from translated kernel code (binary translation).</summary>
    Callouts,
    /// <summary>Guest instructions the binary translator translated.</summary>
    InstructionsTranslated,
    /// <summary>Returns and indirect branches executed in translated code.</summary>
    IndirectBranches,
    /// <summary>Hypercalls of a paravirtual guest.</summary>
    Hypercalls,
    /// <summary>Page-table entries a paravirtual guest handed to the VMM.</summary>
    ParavirtualUpdates,
    /// <summary>Instructions retired.</summary>
    Instructions,
    /// <summary>Data references (reads and writes).</summary>
    MemoryReferences,
    /// <summary>TLB lookups, instruction and data.</summary>
    TlbLookups,
    /// <summary>TLB misses, instruction and data.</summary>
    TlbMisses,
    /// <summary>Hardware page walks.</summary>
    Walks,
    /// <summary>Paging-structure entries read by hardware walks, both dimensions.</summary>
    WalkReferences,
    /// <summary>Of those, entries of the nested table.</summary>
    NestedWalkReferences,
    /// <summary>Exceptions and interrupts delivered through the guest's IDT (software interrupts included).</summary>
    EventsDelivered,
    /// <summary>SYSCALLs.</summary>
    SystemCalls,
    /// <summary>Port reads and writes.</summary>
    PortAccesses,
    /// <summary>Page faults the shadow pager handled itself (the guest never saw them).</summary>
    HiddenFaults,
    /// <summary>Page faults the shadow pager reflected to the guest.</summary>
    TrueFaults,
    /// <summary>Writes the VMM emulated (to write-protected guest page tables, and others).</summary>
    EmulatedWrites,
    /// <summary>Of those, writes to guest page tables.</summary>
    PageTableWrites,
    /// <summary>Guest CR3 loads the VMM handled.</summary>
    AddressSpaceSwitches,
    /// <summary>Paging-structure entries the VMM read walking guest tables in software.</summary>
    VmmWalkReferences,
}

/// <summary>Everything the cost model charges for, as counted in one run of the software machine (and its VMM, if
/// any). Counts only: the costs are the profile's. The counts are a vector indexed by <see cref="MachineEvent"/> (so
/// that subtraction and reports are loops), with a property per event.</summary>
public sealed record MachineEvents
{
    private readonly long[] counts = new long[EventCount];

    private static readonly int EventCount = Enum.GetValues<MachineEvent>().Length;

    /// <summary>How the CPU was virtualized: the transitions into the VMM are priced by technique.</summary>
    public Techniques.Technique Technique { get; init; } = Techniques.Technique.Native;

    public MachineEvents()
    {
    }

    // A `with` expression copies through here: the copy gets its own vectors, so that setting a count on it
    // leaves the original alone.
    private MachineEvents(MachineEvents original)
    {
        counts = (long[])original.counts.Clone();
        Technique = original.Technique;
        RetiredByClass = (long[])original.RetiredByClass.Clone();
        Exits = original.Exits;
    }

    /// <summary>The count of one event.</summary>
    public long this[MachineEvent e] => counts[(int)e];

    /// <summary>Every event with its count, in <see cref="MachineEvent"/> order.</summary>
    public IEnumerable<(MachineEvent Event, long Count)> Counts => Enum.GetValues<MachineEvent>().Select(e => (e, counts[(int)e]));

    /// <summary>Privileged instructions of a ring-1 kernel that trapped and were emulated (trap-and-emulate).</summary>
    public long PrivilegedTraps { get => counts[(int)MachineEvent.PrivilegedTraps]; init => counts[(int)MachineEvent.PrivilegedTraps] = value; }
    /// <summary>Callouts from translated kernel code (binary translation).</summary>
    public long Callouts { get => counts[(int)MachineEvent.Callouts]; init => counts[(int)MachineEvent.Callouts] = value; }
    /// <summary>Guest instructions the binary translator translated.</summary>
    public long InstructionsTranslated { get => counts[(int)MachineEvent.InstructionsTranslated]; init => counts[(int)MachineEvent.InstructionsTranslated] = value; }
    /// <summary>Returns and indirect branches executed in translated code.</summary>
    public long IndirectBranches { get => counts[(int)MachineEvent.IndirectBranches]; init => counts[(int)MachineEvent.IndirectBranches] = value; }
    /// <summary>Hypercalls of a paravirtual guest.</summary>
    public long Hypercalls { get => counts[(int)MachineEvent.Hypercalls]; init => counts[(int)MachineEvent.Hypercalls] = value; }
    /// <summary>Page-table entries a paravirtual guest handed to the VMM.</summary>
    public long ParavirtualUpdates { get => counts[(int)MachineEvent.ParavirtualUpdates]; init => counts[(int)MachineEvent.ParavirtualUpdates] = value; }
    /// <summary>Instructions retired.</summary>
    public long Instructions { get => counts[(int)MachineEvent.Instructions]; init => counts[(int)MachineEvent.Instructions] = value; }
    /// <summary>Data references (reads and writes).</summary>
    public long MemoryReferences { get => counts[(int)MachineEvent.MemoryReferences]; init => counts[(int)MachineEvent.MemoryReferences] = value; }
    /// <summary>TLB lookups, instruction and data.</summary>
    public long TlbLookups { get => counts[(int)MachineEvent.TlbLookups]; init => counts[(int)MachineEvent.TlbLookups] = value; }
    /// <summary>TLB misses, instruction and data.</summary>
    public long TlbMisses { get => counts[(int)MachineEvent.TlbMisses]; init => counts[(int)MachineEvent.TlbMisses] = value; }
    /// <summary>Hardware page walks.</summary>
    public long Walks { get => counts[(int)MachineEvent.Walks]; init => counts[(int)MachineEvent.Walks] = value; }
    /// <summary>Paging-structure entries read by hardware walks, both dimensions.</summary>
    public long WalkReferences { get => counts[(int)MachineEvent.WalkReferences]; init => counts[(int)MachineEvent.WalkReferences] = value; }
    /// <summary>Of those, entries of the nested table.</summary>
    public long NestedWalkReferences { get => counts[(int)MachineEvent.NestedWalkReferences]; init => counts[(int)MachineEvent.NestedWalkReferences] = value; }
    /// <summary>Exceptions and interrupts delivered through the guest's IDT (software interrupts included).</summary>
    public long EventsDelivered { get => counts[(int)MachineEvent.EventsDelivered]; init => counts[(int)MachineEvent.EventsDelivered] = value; }
    /// <summary>SYSCALLs.</summary>
    public long SystemCalls { get => counts[(int)MachineEvent.SystemCalls]; init => counts[(int)MachineEvent.SystemCalls] = value; }
    /// <summary>Port reads and writes.</summary>
    public long PortAccesses { get => counts[(int)MachineEvent.PortAccesses]; init => counts[(int)MachineEvent.PortAccesses] = value; }
    /// <summary>Page faults the shadow pager handled itself (the guest never saw them).</summary>
    public long HiddenFaults { get => counts[(int)MachineEvent.HiddenFaults]; init => counts[(int)MachineEvent.HiddenFaults] = value; }
    /// <summary>Page faults the shadow pager reflected to the guest.</summary>
    public long TrueFaults { get => counts[(int)MachineEvent.TrueFaults]; init => counts[(int)MachineEvent.TrueFaults] = value; }
    /// <summary>Writes the VMM emulated (to write-protected guest page tables, and others).</summary>
    public long EmulatedWrites { get => counts[(int)MachineEvent.EmulatedWrites]; init => counts[(int)MachineEvent.EmulatedWrites] = value; }
    /// <summary>Of those, writes to guest page tables.</summary>
    public long PageTableWrites { get => counts[(int)MachineEvent.PageTableWrites]; init => counts[(int)MachineEvent.PageTableWrites] = value; }
    /// <summary>Guest CR3 loads the VMM handled.</summary>
    public long AddressSpaceSwitches { get => counts[(int)MachineEvent.AddressSpaceSwitches]; init => counts[(int)MachineEvent.AddressSpaceSwitches] = value; }
    /// <summary>Paging-structure entries the VMM read walking guest tables in software.</summary>
    public long VmmWalkReferences { get => counts[(int)MachineEvent.VmmWalkReferences]; init => counts[(int)MachineEvent.VmmWalkReferences] = value; }

    public long[] RetiredByClass { get; init; } = new long[Enum.GetValues<InstructionClass>().Length];

    /// <summary>VM exits by basic reason (empty without a VMM).</summary>
    public IReadOnlyDictionary<ExitReason, long> Exits { get; init; } = new Dictionary<ExitReason, long>();

    public long TotalExits => Exits.Values.Sum();

    public long ExitsFor(ExitReason reason) => Exits.GetValueOrDefault(reason);

    public double ReferencesPerWalk => Walks == 0 ? 0 : (double)WalkReferences / Walks;

    public double TlbMissRate => TlbLookups == 0 ? 0 : (double)TlbMisses / TlbLookups;

    /// <summary>These events less those of <paramref name="baseline"/> (a run doing less, such as the same boot with a
    /// trivial program): what the difference did.</summary>
    public MachineEvents Minus(MachineEvents baseline)
    {
        var difference = new MachineEvents
        {
            Technique = Technique,
            RetiredByClass = RetiredByClass.Zip(baseline.RetiredByClass, (a, b) => a - b).ToArray(),
            Exits = Exits.Keys.Union(baseline.Exits.Keys).ToDictionary(r => r, r => ExitsFor(r) - baseline.ExitsFor(r)),
        };
        for (int e = 0; e < EventCount; e++)
        {
            difference.counts[e] = counts[e] - baseline.counts[e];
        }
        return difference;
    }
}

/// <summary>A run's modelled cost, by where it went.</summary>
/// <param name="Instructions">Retired instructions at the profile's cycles per instruction of their class.</param>
/// <param name="Memory">Data references.</param>
/// <param name="PageWalks">Hardware page-walk references.</param>
/// <param name="Events">Exception, interrupt and system-call round trips and port accesses of the guest itself.</param>
/// <param name="ExitTransitions">VM exits and entries.</param>
/// <param name="VmmWork">The VMM's handling of the exits, its software walks included.</param>
public sealed record ModelledCost(double Instructions, double Memory, double PageWalks, double Events, double ExitTransitions, double VmmWork)
{
    public double Total => Instructions + Memory + PageWalks + Events + ExitTransitions + VmmWork;

    /// <summary>Modelled time at the profile's clock.</summary>
    public TimeSpan Time(CostProfile profile) => TimeSpan.FromSeconds(Total / profile.ClockHz);

    /// <summary>Charges <paramref name="e"/> at <paramref name="p"/>'s costs.</summary>
    public static ModelledCost Of(MachineEvents e, CostProfile p)
    {
        double instructions = 0;
        for (int c = 0; c < e.RetiredByClass.Length; c++)
        {
            instructions += e.RetiredByClass[c] * p.CyclesPerInstruction[c];
        }
        if (e.Technique is Techniques.Technique.TrapAndEmulate or Techniques.Technique.BinaryTranslation or Techniques.Technique.Paravirtual)
        {
            return OfSoftwareVmm(e, p, instructions);
        }
        // Under a VMM every port access exits and is charged as emulation instead of as a hardware access.
        long hardwarePorts = e.ExitsFor(ExitReason.IoInstruction) > 0 ? 0 : e.PortAccesses;
        double events = e.EventsDelivered * p.ExceptionRoundTrip + e.SystemCalls * p.SystemCallRoundTrip + hardwarePorts * p.PortAccess;
        long simpleExits = e.TotalExits - e.ExitsFor(ExitReason.IoInstruction) - e.ExitsFor(ExitReason.EptViolation) -
                           e.ExitsFor(ExitReason.ExceptionOrNmi) - e.AddressSpaceSwitches;
        double vmm = e.ExitsFor(ExitReason.IoInstruction) * p.IoEmulation
                     + e.ExitsFor(ExitReason.EptViolation) * p.NestedPageFault
                     + e.HiddenFaults * p.HiddenFault
                     + e.TrueFaults * p.TrueFault
                     + e.EmulatedWrites * p.WriteEmulation
                     + e.AddressSpaceSwitches * p.AddressSpaceSwitch
                     + Math.Max(0, simpleExits) * p.SimpleExitHandling
                     + e.VmmWalkReferences * p.WalkReference;
        return new ModelledCost(instructions, e.MemoryReferences * p.MemoryReference, e.WalkReferences * p.WalkReference, events,
            e.TotalExits * p.VmExitRoundTrip, vmm);
    }

    /// <summary>A software VMM (trap-and-emulate, binary translation): every exception, interrupt and system call goes
    /// through the VMM, which owns the real IDT, and back (a trap round trip) besides its native cost; privileged
    /// instructions trap and are emulated (trap) or are callouts (binary translation); port accesses are emulated; the
    /// shadow-paging work is the software VMM's. The VMM's CR3 and INVLPG hooks run inside those emulations and are
    /// not transitions of their own.</summary>
    private static ModelledCost OfSoftwareVmm(MachineEvents e, CostProfile p, double instructions)
    {
        // A true page fault is intercepted and then reflected: one trip through the VMM, counted once.
        long traps = e.ExitsFor(ExitReason.ExceptionOrNmi) + e.EventsDelivered + e.SystemCalls - e.TrueFaults;
        double events = e.EventsDelivered * p.ExceptionRoundTrip + e.SystemCalls * p.SystemCallRoundTrip;
        double transitions = traps * p.TrapRoundTrip + e.Callouts * p.Callout + e.Hypercalls * p.HypercallRoundTrip;
        double vmm = e.PrivilegedTraps * p.PrivilegedEmulation
                     + e.PortAccesses * p.SoftwareIoEmulation
                     + (e.HiddenFaults + e.TrueFaults + e.AddressSpaceSwitches) * p.SoftwarePageFault
                     + e.EmulatedWrites * p.SoftwareWriteEmulation
                     + e.InstructionsTranslated * p.TranslationPerInstruction
                     + e.IndirectBranches * p.IndirectBranch
                     + e.ParavirtualUpdates * p.ParavirtualUpdate
                     + e.VmmWalkReferences * p.WalkReference;
        return new ModelledCost(instructions, e.MemoryReferences * p.MemoryReference, e.WalkReferences * p.WalkReference, events,
            transitions, vmm);
    }
}
