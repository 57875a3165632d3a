using Nestor.Hypervisor.CostModel;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Tests;

/// <summary>The cost model charges each counted event at its profile's price, and nothing else.</summary>
public class CostModelTests
{
    private static long[] Classes(long arithmetic, long system)
    {
        var c = new long[Enum.GetValues<InstructionClass>().Length];
        c[(int)InstructionClass.Arithmetic] = arithmetic;
        c[(int)InstructionClass.System] = system;
        return c;
    }

    [Fact]
    public void A_native_run_costs_its_instructions_references_and_events()
    {
        var p = CostProfile.Pentium4;
        var e = new MachineEvents
        {
            RetiredByClass = Classes(1000, 10),
            MemoryReferences = 300,
            WalkReferences = 40,
            EventsDelivered = 2,
            SystemCalls = 3,
            PortAccesses = 1,
        };
        var cost = ModelledCost.Of(e, p);
        Assert.Equal(1000 * 1 + 10 * 30, cost.Instructions);
        Assert.Equal(300 * p.MemoryReference, cost.Memory);
        Assert.Equal(40 * p.WalkReference, cost.PageWalks);
        Assert.Equal(2 * p.ExceptionRoundTrip + 3 * p.SystemCallRoundTrip + 1 * p.PortAccess, cost.Events);
        Assert.Equal(0, cost.ExitTransitions);
        Assert.Equal(0, cost.VmmWork);
    }

    [Fact]
    public void Under_a_vmm_each_exit_pays_the_round_trip_and_its_handling()
    {
        var p = CostProfile.Pentium4;
        var e = new MachineEvents
        {
            PortAccesses = 5,
            Exits = new Dictionary<ExitReason, long>
            {
                [ExitReason.IoInstruction] = 5,
                [ExitReason.ExceptionOrNmi] = 7,
                [ExitReason.ControlRegisterAccess] = 4,
                [ExitReason.Cpuid] = 1,
            },
            HiddenFaults = 3,
            TrueFaults = 2,
            EmulatedWrites = 2,
            PageTableWrites = 2,
            AddressSpaceSwitches = 3,
            VmmWalkReferences = 20,
        };
        var cost = ModelledCost.Of(e, p);
        Assert.Equal(17 * p.VmExitRoundTrip, cost.ExitTransitions);
        // Port accesses are charged as emulation, not as hardware accesses; the CR access that is not a CR3 switch and
        // the CPUID are simple exits.
        Assert.Equal(0, cost.Events);
        Assert.Equal(5 * p.IoEmulation + 3 * p.HiddenFault + 2 * p.TrueFault + 2 * p.WriteEmulation + 3 * p.AddressSpaceSwitch +
                     2 * p.SimpleExitHandling + 20 * p.WalkReference, cost.VmmWork);
        Assert.Equal(cost.Instructions + cost.Memory + cost.PageWalks + cost.Events + cost.ExitTransitions + cost.VmmWork, cost.Total);
    }

    [Fact]
    public void Events_net_of_a_baseline_subtract_every_count()
    {
        var run = new MachineEvents { Instructions = 100, Walks = 10, Exits = new Dictionary<ExitReason, long> { [ExitReason.Cpuid] = 3 }, HiddenFaults = 5 };
        var baseline = new MachineEvents { Instructions = 40, Walks = 4, Exits = new Dictionary<ExitReason, long> { [ExitReason.Cpuid] = 1 }, HiddenFaults = 2 };
        var net = run.Minus(baseline);
        Assert.Equal(60, net.Instructions);
        Assert.Equal(6, net.Walks);
        Assert.Equal(2, net.ExitsFor(ExitReason.Cpuid));
        Assert.Equal(3, net.HiddenFaults);
    }

    [Fact]
    public void Profiles_are_found_by_name()
    {
        Assert.Same(CostProfile.Pentium4, CostProfile.Find("PENTIUM4"));
        Assert.Same(CostProfile.Modern, CostProfile.Find("modern"));
        Assert.Null(CostProfile.Find("cray"));
    }
}
