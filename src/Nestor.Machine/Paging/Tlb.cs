using System.Runtime.CompilerServices;
using Nestor.Machine.Addresses;

namespace Nestor.Machine.Paging;

/// <summary>Shape of a TLB: <paramref name="Entries"/> split into sets of <paramref name="Ways"/> entries (Ways =
/// Entries for fully associative), replacement least-recently-used within a set.</summary>
public sealed record TlbConfiguration(int Entries, int Ways)
{
    /// <summary>64 entries, 4-way: the shape of a typical first-level data TLB.</summary>
    public static TlbConfiguration Default { get; } = new(64, 4);

    internal void Validate()
    {
        if (Entries <= 0 || Ways <= 0 || Entries % Ways != 0)
        {
            throw new ArgumentException($"a TLB of {Entries} entries cannot have {Ways} ways: entries must be a positive multiple of ways");
        }
    }
}

/// <summary>One translation held by a <see cref="Tlb"/>.</summary>
public struct TlbEntry
{
    /// <summary>Virtual page number at this entry's page size; valid entries only.</summary>
    public ulong VirtualPage;
    /// <summary>Physical address of the page (aligned to its size).</summary>
    public ulong PhysicalPage;
    public TranslationRights Rights;
    /// <summary>log2 of the page size: 12, 21 or 30.</summary>
    public byte PageShift;
    /// <summary>Filled and not invalidated one by one; a whole-TLB flush leaves it set and retires the entry by its
    /// <see cref="Epoch"/> instead, so only entries a lookup returns are known to be live.</summary>
    public bool Valid;
    public ushort ProcessContext;
    internal ulong LastUse;
    /// <summary>The TLB's flush epoch when this entry was filled (see <see cref="Tlb.Flush"/>).</summary>
    internal ulong Epoch;
    /// <summary>A stamp unique to this fill of this slot (never reused): the CPU's fast translations remember it, so
    /// that a slot refilled since with another page, or shadowed by a newer entry for the same address, no longer
    /// hits for them (<see cref="Tlb.TryUse"/>).</summary>
    internal ulong Filled;
}

/// <summary>A set-associative, PCID-tagged translation lookaside buffer holding 4 KiB, 2 MiB and 1 GiB translations
/// (Intel SDM Vol. 3A §4.10.2). A large page occupies one entry, so large pages extend the TLB's reach as on
/// hardware. Lookups allocate nothing.</summary>
public sealed class Tlb
{
    // One entry more than the configuration holds, never valid: the slot the CPU's fast translations name when no
    // TLB took part (paging off), so that their hit path needs no test for it (SinkSlot).
    private readonly TlbEntry[] entries;
    private readonly int sets;
    private readonly int ways;
    private ulong clock;
    private ulong fills;

    // Which large page sizes may be held (bit 0: 2 MiB non-global, 1: 2 MiB global, 2: 1 GiB non-global, 3: 1 GiB
    // global): set by Insert, cleared by the flushes that retire every entry of the kind, so that a lookup skips the
    // probes of sizes the TLB cannot hold. Conservative: INVLPG and PCID flushes leave the bits set.
    private int largeKinds;
    private const int Large2MiB = 0b0011, Large1GiB = 0b1100, LargeNonGlobal = 0b0101;

    // Flushing by epoch: a flush starts a new epoch and entries filled before the first epoch still valid for their
    // kind (global or not) no longer count, so a flush costs the same for 64 entries as for 4096. Guests that flush
    // often (kvm-unit-tests' vmexit toggle_cr4_pge: two full flushes every few instructions) would otherwise spend
    // their time clearing entries one by one.
    private ulong epoch = 1, globalFrom = 1, nonGlobalFrom = 1;

    public Tlb(TlbConfiguration configuration)
    {
        configuration.Validate();
        Configuration = configuration;
        entries = new TlbEntry[configuration.Entries + 1];
        ways = configuration.Ways;
        sets = configuration.Entries / configuration.Ways;
    }

    public TlbConfiguration Configuration { get; }

    /// <summary>Valid entries now held.</summary>
    public int Count
    {
        get
        {
            int n = 0;
            foreach (ref readonly var e in entries.AsSpan())
            {
                n += Live(in e) ? 1 : 0;
            }
            return n;
        }
    }

    /// <summary>Finds the entry translating <paramref name="linear"/> for <paramref name="processContext"/>; returns
    /// its index or -1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Lookup(GuestVirtual linear, ushort processContext) => Lookup(linear.Value, processContext);

    /// <summary>A nested TLB's lookup: the entry translating the guest-physical page of <paramref name="guestPhysical"/>,
    /// or -1.</summary>
    public int Lookup(GuestPhysical guestPhysical) => Lookup(guestPhysical.Value, 0);

    // The MMU's own entry (its translation path keeps addresses as ulong; a nested TLB's keys are guest-physical).
    internal int Lookup(ulong linear, ushort processContext)
    {
        int i = Find(linear, processContext);
        if (i >= 0)
        {
            entries[i].LastUse = ++clock;
        }
        return i;
    }

    // The entry a lookup returns, without counting as a use: the smallest page size first, then way order.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int Find(ulong linear, ushort processContext)
    {
        int i = Probe(linear, 12, processContext);
        if (i < 0 && (largeKinds & Large2MiB) != 0)
        {
            i = Probe(linear, 21, processContext);
        }
        if (i < 0 && (largeKinds & Large1GiB) != 0)
        {
            i = Probe(linear, 30, processContext);
        }
        return i;
    }

    /// <summary>The slot a fast translation names when no TLB took part (paging off): never filled, so its stamp
    /// (0) always matches, and never valid, so no lookup returns it.</summary>
    internal int SinkSlot => entries.Length - 1;

    /// <summary>The stamp of the fill now in <paramref name="slot"/>.</summary>
    internal ulong FilledStamp(int slot) => entries[slot].Filled;

    /// <summary>A CPU's fast translation hits: if <paramref name="slot"/> still holds the fill stamped
    /// <paramref name="filled"/>, the lookup the fast path stands for finds it, and it becomes the most recently used
    /// entry of its set, exactly as <see cref="Lookup(ulong, ushort)"/> would make it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryUse(int slot, ulong filled)
    {
        ref TlbEntry e = ref entries[slot];
        if (e.Filled != filled)
        {
            return false;
        }
        e.LastUse = ++clock;
        return true;
    }

    /// <summary>Whether the TLB holds a translation of <paramref name="linear"/>, without counting as a use.</summary>
    public bool Holds(GuestVirtual linear, ushort processContext) => Holds(linear.Value, processContext);

    /// <summary>Whether a nested TLB holds a translation of <paramref name="guestPhysical"/>, without counting as a use.</summary>
    public bool Holds(GuestPhysical guestPhysical) => Holds(guestPhysical.Value, 0);

    internal bool Holds(ulong linear, ushort processContext) => Find(linear, processContext) >= 0;

    /// <summary>The entry at <paramref name="index"/> (from a Lookup).</summary>
    public ref readonly TlbEntry this[int index] => ref entries[index];

    private int Probe(ulong linear, int shift, ushort processContext, int except = -1)
    {
        ulong page = linear >> shift;
        int set = (int)(page % (ulong)sets);
        int first = set * ways;
        for (int w = 0; w < ways; w++)
        {
            ref readonly var e = ref entries[first + w];
            if (Live(in e) && e.PageShift == shift && e.VirtualPage == page &&
                ((e.Rights & TranslationRights.Global) != 0 || e.ProcessContext == processContext) && first + w != except)
            {
                return first + w;
            }
        }
        return -1;
    }

    /// <summary>Caches a translation, replacing the least recently used entry of its set.</summary>
    public void Insert(GuestVirtual linear, HostPhysical physicalPage, int pageShift, TranslationRights rights, ushort processContext) =>
        Insert(linear.Value, physicalPage.Value, pageShift, rights, processContext);

    /// <summary>A nested TLB's fill: caches the host-physical page of a guest-physical one.</summary>
    public void Insert(GuestPhysical guestPhysical, HostPhysical physicalPage, int pageShift, TranslationRights rights) =>
        Insert(guestPhysical.Value, physicalPage.Value, pageShift, rights, 0);

    /// <summary>Caches a translation as <see cref="Insert(GuestVirtual, HostPhysical, int, TranslationRights, ushort)"/>
    /// does; returns the slot a lookup of <paramref name="linear"/> now finds it in, or -1 when a lookup would find
    /// another entry first (one of a smaller page, or an earlier way, for the same address: possible only after the
    /// page tables changed without an invalidation).</summary>
    internal int Insert(ulong linear, ulong physicalPage, int pageShift, TranslationRights rights, ushort processContext)
    {
        ulong page = linear >> pageShift;
        int set = (int)(page % (ulong)sets);
        int first = set * ways;
        int victim = first;
        for (int w = 0; w < ways; w++)
        {
            ref readonly var e = ref entries[first + w];
            // Replace an entry for the same page (e.g. after a re-walk set D), else an empty one, else the LRU one.
            bool live = Live(in e);
            if (live && e.PageShift == pageShift && e.VirtualPage == page && e.ProcessContext == processContext)
            {
                victim = first + w;
                break;
            }
            if (!live)
            {
                victim = first + w;
                break;
            }
            if (e.LastUse < entries[victim].LastUse)
            {
                victim = first + w;
            }
        }
        entries[victim] = new TlbEntry
        {
            VirtualPage = page,
            PhysicalPage = physicalPage,
            Rights = rights,
            PageShift = (byte)pageShift,
            Valid = true,
            ProcessContext = processContext,
            LastUse = ++clock,
            Epoch = epoch,
            Filled = ++fills,
        };
        largeKinds |= pageShift switch
        {
            12 => 0,
            21 => (rights & TranslationRights.Global) != 0 ? 0b0010 : 0b0001,
            _ => (rights & TranslationRights.Global) != 0 ? 0b1000 : 0b0100,
        };
        // A lookup of a linear address returns one entry (Find's order); another live entry for the same address, of
        // this page size or a larger one, may be the one fast translations still name while lookups now return this
        // one: restamping it makes them look again. Only after page-table changes without an invalidation, or an
        // entry of one PCID beside a global one, are there two.
        for (int shift = pageShift; shift <= 30; shift += 9)
        {
            int other = shift == 12 || (largeKinds & (shift == 21 ? Large2MiB : Large1GiB)) != 0
                ? Probe(linear, shift, processContext, except: victim)
                : -1;
            if (other >= 0)
            {
                entries[other].Filled = ++fills;
            }
        }
        return Find(linear, processContext) == victim ? victim : -1;
    }

    /// <summary>INVLPG: drops every translation of <paramref name="linear"/>, for all PCIDs and global ones too
    /// (§4.10.4.1).</summary>
    public void InvalidatePage(GuestVirtual linear) => InvalidatePage(linear.Value);

    /// <summary>A nested TLB's INVEPT of one page: drops every translation of <paramref name="guestPhysical"/>.</summary>
    public void InvalidatePage(GuestPhysical guestPhysical) => InvalidatePage(guestPhysical.Value);

    internal void InvalidatePage(ulong linear)
    {
        for (int i = 0; i < entries.Length; i++)
        {
            ref var e = ref entries[i];
            if (Live(in e) && e.VirtualPage == linear >> e.PageShift)
            {
                e.Valid = false;
            }
        }
    }

    /// <summary>Drops the non-global translations of one PCID (a CR3 write without the no-flush bit, or INVPCID type 1).</summary>
    public void FlushProcessContext(ushort processContext)
    {
        for (int i = 0; i < entries.Length; i++)
        {
            ref var e = ref entries[i];
            if (Live(in e) && (e.Rights & TranslationRights.Global) == 0 && e.ProcessContext == processContext)
            {
                e.Valid = false;
            }
        }
    }

    /// <summary>Drops every non-global translation (all PCIDs), or everything when <paramref name="includingGlobal"/>.</summary>
    public void Flush(bool includingGlobal)
    {
        epoch++;
        nonGlobalFrom = epoch;
        largeKinds &= ~LargeNonGlobal;
        if (includingGlobal)
        {
            globalFrom = epoch;
            largeKinds = 0;
        }
    }

    /// <summary>Whether an entry holds a translation: filled, not invalidated one by one, and not older than the last
    /// flush that covers its kind.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool Live(in TlbEntry e) =>
        e.Valid && e.Epoch >= ((e.Rights & TranslationRights.Global) != 0 ? globalFrom : nonGlobalFrom);
}
