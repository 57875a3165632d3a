namespace Nestor.Hypervisor.Devices;

/// <summary>Which address space an access went to.</summary>
public enum AccessSpace
{
    Port,
    Memory,
}

/// <summary>Counts of accesses to one address no device claims. <see cref="FirstInstructionPointer"/> is the RIP
/// the engine reported at the first access: on both engines (the software machine, and KVM at its I/O and MMIO
/// exits) the guest has by then moved past the accessing instruction, so it is the address just after it.</summary>
public sealed record UnclaimedAccess(AccessSpace Space, ulong Address, long Reads, long Writes, ulong FirstInstructionPointer);

/// <summary>Counts accesses to unclaimed ports and MMIO addresses and reports each address once, so a guest probing
/// hardware Nestor does not have is visible without flooding the terminal. Never fatal.</summary>
public sealed class UnclaimedAccessLog(TextWriter diagnostics)
{
    private readonly Dictionary<(AccessSpace, ulong), (long Reads, long Writes, ulong Rip)> counts = [];

    /// <summary>Every unclaimed address touched so far.</summary>
    public IReadOnlyList<UnclaimedAccess> Accesses =>
        counts.Select(kv => new UnclaimedAccess(kv.Key.Item1, kv.Key.Item2, kv.Value.Reads, kv.Value.Writes, kv.Value.Rip))
              .OrderBy(a => a.Space).ThenBy(a => a.Address).ToList();

    /// <summary>Total unclaimed accesses.</summary>
    public long Total { get; private set; }

    internal void Record(AccessSpace space, ulong address, int size, bool isWrite, ulong value, Func<ulong>? rip)
    {
        Total++;
        if (counts.TryGetValue((space, address), out var c))
        {
            counts[(space, address)] = isWrite ? (c.Reads, c.Writes + 1, c.Rip) : (c.Reads + 1, c.Writes, c.Rip);
            return;
        }
        ulong at = rip?.Invoke() ?? 0;
        counts[(space, address)] = isWrite ? (0, 1, at) : (1, 0, at);
        string where = space == AccessSpace.Port ? $"I/O port 0x{address:x}" : $"MMIO address 0x{address:x}";
        string what = isWrite ? $"wrote 0x{value:x} ({size} byte{(size > 1 ? "s" : "")}) to" : $"read {size} byte{(size > 1 ? "s" : "")} from";
        diagnostics.WriteLine(
            $"nestor: the guest {what} {where}, which no device claims (rip=0x{at:x}, just after the instruction that made the access); " +
            "reads return all ones, writes are dropped. Further accesses to this address are counted, not reported.");
    }
}
