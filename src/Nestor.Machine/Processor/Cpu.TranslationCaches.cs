using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Nestor.Machine.Paging;

namespace Nestor.Machine.Processor;

// The fetch, read and write fast paths' translations: three small direct-mapped arrays indexed by the linear page's
// low bits, in front of the modelled TLBs, as QEMU's softmmu keeps a direct-mapped TLB of host addresses in front of
// its page walk (QEMU's behaviour taken as fact: CPUTLBEntry, indexed by (address >> page bits) & (size - 1)). One
// entry per access kind thrashed as soon as a loop touched two code pages, the stack and a global (kvm-unit-tests'
// vmexit ipi: half of its accesses took the slow path through Mmu.Translate and Tlb.Lookup).
//
// The modelled TLB stays exact: every fast entry names the TLB slot the lookup it stands for would find and that
// fill's stamp (TlbEntry.Filled). A fast hit checks the stamp (a slot refilled with another page since, which a real
// TLB would have evicted, misses and goes through Mmu.Translate) and makes the slot the most recently used, as
// Tlb.Lookup does, so that the TLB counters, its LRU order and hence its later misses and page walks are exactly those
// of a machine whose every access looked the TLB up (FastTranslationTests run the same guest both ways).
//
// Each array is valid for what the one entry was valid for (the MMU generation, CPL and RFLAGS.AC for data, CR0.WP
// too for writes, CS and EFER.LMA for fetches), recorded in the array's header; when that changes the array starts a
// new epoch instead of being cleared: the epoch is in the top bits of every entry's tag, so a flush costs one
// increment (kvm-unit-tests' vmexit toggle_cr4_pge flushes every ~15 instructions; clearing 256 entries each time
// would cost more than the fast paths save). A linear page number (address >> 12) has at most 52 bits, so the tag's
// top 12 bits hold the epoch; after 4,095 epochs the array is cleared once and the epochs start again.
public sealed unsafe partial class Cpu
{
    /// <summary>Entries in each of the fetch, read and write translation arrays (a power of two).</summary>
    internal const int FastTranslationEntries = 256;

    private const int FastTranslationMask = FastTranslationEntries - 1;
    private const int EpochShift = 52;
    private const ulong LastEpoch = (1UL << (64 - EpochShift)) - 1;

    /// <summary>A cached data translation: the host address of a linear page.</summary>
    private struct DataTranslation
    {
        /// <summary>The linear page number with the array's epoch in the top bits; 0 never matches (epochs start at 1).</summary>
        public ulong Tag;
        public byte* Host;
        /// <summary>The TLB slot a lookup of the page finds, and its fill's stamp (Tlb.TryUse).</summary>
        public int Slot;
        /// <summary>1 when the hit is a TLB hit, 0 when paging is off (no TLB takes part; only a translation is counted).</summary>
        public int Counted;
        public ulong Filled;
        /// <summary>The physical page (writes: found again when the page comes to hold decoded code).</summary>
        public ulong PhysicalPage;
    }

    /// <summary>A cached fetch translation: the decoded page of a linear page (of RIP's page outside 64-bit mode, where
    /// CS's base is a multiple of 4 KiB).</summary>
    private struct FetchTranslation
    {
        public ulong Tag;
        public DecodedPage? Page;
        public int Slot;
        public int Counted;
        public ulong Filled;
    }

    private readonly DataTranslation[] readTranslations = new DataTranslation[FastTranslationEntries];
    private readonly DataTranslation[] writeTranslations = new DataTranslation[FastTranslationEntries];
    private readonly FetchTranslation[] fetchTranslations = new FetchTranslation[FastTranslationEntries];

    // Each array's epoch, already shifted into the tag's top bits, and what its entries are valid for.
    private ulong readEpoch = 1UL << EpochShift, writeEpoch = 1UL << EpochShift, fetchEpoch = 1UL << EpochShift;
    private long readGeneration = -1, writeGeneration = -1, fetchGeneration = -1;
    private int readKey = -1, writeKey = -1;
    private ulong fetchModeKey = ulong.MaxValue;
    private ulong fetchCodeBase;

    // Fast hits, counted locally and folded into the counters they model when Run returns: accesses, and of those the
    // TLB hits (all but the hits made with paging off).
    private long fastFetches, fastReads, fastWrites;
    private long fastFetchHits, fastReadHits, fastWriteHits;

    /// <summary>Whether the fast paths cache translations (on unless a test turns them off to compare: with them off
    /// every access goes through <see cref="Mmu.Translate(ulong, AccessKind, bool, bool, out ulong)"/>).</summary>
    internal bool TranslationCaching { get; set; } = true;

    // RFLAGS.AC is not a status flag, so the raw field holds it even while status flags are pending.
    private int AccessKey => PrivilegeLevel | ((rflags & FlagBits.AlignmentCheck) != 0 ? 4 : 0);

    /// <summary>CS (selector, hence CPL; attributes, hence L and D) and EFER.LMA in one value: equal keys mean the
    /// same privilege and code size, so a cached decode and translation still apply.</summary>
    private ulong ModeKey => ((ulong)Cs.Attributes << 16) | Cs.Selector | ((Efer & Architecture.Efer.LongModeActive) << 32);

    /// <summary>Drops the fetch and data fast paths' cached translations if what they were valid for (CS and EFER.LMA
    /// for fetches, CPL and RFLAGS.AC for data, CR0.WP for writes, the MMU's generation for all) has changed.</summary>
    private void RevalidateTranslations()
    {
        RevalidateFetches();
        RevalidateReads();
        RevalidateWrites();
    }

    private void RevalidateFetches()
    {
        if (Mmu.Generation != fetchGeneration || ModeKey != fetchModeKey || Cs.Base != fetchCodeBase)
        {
            NewEpoch(fetchTranslations, ref fetchEpoch);
            fetchGeneration = Mmu.Generation;
            fetchModeKey = ModeKey;
            fetchCodeBase = Cs.Base;
        }
    }

    private void RevalidateReads()
    {
        int access = AccessKey;
        if (Mmu.Generation != readGeneration || access != readKey)
        {
            NewEpoch(readTranslations, ref readEpoch);
            readGeneration = Mmu.Generation;
            readKey = access;
        }
    }

    private void RevalidateWrites()
    {
        int access = AccessKey;
        if (Mmu.WriteRightsGeneration != writeGeneration || access != writeKey)
        {
            NewEpoch(writeTranslations, ref writeEpoch);
            writeGeneration = Mmu.WriteRightsGeneration;
            writeKey = access;
        }
    }

    /// <summary>Forgets every cached translation (a state load).</summary>
    private void DropTranslationCaches()
    {
        fetchGeneration = readGeneration = writeGeneration = -1;
        RevalidateTranslations();
    }

    /// <summary>Forgets the read fast path's translations (an implicit supervisor read made from user mode).</summary>
    private void DropReadTranslations()
    {
        readGeneration = -1;
        RevalidateReads();
    }

    /// <summary>Forgets the write fast path's translations.</summary>
    private void DropWriteTranslations()
    {
        writeGeneration = -1;
        RevalidateWrites();
    }

    private static void NewEpoch<T>(T[] translations, ref ulong epoch)
    {
        if (epoch >> EpochShift == LastEpoch)
        {
            // The epochs are used up: tags of old epochs would come back, so clear them once and start again.
            Array.Clear(translations);
            epoch = 1UL << EpochShift;
            return;
        }
        epoch += 1UL << EpochShift;
    }

    /// <summary>The array entry of a linear page (no bounds check: the index is masked to the array's size).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref T EntryOf<T>(T[] translations, ulong linearPage) =>
        ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(translations), (int)linearPage & FastTranslationMask);

    /// <summary>Caches the read translation Mmu.Translate just made of <paramref name="linear"/>, if what the array is
    /// valid for is what holds now.</summary>
    private void CacheRead(ulong linear, byte* pageHost, ulong physical)
    {
        if (!TranslationCaching || watchingData || Mmu.LastSlot == Mmu.UncachedSlot)
        {
            return;
        }
        RevalidateReads(); // if what it is valid for changed without a revalidation yet, its entries go now
        Fill(ref EntryOf(readTranslations, linear >> 12), linear >> 12, readEpoch, pageHost, physical, Mmu.DataTlb);
    }

    /// <summary>Caches the write translation Mmu.Translate just made (of a page holding no decoded code).</summary>
    private void CacheWrite(ulong linear, byte* pageHost, ulong physical)
    {
        if (!TranslationCaching || watchingData || Mmu.LastSlot == Mmu.UncachedSlot)
        {
            return;
        }
        RevalidateWrites();
        Fill(ref EntryOf(writeTranslations, linear >> 12), linear >> 12, writeEpoch, pageHost, physical, Mmu.DataTlb);
    }

    private void Fill(ref DataTranslation entry, ulong linearPage, ulong epoch, byte* pageHost, ulong physical, Tlb tlb)
    {
        bool modelled = Mmu.LastSlot >= 0;
        entry.Tag = linearPage | epoch;
        entry.Host = pageHost;
        entry.Slot = modelled ? Mmu.LastSlot : tlb.SinkSlot;
        entry.Filled = modelled ? Mmu.LastFilled : 0;
        entry.Counted = modelled ? 1 : 0;
        entry.PhysicalPage = physical >> 12;
    }

    /// <summary>Caches the fetch translation Mmu.Translate just made of RIP's page <paramref name="ripPage"/>, with
    /// its decoded page.</summary>
    private void CacheFetch(ulong ripPage, DecodedPage decoded, int slot, ulong filled)
    {
        if (!TranslationCaching || slot == Mmu.UncachedSlot)
        {
            return;
        }
        RevalidateFetches();
        ref var entry = ref EntryOf(fetchTranslations, ripPage);
        entry.Tag = ripPage | fetchEpoch;
        entry.Page = decoded;
        entry.Slot = slot >= 0 ? slot : Mmu.InstructionTlb.SinkSlot;
        entry.Filled = slot >= 0 ? filled : 0;
        entry.Counted = slot >= 0 ? 1 : 0;
        decoded.FetchIndex = (int)ripPage & FastTranslationMask;
    }

    /// <summary>A decoded page left the cache: the fetch fast path must not reach it any more.</summary>
    private void ForgetFetch(DecodedPage page)
    {
        if (page.FetchIndex >= 0)
        {
            ref var entry = ref fetchTranslations[page.FetchIndex];
            if (entry.Page == page)
            {
                entry = default;
            }
            page.FetchIndex = -1;
        }
    }

    /// <summary>The physical page <paramref name="page"/> now holds decoded code: this processor's write fast path
    /// drops its translations to it, so that writes to it take the slow path that drops the decoded instructions
    /// (self- and cross-modifying code).</summary>
    private void ForgetCodePageWrites(ulong page)
    {
        foreach (ref var entry in writeTranslations.AsSpan())
        {
            if (entry.PhysicalPage == page && entry.Tag >> EpochShift == writeEpoch >> EpochShift)
            {
                entry.Tag = 0;
            }
        }
    }

    /// <summary>For a string I/O item: whether the read or write fast path holds the page of <paramref name="linear"/>;
    /// if so this is the translation the item's probe stands for, counted as the TLB lookup it models.</summary>
    private bool TryProbeFast(ulong linear, AccessKind kind)
    {
        var translations = kind == AccessKind.Write ? writeTranslations : readTranslations;
        ulong epoch = kind == AccessKind.Write ? writeEpoch : readEpoch;
        ref var entry = ref EntryOf(translations, linear >> 12);
        if (entry.Tag != ((linear >> 12) | epoch) || !Mmu.DataTlb.TryUse(entry.Slot, entry.Filled))
        {
            return false;
        }
        Mmu.Counters.Translations++;
        Mmu.Counters.DataTlbHits += entry.Counted;
        return true;
    }

    /// <summary>Folds the fast hits counted since the last call into the CPU's and MMU's counters.</summary>
    private void FoldFastHits()
    {
        Mmu.Counters.Translations += fastFetches + fastReads + fastWrites;
        Mmu.Counters.InstructionTlbHits += fastFetchHits;
        Mmu.Counters.DataTlbHits += fastReadHits + fastWriteHits;
        Counters.MemoryReads += fastReads;
        Counters.MemoryWrites += fastWrites;
        fastFetches = fastReads = fastWrites = 0;
        fastFetchHits = fastReadHits = fastWriteHits = 0;
    }
}
