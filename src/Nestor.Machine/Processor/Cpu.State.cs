namespace Nestor.Machine.Processor;

// The CPU's state as a value (issue 11). What SaveState returns is everything architectural (CpuState says what is
// and is not modelled); everything else the Cpu object holds is either configuration (the memory, the platform, the
// MMU's sizes, a VMM's controls installed by EnterNonRoot), statistics (Counters, except the retired-instruction count,
// which is the clock), or a rebuildable cache that LoadState drops: the TLBs and page-walk caches, the
// decoded-instruction cache and the fetch, read and write fast paths. Dropping them is never a correctness event
// (the SDM lets a TLB be emptied at any time, Vol. 3A §4.10.2.4), so a restored CPU runs exactly as the saved one
// would have: same instructions retired, same interrupts at the same clock values.
public sealed partial class Cpu
{
    /// <summary>The CPU's architectural state now, as a value (RFLAGS with its status flags computed). Call between
    /// <see cref="Run"/>s.</summary>
    public CpuState SaveState()
    {
        var saved = state;
        saved.Rflags = Rflags; // materialises the lazy flags
        saved.InstructionsRetired = Counters.InstructionsRetired;
        saved.IdleCycles = idleCycles;
        saved.InterruptShadowUntil = interruptShadowUntil;
        saved.Halted = halted;
        saved.PendingDebugExceptions = (debugTraps & HeldTraps) != 0 ? debugTraps & (DebugStatusBreakpoints | DebugStatusSingleStep) : 0;
        saved.Apic = Apic.Save();
        return saved;
    }

    /// <summary>Makes <paramref name="saved"/> the CPU's state and drops every rebuildable cache (TLBs, page-walk
    /// caches, decoded instructions, fetch/read/write fast paths), so that nothing translated or decoded under the old
    /// state survives. The retired-instruction counter takes the saved value (it is the clock); other statistics go on
    /// counting.</summary>
    public void LoadState(in CpuState saved)
    {
        state = saved;
        Rflags = saved.Rflags | FlagBits.Reserved1;
        Counters.InstructionsRetired = saved.InstructionsRetired;
        idleCycles = saved.IdleCycles;
        interruptShadowUntil = saved.InterruptShadowUntil;
        halted = saved.Halted;
        Apic.Restore(in saved.Apic);
        eventCheckAt = 0; // look at the timer and the APIC before the next instruction
        DropDecodedInstructions();
        UpdatePagingControls();
        Mmu.InvalidateNested(); // empties every TLB and walk cache, nested or not
        DropTranslationCaches();
        debugTraps = saved.PendingDebugExceptions != 0 ? (saved.PendingDebugExceptions & (DebugStatusBreakpoints | DebugStatusSingleStep)) | HeldTraps : 0;
        DebugControlsChanged(); // the breakpoints the restored DR7 arms, and RF
    }

    /// <summary>Empties the decoded-instruction cache (every page and alias).</summary>
    private void DropDecodedInstructions()
    {
        foreach (var chain in decodedPages.Values)
        {
            for (var alias = chain; alias is not null; alias = alias.Alias)
            {
                Release(alias);
            }
        }
        decodedPages.Clear();
        if (siblings is null)
        {
            Array.Clear(codePages); // shared with other processors, whose marks must stay
        }
        Array.Clear(residentOrder);
        residentNext = 0;
    }

    // Binary translation's callouts (MarkCallout) live in the decoded-instruction cache, which is the translator's
    // translation cache: they are VMM state, not a cache one can drop, since an instruction that traps instead of
    // calling out is emulated by the VMM without retiring on the CPU. A snapshot keeps their linear addresses; a
    // restored CPU makes each a callout again when it next decodes it (once: a later write to its page drops it, as
    // it would have dropped the original).
    private HashSet<ulong>? restoredCallouts;

    /// <summary>The linear addresses of the instructions binary translation turned into callouts, still in the
    /// translation cache (for a snapshot of the VMM's state).</summary>
    public IReadOnlyList<ulong> TranslatorCallouts()
    {
        var callouts = new List<ulong>();
        foreach (var chain in decodedPages.Values)
        {
            for (var page = chain; page is not null; page = page.Alias)
            {
                for (int offset = 0; offset < page.Slots.Length; offset++)
                {
                    int slot = page.Slots[offset];
                    if (slot > 0 && page.Instructions[slot - 1].Operation == FastOperation.Callout)
                    {
                        callouts.Add((page.LinearPage << 12) | (uint)offset);
                    }
                }
            }
        }
        callouts.AddRange(restoredCallouts ?? []); // restored, not decoded again yet: still the translator's
        callouts.Sort();
        return callouts;
    }

    /// <summary>Makes the instructions at <paramref name="linear"/> callouts again, each when it is next decoded
    /// (after <see cref="LoadState"/>, which emptied the translation cache).</summary>
    public void RestoreTranslatorCallouts(IEnumerable<ulong> linear)
    {
        restoredCallouts = [.. linear];
        if (restoredCallouts.Count == 0)
        {
            restoredCallouts = null;
        }
    }

    private void ApplyRestoredCallout(ulong rip, ref DecodedInstruction instruction)
    {
        if (restoredCallouts!.Remove(rip) && instruction.Operation != FastOperation.Callout)
        {
            instruction.Original = instruction.Operation;
            instruction.Operation = FastOperation.Callout;
        }
        if (restoredCallouts.Count == 0)
        {
            restoredCallouts = null;
        }
    }
}
