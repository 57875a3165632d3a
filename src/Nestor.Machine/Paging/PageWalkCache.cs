namespace Nestor.Machine.Paging;

/// <summary>A cache of upper-level paging-structure entries (Intel SDM Vol. 3A §4.10.3, "Paging-Structure Caches"):
/// for a linear-address prefix it remembers the physical address of the next table and the rights accumulated so
/// far, so a walk can start below the top. Level 0 caches PML4Es (prefix VA[47:39]), level 1 PDPTEs (VA[47:30]),
/// level 2 PDEs that point to page tables (VA[47:21]). Each level is fully associative with LRU replacement.</summary>
public sealed class PageWalkCache
{
    private readonly Entry[][] levels;
    private ulong clock;

    private struct Entry
    {
        public ulong Prefix;
        public ulong NextTable;
        public TranslationRights Rights;
        public bool Valid;
        public ulong LastUse;
    }

    /// <summary>A cache with <paramref name="entriesPerLevel"/> entries at each of the three levels; 0 disables it.</summary>
    public PageWalkCache(int entriesPerLevel)
    {
        EntriesPerLevel = entriesPerLevel;
        levels = [new Entry[entriesPerLevel], new Entry[entriesPerLevel], new Entry[entriesPerLevel]];
    }

    public int EntriesPerLevel { get; }

    /// <summary>The deepest cached level for <paramref name="linear"/>: 2 (PDE: next table is the page table), 1, 0, or
    /// -1 when nothing is cached.</summary>
    public int Lookup(ulong linear, out ulong nextTable, out TranslationRights rights)
    {
        for (int level = 2; level >= 0; level--)
        {
            ulong prefix = linear >> Shift(level);
            var entries = levels[level];
            for (int i = 0; i < entries.Length; i++)
            {
                if (entries[i].Valid && entries[i].Prefix == prefix)
                {
                    entries[i].LastUse = ++clock;
                    nextTable = entries[i].NextTable;
                    rights = entries[i].Rights;
                    return level;
                }
            }
        }
        nextTable = 0;
        rights = TranslationRights.None;
        return -1;
    }

    /// <summary>The deepest cached level for <paramref name="linear"/>, as <see cref="Lookup"/> would find it, without
    /// counting as a use (for explaining a walk).</summary>
    public int Peek(ulong linear)
    {
        for (int level = 2; level >= 0; level--)
        {
            ulong prefix = linear >> Shift(level);
            foreach (var e in levels[level])
            {
                if (e.Valid && e.Prefix == prefix)
                {
                    return level;
                }
            }
        }
        return -1;
    }

    /// <summary>Remembers that after the entry at <paramref name="level"/> the walk for <paramref name="linear"/>
    /// continues at <paramref name="nextTable"/> with <paramref name="rights"/>.</summary>
    public void Insert(int level, ulong linear, ulong nextTable, TranslationRights rights)
    {
        var entries = levels[level];
        if (entries.Length == 0)
        {
            return;
        }
        ulong prefix = linear >> Shift(level);
        int victim = 0;
        for (int i = 0; i < entries.Length; i++)
        {
            if (!entries[i].Valid || entries[i].Prefix == prefix)
            {
                victim = i;
                break;
            }
            if (entries[i].LastUse < entries[victim].LastUse)
            {
                victim = i;
            }
        }
        entries[victim] = new Entry { Prefix = prefix, NextTable = nextTable, Rights = rights, Valid = true, LastUse = ++clock };
    }

    /// <summary>Drops everything (INVLPG, INVPCID and CR3 writes may invalidate all of it, §4.10.4).</summary>
    public void Flush()
    {
        foreach (var entries in levels)
        {
            Array.Clear(entries);
        }
    }

    private static int Shift(int level) => 39 - 9 * level;
}
