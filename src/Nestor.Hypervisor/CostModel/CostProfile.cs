using Nestor.Machine.Processor;

namespace Nestor.Hypervisor.CostModel;

/// <summary>Modelled costs, in cycles, of the events the software machine and the VMM count: instructions by class,
/// memory and page-walk references, exception and system-call round trips, VM exits and the VMM's work per exit. Two
/// profiles are built in; where each number comes from (a measurement in a paper or a vendor document, a figure
/// derived from such, or an estimate) is written in docs/cost-model.md, and the model's output is always labelled
/// modelled, beside the measured wall time.</summary>
public sealed record CostProfile
{
    /// <summary>Name as <c>--profile</c> takes it.</summary>
    public required string Name { get; init; }
    public required string Description { get; init; }
    /// <summary>Clock rate, to turn modelled cycles into modelled time.</summary>
    public required double ClockHz { get; init; }

    /// <summary>Cycles per retired instruction by <see cref="InstructionClass"/> (index = class).</summary>
    public required double[] CyclesPerInstruction { get; init; }
    /// <summary>Each data read or write (string instructions make one per element).</summary>
    public required double MemoryReference { get; init; }
    /// <summary>Each paging-structure entry a hardware page walk reads (both dimensions of a 2-D walk).</summary>
    public required double WalkReference { get; init; }
    /// <summary>An exception or interrupt delivered to the guest and returned from with IRET.</summary>
    public required double ExceptionRoundTrip { get; init; }
    /// <summary>SYSCALL and SYSRET.</summary>
    public required double SystemCallRoundTrip { get; init; }
    /// <summary>A port access the guest makes to real hardware (no VMM in between).</summary>
    public required double PortAccess { get; init; }

    /// <summary>A VM exit and the VM entry back (the hardware's world switch, both ways).</summary>
    public required double VmExitRoundTrip { get; init; }
    /// <summary>VMM work for an exit it only has to complete or account (CPUID, MSR, HLT, INVLPG, CR0/CR4, ...).</summary>
    public required double SimpleExitHandling { get; init; }
    /// <summary>VMM work to emulate a port access against its device model.</summary>
    public required double IoEmulation { get; init; }
    /// <summary>VMM work for a guest CR3 load under shadow paging (finding or building the shadow root).</summary>
    public required double AddressSpaceSwitch { get; init; }
    /// <summary>VMM work for a hidden page fault under shadow paging, besides its software walk's references.</summary>
    public required double HiddenFault { get; init; }
    /// <summary>VMM work to reflect a true page fault into the guest, besides its software walk's references.</summary>
    public required double TrueFault { get; init; }
    /// <summary>VMM work to emulate a guest write to a write-protected page (a page-table write) and update the shadows.</summary>
    public required double WriteEmulation { get; init; }
    /// <summary>VMM work to give a guest page its host frame and nested entry on an EPT violation.</summary>
    public required double NestedPageFault { get; init; }

    // Device I/O (issue 13; docs/cost-model.md, "Device I/O"). A port-I/O exit costs VmExitRoundTrip + IoEmulation;
    // the figures below price the other ways a driver reaches its device.

    /// <summary>VMM work to emulate a trapped access to a device's memory-mapped registers (an MMIO exit: EPT
    /// misconfiguration on VT-x, the faulting instruction decoded and sent to the device model), besides the exit
    /// round trip. A virtio notify is one such write.</summary>
    public required double MmioEmulation { get; init; }
    /// <summary>An uncached access to a device register that reaches the device without a VMM: native MMIO, or an
    /// assigned device's registers mapped into the guest.</summary>
    public required double DeviceRegisterAccess { get; init; }
    /// <summary>VMM work to deliver one device interrupt to the guest: the external-interrupt (or I/O-thread) path,
    /// the virtual I/O APIC and local APIC update and the event injection at the next VM entry.</summary>
    public required double InterruptInjection { get; init; }

    // Software techniques (no hardware assistance): a trap is an exception into the VMM's ring 0 and back; binary
    // translation replaces some of those with callouts from translated code.

    /// <summary>A trap into a software VMM and back (a privileged instruction's #GP, a page fault, a system call or
    /// interrupt the VMM reflects into the guest).</summary>
    public required double TrapRoundTrip { get; init; }
    /// <summary>A callout from translated code into the VMM and back.</summary>
    public required double Callout { get; init; }
    /// <summary>A software VMM's work to emulate one privileged instruction.</summary>
    public required double PrivilegedEmulation { get; init; }
    /// <summary>A software VMM's work to emulate a port access.</summary>
    public required double SoftwareIoEmulation { get; init; }
    /// <summary>A software VMM's work on a hidden or true page fault (walk excluded: its references are charged).</summary>
    public required double SoftwarePageFault { get; init; }
    /// <summary>A software VMM's work to emulate a write to a write-protected page table and update the shadows.</summary>
    public required double SoftwareWriteEmulation { get; init; }
    /// <summary>Translating one guest instruction (binary translation).</summary>
    public required double TranslationPerInstruction { get; init; }
    /// <summary>A return or indirect branch in translated code: its target looked up in the translation cache.</summary>
    public required double IndirectBranch { get; init; }
    /// <summary>A hypercall into a paravirtual VMM and back.</summary>
    public required double HypercallRoundTrip { get; init; }
    /// <summary>The VMM's work per page-table entry a paravirtual guest hands it (validate, write, update the shadow).</summary>
    public required double ParavirtualUpdate { get; init; }

    /// <summary>Adams &amp; Agesen's Pentium 4 672 (3.8 GHz, VT-x without EPT), ASPLOS 2006.</summary>
    public static CostProfile Pentium4 { get; } = new()
    {
        Name = "pentium4",
        Description = "Pentium 4 672 at 3.8 GHz with first-generation VT-x (Adams & Agesen, ASPLOS 2006)",
        ClockHz = 3.8e9,
        CyclesPerInstruction = Classes(arithmetic: 1, multiplyDivide: 14, dataMovement: 1, controlTransfer: 2, @string: 2, system: 30),
        MemoryReference = 1,
        WalkReference = 27,
        ExceptionRoundTrip = 850,
        SystemCallRoundTrip = 242,
        PortAccess = 3209,
        VmExitRoundTrip = 2409,
        SimpleExitHandling = 500,
        IoEmulation = 13417,
        AddressSpaceSwitch = 3000,
        HiddenFault = 7740,
        TrueFault = 7740,
        WriteEmulation = 10324,
        NestedPageFault = 3000,
        MmioEmulation = 13417,
        DeviceRegisterAccess = 3209,
        InterruptInjection = 3000,
        TrapRoundTrip = 2000,
        Callout = 35,
        PrivilegedEmulation = 300,
        SoftwareIoEmulation = 179,
        SoftwarePageFault = 834,
        SoftwareWriteEmulation = 356,
        TranslationPerInstruction = 200,
        IndirectBranch = 40,
        HypercallRoundTrip = 2000,
        ParavirtualUpdate = 100,
        References = new Dictionary<string, (IReadOnlyDictionary<string, double>, string)>
        {
            ["forkwait"] = (new Dictionary<string, double> { ["native"] = 1, ["bt+shadow"] = 36.9 / 6.0, ["hw+shadow"] = 106.4 / 6.0 },
                "Adams & Agesen, ASPLOS 2006: forkwait (40,000 forks) 6.0 s native, 36.9 s software VMM, 106.4 s hardware VMM"),
        },
    };

    /// <summary>A current server core (Skylake-SP class, 2.5 GHz) with VT-x, EPT and VPID.</summary>
    public static CostProfile Modern { get; } = new()
    {
        Name = "modern",
        Description = "Skylake-SP class server core at 2.5 GHz with VT-x, EPT and VPID",
        ClockHz = 2.5e9,
        CyclesPerInstruction = Classes(arithmetic: 0.5, multiplyDivide: 8, dataMovement: 0.5, controlTransfer: 1, @string: 1, system: 20),
        MemoryReference = 0.5,
        WalkReference = 12,
        ExceptionRoundTrip = 1050,
        SystemCallRoundTrip = 150,
        PortAccess = 2000,
        VmExitRoundTrip = 1000,
        SimpleExitHandling = 300,
        IoEmulation = 4000,
        AddressSpaceSwitch = 1500,
        HiddenFault = 3000,
        TrueFault = 3000,
        WriteEmulation = 3000,
        NestedPageFault = 2500,
        MmioEmulation = 4000,
        DeviceRegisterAccess = 2000,
        InterruptInjection = 2000,
        TrapRoundTrip = 1500,
        Callout = 30,
        PrivilegedEmulation = 200,
        SoftwareIoEmulation = 150,
        SoftwarePageFault = 800,
        SoftwareWriteEmulation = 300,
        TranslationPerInstruction = 100,
        IndirectBranch = 15,
        HypercallRoundTrip = 1500,
        ParavirtualUpdate = 80,
    };

    public static IReadOnlyList<CostProfile> All { get; } = [Pentium4, Modern];

    /// <summary>Published ratios to native for a workload on the machine this profile describes, by configuration name,
    /// with their source; shown beside the modelled ones. Empty when there are none.</summary>
    public IReadOnlyDictionary<string, (IReadOnlyDictionary<string, double> Ratios, string Source)> References { get; init; } =
        new Dictionary<string, (IReadOnlyDictionary<string, double>, string)>();

    /// <summary>The profile named <paramref name="name"/>, or null.</summary>
    public static CostProfile? Find(string name) => All.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase));

    private static double[] Classes(double arithmetic, double multiplyDivide, double dataMovement, double controlTransfer,
        double @string, double system)
    {
        var cycles = new double[Enum.GetValues<InstructionClass>().Length];
        cycles[(int)InstructionClass.Arithmetic] = arithmetic;
        cycles[(int)InstructionClass.MultiplyDivide] = multiplyDivide;
        cycles[(int)InstructionClass.DataMovement] = dataMovement;
        cycles[(int)InstructionClass.ControlTransfer] = controlTransfer;
        cycles[(int)InstructionClass.String] = @string;
        cycles[(int)InstructionClass.System] = system;
        return cycles;
    }
}
