namespace Nestor.Hypervisor.Devices;

/// <summary>Which address space an access went to.</summary>
public enum AccessSpace
{
    Port,
    Memory,
}

/// <summary>Counts of accesses to addresses no device claims: one address (<see cref="Length"/> 1), a range of them
/// once too many distinct addresses were touched (a port range or a 4 KiB MMIO page), or, past the log's bound,
/// everything else in that address space (<see cref="Length"/> 0). <see cref="FirstInstructionPointer"/> is the RIP
/// the engine reported at the first access (<see cref="UnclaimedAccessLog.InstructionPointerIsNext"/> says whether it
/// is the accessing instruction's own address or the one just after it).</summary>
public sealed record UnclaimedAccess(AccessSpace Space, ulong Address, ulong Length, long Reads, long Writes, ulong FirstInstructionPointer)
{
    /// <summary>The address, the range <c>0xFIRST-0xLAST</c>, or "other addresses" for the overflow count.</summary>
    public string Where => Length switch
    {
        0 => "other",
        1 => $"0x{Address:x}",
        _ => $"0x{Address:x}-0x{Address + Length - 1:x}",
    };
}

/// <summary>Counts accesses to unclaimed ports and MMIO addresses and reports the first few on the diagnostics
/// writer, so that a guest probing hardware Nestor does not have is visible without flooding the terminal. Never
/// fatal. Bounded in output and memory whatever the guest does (a VMM must not let a guest exhaust the host,
/// Popek and Goldberg's resource control): after <see cref="ReportedAddresses"/> distinct addresses nothing more is
/// printed but one line saying so; addresses are counted one by one up to <see cref="ExactAddresses"/>, then by
/// range (256 ports, a 4 KiB MMIO page), and past <see cref="TrackedEntries"/> entries in one overflow count per
/// address space.</summary>
public sealed class UnclaimedAccessLog(TextWriter diagnostics)
{
    /// <summary>Distinct addresses reported on the diagnostics writer, one line each.</summary>
    public const int ReportedAddresses = 16;

    /// <summary>Distinct addresses counted one by one; later ones are counted by range.</summary>
    public const int ExactAddresses = 256;

    /// <summary>Entries (addresses and ranges) kept in all; later accesses go to one overflow count.</summary>
    public const int TrackedEntries = 1024;

    private const ulong PortRange = 0x100, PageRange = 0x1000;

    private readonly Dictionary<(AccessSpace Space, ulong Address, ulong Length), Counts> counts = [];
    private int exact;
    private int reported;
    private bool toldOfSilence;

    private sealed class Counts(ulong rip)
    {
        public long Reads;
        public long Writes;
        public readonly ulong Rip = rip;
    }

    /// <summary>Every unclaimed address or range touched so far, with the overflow counts last in their space.</summary>
    public IReadOnlyList<UnclaimedAccess> Accesses =>
        counts.Select(kv => new UnclaimedAccess(kv.Key.Space, kv.Key.Address, kv.Key.Length, kv.Value.Reads, kv.Value.Writes, kv.Value.Rip))
              .OrderBy(a => a.Space).ThenBy(a => a.Length == 0).ThenBy(a => a.Address).ToList();

    /// <summary>Total unclaimed accesses.</summary>
    public long Total { get; private set; }

    /// <summary>Whether the RIP the engine supplies is the address just after the accessing instruction (KVM at its
    /// I/O and MMIO exits has moved past it and does not say by how much) rather than the instruction's own (the
    /// software machine knows it).</summary>
    public bool InstructionPointerIsNext { get; set; } = true;

    /// <summary>Lines written to the diagnostics writer so far (at most <see cref="ReportedAddresses"/> + 1).</summary>
    public int LinesWritten => reported + (toldOfSilence ? 1 : 0);

    internal void Record(AccessSpace space, ulong address, int size, bool isWrite, ulong value, Func<ulong>? rip)
    {
        Total++;
        if (Find(space, address) is { } known)
        {
            Count(known, isWrite);
            return;
        }
        ulong at = rip?.Invoke() ?? 0;
        var key = Key(space, address);
        var entry = counts[key] = new Counts(at);
        Count(entry, isWrite);
        if (key.Length != 1)
        {
            return;
        }
        exact++;
        if (reported < ReportedAddresses)
        {
            reported++;
            string where = space == AccessSpace.Port ? $"I/O port 0x{address:x}" : $"MMIO address 0x{address:x}";
            string what = isWrite ? $"wrote 0x{value:x} ({size} byte{(size > 1 ? "s" : "")}) to" : $"read {size} byte{(size > 1 ? "s" : "")} from";
            diagnostics.WriteLine(
                $"nestor: the guest {what} {where}, which no device claims " +
                $"(rip=0x{at:x}{(InstructionPointerIsNext ? ", just after the instruction that made the access" : "")}); " +
                "reads return all ones, writes are dropped. Further accesses to this address are counted, not reported.");
        }
        else if (!toldOfSilence)
        {
            toldOfSilence = true;
            diagnostics.WriteLine(
                $"nestor: the guest has touched more than {ReportedAddresses} addresses no device claims; further ones are " +
                "counted, not reported (--stats and --json list them)");
        }
    }

    private static void Count(Counts c, bool isWrite)
    {
        if (isWrite)
        {
            c.Writes++;
        }
        else
        {
            c.Reads++;
        }
    }

    /// <summary>The entry that already counts <paramref name="address"/>: the address itself, its range, or the
    /// overflow count once the log is full.</summary>
    private Counts? Find(AccessSpace space, ulong address)
    {
        ulong range = space == AccessSpace.Port ? PortRange : PageRange;
        if (counts.TryGetValue((space, address, 1), out var c) ||
            counts.TryGetValue((space, address & ~(range - 1), range), out c))
        {
            return c;
        }
        return counts.Count >= TrackedEntries ? counts.GetValueOrDefault((space, 0UL, 0UL)) : null;
    }

    /// <summary>Where a new address is counted: by itself while few are, then by range, then in the overflow count.</summary>
    private (AccessSpace Space, ulong Address, ulong Length) Key(AccessSpace space, ulong address)
    {
        if (counts.Count >= TrackedEntries)
        {
            return (space, 0, 0);
        }
        if (exact < ExactAddresses)
        {
            return (space, address, 1);
        }
        ulong range = space == AccessSpace.Port ? PortRange : PageRange;
        return (space, address & ~(range - 1), range);
    }
}
