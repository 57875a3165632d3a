using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Nestor.Hypervisor.Exits;

/// <summary>Count and time of the VM exits of one reason.</summary>
/// <param name="Reason">The exit reason.</param>
/// <param name="Count">How many exits.</param>
/// <param name="HandlingTime">Time the VMM spent handling them (from the exit to the next entry).</param>
public sealed record ExitReasonStatistic(VmExitReason Reason, long Count, TimeSpan HandlingTime);

/// <summary>Port I/O exits to one port.</summary>
public sealed record PortStatistic(ushort Port, string Device, long Reads, long Writes);

/// <summary>Accesses to one device's memory-mapped registers: trapped ones (each an MMIO exit) and direct ones (an
/// assigned device's registers, which the VMM maps into the guest: no exit).</summary>
public sealed record DeviceMemoryStatistic(string Device, long TrappedReads, long TrappedWrites, long DirectReads, long DirectWrites);

/// <summary>Counts of the VM exits the VMM handled, by reason and by port, and where the time went. Recording
/// allocates nothing once every port has been seen.</summary>
public sealed class ExitStatistics
{
    private readonly long[] counts = new long[Enum.GetValues<VmExitReason>().Length];
    private readonly long[] ticks = new long[Enum.GetValues<VmExitReason>().Length];
    private readonly Dictionary<ushort, (long Reads, long Writes)> ports = [];
    private readonly Dictionary<ushort, string> portDevices = [];
    private readonly Dictionary<string, (long TrappedReads, long TrappedWrites, long DirectReads, long DirectWrites)> deviceMemory = [];

    /// <summary>Time spent inside the engine running the guest (for KVM: inside KVM_RUN).</summary>
    public TimeSpan GuestTime => Stopwatch.GetElapsedTime(0, GuestTicks);

    /// <summary>Time spent in the VMM handling exits.</summary>
    public TimeSpan HandlingTime => Stopwatch.GetElapsedTime(0, ticks.Sum());

    internal long GuestTicks { get; private set; }

    /// <summary>Total exits handled.</summary>
    public long TotalExits => counts.Sum();

    /// <summary>Records one exit and the <paramref name="handlingTicks"/> (Stopwatch ticks) spent on it.</summary>
    public void Record(VmExitReason reason, long handlingTicks)
    {
        counts[(int)reason]++;
        ticks[(int)reason] += handlingTicks;
    }

    /// <summary>Adds time spent running the guest.</summary>
    public void AddGuestTicks(long t) => GuestTicks += t;

    /// <summary>Records a port access for the per-port table.</summary>
    public void RecordPort(ushort port, bool isWrite, int items, string? device)
    {
        ref var entry = ref CollectionsMarshal.GetValueRefOrAddDefault(ports, port, out bool existed);
        if (!existed)
        {
            portDevices[port] = device ?? "(unclaimed)";
        }
        if (isWrite)
        {
            entry.Writes += items;
        }
        else
        {
            entry.Reads += items;
        }
    }

    /// <summary>Records an access to a device's memory-mapped registers: <paramref name="direct"/> when it reached the
    /// device without an exit (an assigned device's registers mapped into the guest), else it was an MMIO exit.</summary>
    public void RecordDeviceMemory(string device, bool isWrite, bool direct)
    {
        ref var entry = ref CollectionsMarshal.GetValueRefOrAddDefault(deviceMemory, device, out _);
        if (direct)
        {
            _ = isWrite ? entry.DirectWrites++ : entry.DirectReads++;
        }
        else
        {
            _ = isWrite ? entry.TrappedWrites++ : entry.TrappedReads++;
        }
    }

    /// <summary>Device-memory accesses that reached their device without an exit.</summary>
    public long DirectDeviceAccesses => deviceMemory.Values.Sum(e => e.DirectReads + e.DirectWrites);

    /// <summary>Device-memory accesses by device, in name order.</summary>
    public IReadOnlyList<DeviceMemoryStatistic> ByDeviceMemory =>
        deviceMemory.OrderBy(d => d.Key, StringComparer.Ordinal)
            .Select(d => new DeviceMemoryStatistic(d.Key, d.Value.TrappedReads, d.Value.TrappedWrites, d.Value.DirectReads, d.Value.DirectWrites))
            .ToList();

    /// <summary>Exits by reason, most frequent first, reasons that never happened left out.</summary>
    public IReadOnlyList<ExitReasonStatistic> ByReason =>
        Enum.GetValues<VmExitReason>()
            .Where(r => counts[(int)r] > 0)
            .Select(r => new ExitReasonStatistic(r, counts[(int)r], Stopwatch.GetElapsedTime(0, ticks[(int)r])))
            .OrderByDescending(s => s.Count)
            .ToList();

    /// <summary>Port accesses by port.</summary>
    public IReadOnlyList<PortStatistic> ByPort =>
        ports.OrderBy(p => p.Key).Select(p => new PortStatistic(p.Key, portDevices[p.Key], p.Value.Reads, p.Value.Writes)).ToList();

    /// <summary>The count for one reason.</summary>
    public long Count(VmExitReason reason) => counts[(int)reason];
}
