namespace Nestor.Hypervisor.Devices.Assigned.Iommu;

/// <summary>Who issued a DMA request: the PCI requester ID (bus, device, function) the remapping hardware indexes its
/// root and context tables with (Intel VT-d specification rev. 4, §3.4.1, "Legacy Mode Address Translation").</summary>
public readonly record struct SourceId(byte Bus, byte Device, byte Function)
{
    /// <summary>The 16-bit requester ID: bus in bits 15:8, device in 7:3, function in 2:0.</summary>
    public ushort Value => (ushort)((Bus << 8) | ((Device & 0x1F) << 3) | (Function & 0x7));

    /// <summary>The device-and-function index into the bus's context table.</summary>
    public int DeviceFunction => ((Device & 0x1F) << 3) | (Function & 0x7);

    public override string ToString() => $"{Bus:x2}:{Device & 0x1F:x2}.{Function & 0x7}";
}

/// <summary>Why the remapping hardware blocked a DMA request; the values are VT-d's non-recoverable fault reasons
/// (VT-d rev. 4, Appendix A).</summary>
public enum DmaFaultReason : byte
{
    /// <summary>1h: the present bit of the bus's root entry is clear.</summary>
    RootEntryNotPresent = 0x1,

    /// <summary>2h: the present bit of the device's context entry is clear.</summary>
    ContextEntryNotPresent = 0x2,

    /// <summary>3h: the context entry is malformed (a translation type or address width the unit does not offer).</summary>
    InvalidContextEntry = 0x3,

    /// <summary>4h: the address is beyond the domain's address width (48 bits with a 4-level table).</summary>
    AddressBeyondWidth = 0x4,

    /// <summary>5h: a write through a second-level entry whose write bit is clear: a page the VMM mapped read-only,
    /// or one it did not map at all (VT-d has no separate reason for a not-present second-level entry).</summary>
    WriteNotPermitted = 0x5,

    /// <summary>6h: a read through a second-level entry whose read bit is clear: the page is not mapped (outside the
    /// VM's RAM, or a page the VMM left unmapped).</summary>
    ReadNotPermitted = 0x6,
}

/// <summary>One recorded DMA fault: VT-d's fault recording register (FRCD, §7.2.1) holds the source ID, the faulting
/// page address, whether it was a write, and the reason.</summary>
public readonly record struct DmaFault(SourceId Source, ulong Address, bool Write, DmaFaultReason Reason)
{
    public override string ToString() =>
        $"DMA fault: device {Source} {(Write ? "write to" : "read from")} 0x{Address:x} blocked ({Describe(Reason)})";

    /// <summary>The reason in words.</summary>
    public static string Describe(DmaFaultReason reason) => reason switch
    {
        DmaFaultReason.RootEntryNotPresent => "root entry not present",
        DmaFaultReason.ContextEntryNotPresent => "context entry not present",
        DmaFaultReason.InvalidContextEntry => "invalid context entry",
        DmaFaultReason.AddressBeyondWidth => "address beyond the domain's width",
        DmaFaultReason.WriteNotPermitted => "write not permitted: read-only or not mapped",
        DmaFaultReason.ReadNotPermitted => "read not permitted: not mapped",
        _ => $"fault reason {(byte)reason}",
    };
}

/// <summary>The faults a remapping unit recorded. Like VT-d's fault recording registers (§7.2.1) it keeps a fixed
/// number of records and then only counts (the "primary fault overflow" of the fault status register), so that a
/// guest that faults forever cannot grow the host; each faulting page is reported once to the diagnostics writer (up to
/// <see cref="LoggedAddressLimit"/> pages, then once that the rest go unreported).</summary>
public sealed class DmaFaultLog(TextWriter diagnostics)
{
    /// <summary>Records kept.</summary>
    public const int RecordLimit = 16;

    /// <summary>Distinct faulting pages reported to the diagnostics writer.</summary>
    public const int LoggedAddressLimit = 1024;

    private readonly List<DmaFault> records = new(RecordLimit);
    private readonly HashSet<ulong> logged = [];
    private bool loggingStopped;

    /// <summary>The first <see cref="RecordLimit"/> faults.</summary>
    public IReadOnlyList<DmaFault> Records => records;

    /// <summary>Every fault, recorded or not.</summary>
    public long Count { get; private set; }

    /// <summary>Faults after the records were full (VT-d's primary fault overflow).</summary>
    public bool Overflowed => Count > records.Count;

    /// <summary>Records <paramref name="fault"/>.</summary>
    public void Record(DmaFault fault)
    {
        Count++;
        if (records.Count < RecordLimit)
        {
            records.Add(fault);
        }
        ulong page = fault.Address & ~0xFFFUL;
        if (logged.Contains(page) || loggingStopped)
        {
            return;
        }
        if (logged.Count >= LoggedAddressLimit)
        {
            loggingStopped = true;
            diagnostics.WriteLine($"nestor: more than {LoggedAddressLimit} pages caused DMA faults; the rest are counted, not reported");
            return;
        }
        logged.Add(page);
        diagnostics.WriteLine($"nestor: {fault}");
    }

    /// <summary>Makes the log empty (a reset of the remapping unit).</summary>
    public void Clear()
    {
        records.Clear();
        logged.Clear();
        loggingStopped = false;
        Count = 0;
    }
}
