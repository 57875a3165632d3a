using System.Globalization;
using Nestor.Hypervisor.Errors;

namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>The free-memory states of ESX (Waldspurger, "Memory Resource Management in VMware ESX Server", OSDI'02
/// §6.1): what the host does to get memory back depends on how much is free.</summary>
public enum MemoryState
{
    /// <summary>Free memory is sufficient: no reclamation.</summary>
    High,

    /// <summary>Reclaim by ballooning the VMs above their targets; host swapping only where a VM has no balloon.</summary>
    Soft,

    /// <summary>Balloon, and page out by host swapping the VMs still above their targets.</summary>
    Hard,

    /// <summary>Swap, and block the VMs above their targets until memory is back.</summary>
    Low,
}

/// <summary>The four thresholds, in percent of host memory (ESX's defaults 6, 4, 2 and 1, §6.1). Entering: free memory
/// below <see cref="Soft"/> goes to soft, below <see cref="Hard"/> to hard, below <see cref="Low"/> to low. Leaving
/// (the hysteresis): a state is left for the next higher one only when free memory is back at that state's threshold
/// (soft to high at <see cref="High"/>, hard to soft at <see cref="Soft"/>, low to hard at <see cref="Hard"/>).
/// "A transition to a lower reclamation state occurs when the amount of free memory drops below the lower threshold.
/// After reclaiming memory, the system transitions back to the next higher state only after significantly exceeding
/// the higher threshold" (§6.1).</summary>
public sealed record ReclamationThresholds(double High = 6, double Soft = 4, double Hard = 2, double Low = 1)
{
    /// <summary>ESX's thresholds.</summary>
    public static ReclamationThresholds Default { get; } = new();

    /// <summary>The threshold of <paramref name="state"/>, in percent.</summary>
    public double Of(MemoryState state) => state switch
    {
        MemoryState.High => High,
        MemoryState.Soft => Soft,
        MemoryState.Hard => Hard,
        _ => Low,
    };

    /// <summary>Checks that they fall from high to low, each above 0 and below 100.</summary>
    /// <param name="field">Names them in the error.</param>
    /// <exception cref="BadInputException">They do not.</exception>
    public void Validate(string field)
    {
        if (!(Low > 0 && Hard > Low && Soft > Hard && High > Soft && High < 100) || !double.IsFinite(High))
        {
            throw new BadInputException(
                string.Create(CultureInfo.InvariantCulture, $"{field}: thresholds high {High}%, soft {Soft}%, hard {Hard}%, low {Low}% do not fall from high to low between 0 and 100"),
                "Give high > soft > hard > low > 0 percent of host memory, e.g. 6, 4, 2, 1 (ESX's defaults)");
        }
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{High:0.##}/{Soft:0.##}/{Hard:0.##}/{Low:0.##}%");
}

/// <summary>The host's current free-memory state with its hysteresis, and how long it spent in each state.</summary>
public sealed class ReclamationStateMachine(ReclamationThresholds thresholds)
{
    private readonly long[] cycles = new long[4];
    private readonly long[] entries = [1, 0, 0, 0];

    /// <summary>The thresholds it moves by.</summary>
    public ReclamationThresholds Thresholds { get; } = thresholds;

    /// <summary>The state now.</summary>
    public MemoryState State { get; private set; } = MemoryState.High;

    /// <summary>State changes so far.</summary>
    public long Transitions { get; private set; }

    /// <summary>Virtual time spent in <paramref name="state"/>, in cycles.</summary>
    public long CyclesIn(MemoryState state) => cycles[(int)state];

    /// <summary>Times <paramref name="state"/> was entered (high counts the start).</summary>
    public long Entries(MemoryState state) => entries[(int)state];

    /// <summary>The state after a period of <paramref name="elapsedCycles"/> (charged to the state it was in) that
    /// ended with <paramref name="freePercent"/> of host memory free.</summary>
    public MemoryState Update(double freePercent, long elapsedCycles)
    {
        cycles[(int)State] += elapsedCycles;
        var next = Next(State, freePercent, Thresholds);
        if (next != State)
        {
            State = next;
            entries[(int)next]++;
            Transitions++;
        }
        return State;
    }

    /// <summary>The state that <paramref name="freePercent"/> free leads to from <paramref name="current"/>: down into
    /// the lowest state whose threshold free memory is below, else up, a state at a time, while free memory is at
    /// least the threshold of the state above.</summary>
    public static MemoryState Next(MemoryState current, double freePercent, ReclamationThresholds thresholds)
    {
        for (var lower = MemoryState.Low; lower > current; lower--)
        {
            if (freePercent < thresholds.Of(lower))
            {
                return lower;
            }
        }
        var state = current;
        while (state > MemoryState.High && freePercent >= thresholds.Of(state - 1))
        {
            state--;
        }
        return state;
    }
}
