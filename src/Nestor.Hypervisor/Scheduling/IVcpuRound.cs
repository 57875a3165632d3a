namespace Nestor.Hypervisor.Scheduling;

/// <summary>How a host's scheduler gives one vCPU of a VM with several its host CPU time, when the VM's vCPUs share
/// one engine thread (interleaved, as <c>--cpus N</c> runs them: reproducible, no machine state shared between threads).
/// The engine asks every vCPU of the VM for the round before running any (<see cref="AwaitRound"/>), runs the ones
/// dispatched, and reports every vCPU before it waits for the next round (<see cref="EndRound"/>): with one thread, a
/// vCPU waiting for its next dispatch must not hold back a sibling's report, which the host waits for.</summary>
public interface IVcpuRound
{
    /// <summary>Waits until the host starts a round for this vCPU's VM, and returns how many instructions this vCPU
    /// may retire in it: 0 if the host did not place it on a host CPU this round (it does not run, and its clock stands
    /// still), 1 once the run has been asked to stop (so that the engine looks at the stop at once).</summary>
    long AwaitRound(long clock, long instructionsRetired);

    /// <summary>The round is over for this vCPU: its clock (its TSC) and retired count now, and whether it can run
    /// (false while it waits for a start-up IPI or is halted with nothing to wake it but an interrupt from a sibling or
    /// a device: the host then holds it blocked until it can).</summary>
    void EndRound(long clock, long instructionsRetired, bool runnable);
}
