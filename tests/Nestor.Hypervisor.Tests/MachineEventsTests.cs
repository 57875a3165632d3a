using Nestor.Hypervisor.CostModel;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Tests;

/// <summary>MachineEvents as a vector of counts indexed by <see cref="MachineEvent"/>.</summary>
public sealed class MachineEventsTests
{
    private static MachineEvents Larger() => new()
    {
        PrivilegedTraps = 1000,
        Callouts = 1037,
        InstructionsTranslated = 1074,
        IndirectBranches = 1111,
        Hypercalls = 1148,
        ParavirtualUpdates = 1185,
        Instructions = 1222,
        MemoryReferences = 1259,
        TlbLookups = 1296,
        TlbMisses = 1333,
        Walks = 1370,
        WalkReferences = 1407,
        NestedWalkReferences = 1444,
        EventsDelivered = 1481,
        SystemCalls = 1518,
        PortAccesses = 1555,
        HiddenFaults = 1592,
        TrueFaults = 1629,
        EmulatedWrites = 1666,
        PageTableWrites = 1703,
        AddressSpaceSwitches = 1740,
        VmmWalkReferences = 1777,
        RetiredByClass = [10, 20, 30, 40, 50, 60],
        Exits = new Dictionary<ExitReason, long> { [ExitReason.Cpuid] = 7 },
    };

    private static MachineEvents Smaller() => new()
    {
        PrivilegedTraps = 1,
        Callouts = 4,
        InstructionsTranslated = 7,
        IndirectBranches = 10,
        Hypercalls = 13,
        ParavirtualUpdates = 16,
        Instructions = 19,
        MemoryReferences = 22,
        TlbLookups = 25,
        TlbMisses = 28,
        Walks = 31,
        WalkReferences = 34,
        NestedWalkReferences = 37,
        EventsDelivered = 40,
        SystemCalls = 43,
        PortAccesses = 46,
        HiddenFaults = 49,
        TrueFaults = 52,
        EmulatedWrites = 55,
        PageTableWrites = 58,
        AddressSpaceSwitches = 61,
        VmmWalkReferences = 64,
        RetiredByClass = [1, 2, 3, 4, 5, 6],
        Exits = new Dictionary<ExitReason, long> { [ExitReason.Cpuid] = 2, [ExitReason.Hlt] = 1 },
    };

    [Fact]
    public void Every_property_is_its_entry_of_the_vector_and_every_entry_is_set_by_one_property()
    {
        var e = Larger();
        Assert.Equal(Enum.GetValues<MachineEvent>().Length, e.Counts.Count());
        Assert.Equal(Enum.GetValues<MachineEvent>().Length, e.Counts.Select(c => c.Count).Distinct().Count());
        Assert.Equal(e.Instructions, e[MachineEvent.Instructions]);
        Assert.Equal(e.VmmWalkReferences, e[MachineEvent.VmmWalkReferences]);
        Assert.Equal(e.PrivilegedTraps, e[MachineEvent.PrivilegedTraps]);
    }

    [Fact]
    public void Minus_subtracts_every_event_class_and_exit()
    {
        var a = Larger();
        var b = Smaller();
        var d = a.Minus(b);
        foreach (var (kind, count) in d.Counts)
        {
            Assert.Equal(a[kind] - b[kind], count);
            Assert.NotEqual(0, count);
        }
        Assert.Equal([9L, 18, 27, 36, 45, 54], d.RetiredByClass);
        Assert.Equal(5, d.ExitsFor(ExitReason.Cpuid));
        Assert.Equal(-1, d.ExitsFor(ExitReason.Hlt));
    }

    [Fact]
    public void With_copies_the_counts_and_leaves_the_original_alone()
    {
        var a = Larger();
        var b = a with { Instructions = 1 };
        Assert.Equal(1, b.Instructions);
        Assert.Equal(1000 + (6 * 37), a.Instructions);
        Assert.Equal(a.Walks, b.Walks);
        b.RetiredByClass[0] = -5;
        Assert.Equal(10, a.RetiredByClass[0]);
    }
}
