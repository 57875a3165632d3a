using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.CostModel;

/// <summary>Everything the cost model charges for, as counted in one run of the software machine (and its VMM, if
/// any). Counts only: the costs are the profile's.</summary>
public sealed record MachineEvents
{
    /// <summary>How the CPU was virtualized: the transitions into the VMM are priced by technique.</summary>
    public Techniques.Technique Technique { get; init; } = Techniques.Technique.Native;
    /// <summary>Privileged instructions of a ring-1 kernel that trapped and were emulated (trap-and-emulate).</summary>
    public long PrivilegedTraps { get; init; }
    /// <summary>Callouts from translated kernel code (binary translation).</summary>
    public long Callouts { get; init; }
    /// <summary>Guest instructions the binary translator translated.</summary>
    public long InstructionsTranslated { get; init; }
    /// <summary>Returns and indirect branches executed in translated code.</summary>
    public long IndirectBranches { get; init; }
    /// <summary>Hypercalls of a paravirtual guest.</summary>
    public long Hypercalls { get; init; }
    /// <summary>Page-table entries a paravirtual guest handed to the VMM.</summary>
    public long ParavirtualUpdates { get; init; }

    public long[] RetiredByClass { get; init; } = new long[Enum.GetValues<InstructionClass>().Length];
    public long Instructions { get; init; }
    public long MemoryReferences { get; init; }
    public long TlbLookups { get; init; }
    public long TlbMisses { get; init; }
    public long Walks { get; init; }
    /// <summary>Paging-structure entries read by hardware walks, both dimensions.</summary>
    public long WalkReferences { get; init; }
    /// <summary>Of those, entries of the nested table.</summary>
    public long NestedWalkReferences { get; init; }
    /// <summary>Exceptions and interrupts delivered through the guest's IDT (software interrupts included).</summary>
    public long EventsDelivered { get; init; }
    public long SystemCalls { get; init; }
    public long PortAccesses { get; init; }

    /// <summary>VM exits by basic reason (empty without a VMM).</summary>
    public IReadOnlyDictionary<ExitReason, long> Exits { get; init; } = new Dictionary<ExitReason, long>();
    public long HiddenFaults { get; init; }
    public long TrueFaults { get; init; }
    public long EmulatedWrites { get; init; }
    public long PageTableWrites { get; init; }
    public long AddressSpaceSwitches { get; init; }
    /// <summary>Paging-structure entries the VMM read walking guest tables in software.</summary>
    public long VmmWalkReferences { get; init; }

    public long TotalExits => Exits.Values.Sum();

    public long ExitsFor(ExitReason reason) => Exits.GetValueOrDefault(reason);

    public double ReferencesPerWalk => Walks == 0 ? 0 : (double)WalkReferences / Walks;

    public double TlbMissRate => TlbLookups == 0 ? 0 : (double)TlbMisses / TlbLookups;

    /// <summary>These events less those of <paramref name="baseline"/> (a run doing less, such as the same boot with a
    /// trivial program): what the difference did.</summary>
    public MachineEvents Minus(MachineEvents baseline) => new()
    {
        RetiredByClass = RetiredByClass.Zip(baseline.RetiredByClass, (a, b) => a - b).ToArray(),
        Instructions = Instructions - baseline.Instructions,
        MemoryReferences = MemoryReferences - baseline.MemoryReferences,
        TlbLookups = TlbLookups - baseline.TlbLookups,
        TlbMisses = TlbMisses - baseline.TlbMisses,
        Walks = Walks - baseline.Walks,
        WalkReferences = WalkReferences - baseline.WalkReferences,
        NestedWalkReferences = NestedWalkReferences - baseline.NestedWalkReferences,
        EventsDelivered = EventsDelivered - baseline.EventsDelivered,
        SystemCalls = SystemCalls - baseline.SystemCalls,
        PortAccesses = PortAccesses - baseline.PortAccesses,
        Exits = Exits.Keys.Union(baseline.Exits.Keys).ToDictionary(r => r, r => ExitsFor(r) - baseline.ExitsFor(r)),
        HiddenFaults = HiddenFaults - baseline.HiddenFaults,
        TrueFaults = TrueFaults - baseline.TrueFaults,
        EmulatedWrites = EmulatedWrites - baseline.EmulatedWrites,
        PageTableWrites = PageTableWrites - baseline.PageTableWrites,
        AddressSpaceSwitches = AddressSpaceSwitches - baseline.AddressSpaceSwitches,
        VmmWalkReferences = VmmWalkReferences - baseline.VmmWalkReferences,
        Technique = Technique,
        PrivilegedTraps = PrivilegedTraps - baseline.PrivilegedTraps,
        Callouts = Callouts - baseline.Callouts,
        InstructionsTranslated = InstructionsTranslated - baseline.InstructionsTranslated,
        IndirectBranches = IndirectBranches - baseline.IndirectBranches,
        Hypercalls = Hypercalls - baseline.Hypercalls,
        ParavirtualUpdates = ParavirtualUpdates - baseline.ParavirtualUpdates,
    };
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
