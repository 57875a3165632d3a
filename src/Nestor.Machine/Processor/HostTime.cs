using System.Diagnostics;

namespace Nestor.Machine.Processor;

/// <summary>Guest time that follows the host's monotonic clock (<c>--clock host</c>), shared by a VM's vCPUs. The
/// software machine's own clock counts one cycle per retired instruction (plus idle time), which makes every run
/// repeat but also makes a guest that measures itself against the TSC wait for as many instructions as ticks: an
/// interpreter running tens of millions of instructions a second then needs minutes for what takes a second of
/// wall time. Under this clock a vCPU's cycle count is moved forward to the host's time whenever it falls behind,
/// at a nominal rate of cycles per second, and never back: the TSC, the local APIC timer and the platform timers
/// then run at host speed, as QEMU's TCG does by default (its virtual clock is real time unless <c>-icount</c> is
/// given) and as KVM's TSC does. Time a VM spends idle in HLT is still skipped, not slept (QEMU's <c>-icount
/// sleep=off</c>): the clock jumps forward with the skip (<see cref="SkipTo"/>). Runs under it do not repeat.</summary>
public sealed class HostTime
{
    private readonly double cyclesPerTick;
    private readonly long startTicks;
    private long startCycles;

    /// <param name="startCycles">The guest's cycle count now (the furthest vCPU clock), from which time goes on.</param>
    /// <param name="cyclesPerSecond">The machine's nominal clock: cycles of guest time in a second of host time.</param>
    public HostTime(long startCycles, long cyclesPerSecond)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cyclesPerSecond);
        cyclesPerTick = (double)cyclesPerSecond / Stopwatch.Frequency;
        startTicks = Stopwatch.GetTimestamp();
        this.startCycles = startCycles;
    }

    /// <summary>The guest's time now, in cycles: the start plus the host time since, plus what idling skipped.</summary>
    public long Now => startCycles + (long)((Stopwatch.GetTimestamp() - startTicks) * cyclesPerTick);

    /// <summary>Cycles skipped while the VM idled (<see cref="SkipTo"/>), beyond the host time that passed.</summary>
    public long Skipped { get; private set; }

    /// <summary>The VM idled to <paramref name="cycles"/> (a halted vCPU's timer, or every vCPU's next device
    /// event): time continues from there, so the vCPUs that follow host time do not fall back behind it.</summary>
    public void SkipTo(long cycles)
    {
        long ahead = cycles - Now;
        if (ahead > 0)
        {
            startCycles += ahead;
            Skipped += ahead;
        }
    }
}
