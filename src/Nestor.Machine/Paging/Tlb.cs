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
}

/// <summary>A set-associative, PCID-tagged translation lookaside buffer holding 4 KiB, 2 MiB and 1 GiB translations
/// (Intel SDM Vol. 3A §4.10.2). A large page occupies one entry, so large pages extend the TLB's reach as on
/// hardware. Lookups allocate nothing.</summary>
public sealed class Tlb
{
    private readonly TlbEntry[] entries;
    private readonly int sets;
    private readonly int ways;
    private ulong clock;

    // Flushing by epoch: a flush starts a new epoch and entries filled before the first epoch still valid for their
    // kind (global or not) no longer count, so a flush costs the same for 64 entries as for 4096. Guests that flush
    // often (kvm-unit-tests' vmexit toggle_cr4_pge: two full flushes every few instructions) would otherwise spend
    // their time clearing entries one by one.
    private ulong epoch = 1, globalFrom = 1, nonGlobalFrom = 1;

    public Tlb(TlbConfiguration configuration)
    {
        configuration.Validate();
        Configuration = configuration;
        entries = new TlbEntry[configuration.Entries];
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
        int i = Probe(linear, 12, processContext);
        if (i < 0)
        {
            i = Probe(linear, 21, processContext);
            if (i < 0)
            {
                i = Probe(linear, 30, processContext);
            }
        }
        if (i >= 0)
        {
            entries[i].LastUse = ++clock;
        }
        return i;
    }

    /// <summary>Whether the TLB holds a translation of <paramref name="linear"/>, without counting as a use.</summary>
    public bool Holds(GuestVirtual linear, ushort processContext) => Holds(linear.Value, processContext);

    /// <summary>Whether a nested TLB holds a translation of <paramref name="guestPhysical"/>, without counting as a use.</summary>
    public bool Holds(GuestPhysical guestPhysical) => Holds(guestPhysical.Value, 0);

    internal bool Holds(ulong linear, ushort processContext) =>
        Probe(linear, 12, processContext) >= 0 || Probe(linear, 21, processContext) >= 0 || Probe(linear, 30, processContext) >= 0;

    /// <summary>The entry at <paramref name="index"/> (from a Lookup).</summary>
    public ref readonly TlbEntry this[int index] => ref entries[index];

    private int Probe(ulong linear, int shift, ushort processContext)
    {
        ulong page = linear >> shift;
        int set = (int)(page % (ulong)sets);
        int first = set * ways;
        for (int w = 0; w < ways; w++)
        {
            ref readonly var e = ref entries[first + w];
            if (Live(in e) && e.PageShift == shift && e.VirtualPage == page &&
                ((e.Rights & TranslationRights.Global) != 0 || e.ProcessContext == processContext))
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

    internal void Insert(ulong linear, ulong physicalPage, int pageShift, TranslationRights rights, ushort processContext)
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
        };
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
        if (includingGlobal)
        {
            globalFrom = epoch;
        }
    }

    /// <summary>Whether an entry holds a translation: filled, not invalidated one by one, and not older than the last
    /// flush that covers its kind.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool Live(in TlbEntry e) =>
        e.Valid && e.Epoch >= ((e.Rights & TranslationRights.Global) != 0 ? globalFrom : nonGlobalFrom);
}
