namespace Nestor.Hypervisor.Scheduling;

/// <summary>The host's virtual clock. Every scheduler decision and every time in a host report is in cycles of the
/// software machine's clock (Cpu.Clock, which is also the guest's TSC and the APIC timer's input: one cycle per
/// retired instruction plus the cycles skipped while halted), not in host wall time: a run is then the same run on
/// a loaded machine as on an idle one, and the tests can measure shares and limits exactly. The clock's rate is a
/// setting: at the default 1,000 MHz a 10 ms tick is 10,000,000 cycles.</summary>
/// <param name="CyclesPerMillisecond">Cycles of virtual time in one millisecond.</param>
public readonly record struct HostClock(long CyclesPerMillisecond)
{
    /// <summary>1 GHz: one million cycles a millisecond (NestorOS's 1,000,000-cycle timer period is then 1 ms).</summary>
    public static HostClock Default => new(1_000_000);

    /// <summary>Cycles in <paramref name="milliseconds"/>.</summary>
    public long Cycles(double milliseconds) => (long)(milliseconds * CyclesPerMillisecond);

    /// <summary>Milliseconds in <paramref name="cycles"/>.</summary>
    public double Milliseconds(long cycles) => (double)cycles / CyclesPerMillisecond;
}
