using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory.Reclamation;

namespace Nestor.Hypervisor.Tests.Reclamation;

/// <summary>ESX's free-memory states (Waldspurger OSDI'02 §6.1) with their hysteresis, from the free-memory figures
/// alone.</summary>
public class ReclamationStatesTests
{
    [Theory]
    [InlineData(50, MemoryState.High)]
    [InlineData(4.5, MemoryState.High)]  // below 6% but not below soft's 4%: a fresh host stays high
    [InlineData(3.9, MemoryState.Soft)]
    [InlineData(1.9, MemoryState.Hard)]
    [InlineData(0.9, MemoryState.Low)]
    [InlineData(-3, MemoryState.Low)]
    public void Free_memory_falling_enters_the_lowest_state_whose_threshold_it_is_below(double free, MemoryState expected) =>
        Assert.Equal(expected, ReclamationStateMachine.Next(MemoryState.High, free, ReclamationThresholds.Default));

    [Fact]
    public void A_state_is_left_upwards_only_at_the_next_higher_threshold()
    {
        var t = ReclamationThresholds.Default;
        Assert.Equal(MemoryState.Soft, ReclamationStateMachine.Next(MemoryState.Soft, 5.9, t));  // above soft's 4%, below high's 6%
        Assert.Equal(MemoryState.High, ReclamationStateMachine.Next(MemoryState.Soft, 6, t));
        Assert.Equal(MemoryState.Hard, ReclamationStateMachine.Next(MemoryState.Hard, 3.9, t));
        Assert.Equal(MemoryState.Soft, ReclamationStateMachine.Next(MemoryState.Hard, 4, t));
        Assert.Equal(MemoryState.Low, ReclamationStateMachine.Next(MemoryState.Low, 1.5, t));   // above low's 1%, below hard's 2%
        Assert.Equal(MemoryState.Hard, ReclamationStateMachine.Next(MemoryState.Low, 2.5, t));
        Assert.Equal(MemoryState.High, ReclamationStateMachine.Next(MemoryState.Low, 30, t));   // all the way up at once
    }

    [Fact]
    public void The_machine_charges_each_period_to_the_state_it_was_in_and_counts_transitions()
    {
        var machine = new ReclamationStateMachine(ReclamationThresholds.Default);
        Assert.Equal(MemoryState.High, machine.Update(10, 100));
        Assert.Equal(MemoryState.Soft, machine.Update(3, 100));   // the 100 cycles before it were high
        Assert.Equal(MemoryState.Soft, machine.Update(5, 100));
        Assert.Equal(MemoryState.Low, machine.Update(0.5, 100));
        Assert.Equal(MemoryState.Hard, machine.Update(3, 100));
        Assert.Equal(MemoryState.High, machine.Update(7, 100));
        Assert.Equal(200, machine.CyclesIn(MemoryState.High));
        Assert.Equal(200, machine.CyclesIn(MemoryState.Soft));
        Assert.Equal(100, machine.CyclesIn(MemoryState.Low));
        Assert.Equal(100, machine.CyclesIn(MemoryState.Hard));
        Assert.Equal(4, machine.Transitions);
        Assert.Equal(2, machine.Entries(MemoryState.High)); // the start and the return
        Assert.Equal(1, machine.Entries(MemoryState.Low));
    }

    [Fact]
    public void Thresholds_are_a_parameter_and_bad_ones_are_refused_naming_the_field()
    {
        var custom = new ReclamationThresholds(20, 10, 5, 2);
        Assert.Equal(MemoryState.Soft, ReclamationStateMachine.Next(MemoryState.High, 9, custom));
        Assert.Equal(MemoryState.Soft, ReclamationStateMachine.Next(MemoryState.Soft, 19, custom));
        var e = Assert.Throws<BadInputException>(() => new ReclamationThresholds(4, 6, 2, 1).Validate("host.reclaim"));
        Assert.StartsWith("host.reclaim:", e.Message);
        Assert.Throws<BadInputException>(() => new ReclamationThresholds(6, 4, 2, 0).Validate("x"));
    }
}
