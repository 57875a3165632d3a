namespace Nestor.Hypervisor.Scheduling;

/// <summary>How a host's scheduler gives an engine's vCPU its host CPU time: the engine asks before each slice, and
/// the call blocks its thread while the vCPU is descheduled (the vCPU's own time stands still meanwhile).</summary>
public interface IVcpuQuantum
{
    /// <summary>Called by the engine before each slice with the vCPU's clock (its TSC: retired instructions plus the
    /// cycles it idled in HLT) and its retired-instruction count; accounts the slice that just ended, waits until the
    /// vCPU is dispatched again, and returns how many instructions it may retire in the next one (1 once the run has
    /// been asked to stop, so that the engine looks at the stop at once).</summary>
    long NextBudget(long clock, long instructionsRetired);
}
