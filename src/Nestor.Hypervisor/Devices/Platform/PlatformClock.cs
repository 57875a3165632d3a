using System.Diagnostics;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform;

/// <summary>The virtual time the platform's timers (the 8254 PIT, the ACPI PM timer, the HPET) count in,
/// nanoseconds since the VM was built. On the software machine it is the guest's own clock, the CPU's cycle count
/// (retired instructions plus idle cycles: the guest TSC), read at a nominal <see cref="SimCyclesPerSecond"/>, so
/// that the timers agree with the TSC and the local APIC timer and a run is deterministic; the engine attaches it
/// for a run (<see cref="Attach"/>). Without an attached source (KVM, whose TSC is the host's) it is the host's
/// monotonic clock. Between runs time stands still, and a snapshot keeps it.</summary>
public sealed class PlatformClock : ISnapshottable
{
    /// <summary>The software machine's nominal clock: one cycle (one TSC tick) is one nanosecond.</summary>
    public const long SimCyclesPerSecond = 1_000_000_000;

    private Func<long>? source;
    private long sourceStart;
    private long epoch; // nanoseconds at the moment the current source was attached (or time stood still)
    private long hostStart;
    private bool running;

    /// <summary>Now, in nanoseconds of virtual time.</summary>
    public long Nanoseconds
    {
        get
        {
            if (source is not null)
            {
                return epoch + (source() - sourceStart) * (1_000_000_000 / SimCyclesPerSecond);
            }
            if (running)
            {
                return epoch + (long)((Stopwatch.GetTimestamp() - hostStart) * (1e9 / Stopwatch.Frequency));
            }
            return epoch;
        }
    }

    /// <summary>The value of the attached cycle source at virtual time <paramref name="nanoseconds"/> (the first
    /// cycle at which the time has come), or <see cref="long.MaxValue"/> for <see cref="long.MaxValue"/> or when
    /// no cycle source is attached (host time: nothing to skip to).</summary>
    public long SourceValueAt(long nanoseconds)
    {
        if (source is null || nanoseconds == long.MaxValue)
        {
            return long.MaxValue;
        }
        const long perCycle = 1_000_000_000 / SimCyclesPerSecond;
        return sourceStart + (Math.Max(0, nanoseconds - epoch) + perCycle - 1) / perCycle;
    }

    /// <summary>Counts from now on in <paramref name="cycles"/> (the software CPU's clock), continuing from the
    /// time reached so far.</summary>
    public void Attach(Func<long> cycles)
    {
        epoch = Nanoseconds;
        source = cycles;
        sourceStart = cycles();
        running = false;
    }

    /// <summary>Counts from now on in host time (an engine whose guest clock is the host's).</summary>
    public void AttachHost()
    {
        epoch = Nanoseconds;
        source = null;
        hostStart = Stopwatch.GetTimestamp();
        running = true;
    }

    /// <summary>Stops the clock at the time reached (the end of a run).</summary>
    public void Detach()
    {
        epoch = Nanoseconds;
        source = null;
        running = false;
    }

    public string SectionTag => "CLCK";

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer) => writer.WriteInt64(Nanoseconds);

    public void Restore(SnapshotReader reader, ushort version)
    {
        long t = reader.ReadInt64();
        if (t < 0)
        {
            throw reader.Invalid($"platform time {t} ns is negative");
        }
        epoch = t;
        source = null;
        running = false;
    }
}

/// <summary>A platform device that raises interrupts at moments of virtual time (a timer): the engine asks when the
/// next one is due and advances it to the present.</summary>
public interface ITimedDevice
{
    /// <summary>The virtual time (ns) of the next interrupt, or <see cref="long.MaxValue"/> when none is armed.</summary>
    long NextEvent { get; }

    /// <summary>Delivers what fell due up to <paramref name="now"/> (ns).</summary>
    void Advance(long now);
}
