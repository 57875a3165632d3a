using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Inspection;

/// <summary>One memory reference of an explained walk.</summary>
/// <param name="Number">1-based position in the walk.</param>
/// <param name="Step">What was read, where.</param>
/// <param name="SavedBy">The cache that would have spared this reference now, or null.</param>
public sealed record ExplainedStep(int Number, WalkStep Step, string? SavedBy);

/// <summary>A page walk of one address explained reference by reference, with what the MMU's caches as they are now
/// would have saved (<c>nestor walk</c>).</summary>
/// <param name="Linear">The guest-virtual address.</param>
/// <param name="Root">The top-level table walked from (guest CR3 under nested paging).</param>
/// <param name="Mode">"nested" (2-D walk), "shadow" (the hardware's walk of the shadow table) or "native".</param>
/// <param name="Fault">The page fault the walk ends in, if it does.</param>
/// <param name="Result">The translation (host-physical page, page size) when there is no fault.</param>
/// <param name="TlbHolds">The TLB holds this translation now: no walk would happen at all.</param>
/// <param name="CachesApply">The caches belong to this address space (the one the CPU was running).</param>
public sealed record WalkExplanation(ulong Linear, ulong Root, string Mode, IReadOnlyList<ExplainedStep> Steps, PageFaultError? Fault,
    WalkResult Result, bool TlbHolds, bool CachesApply)
{
    /// <summary>References the walk makes with no cache.</summary>
    public int ColdReferences => Steps.Count;

    /// <summary>References it would make with the caches as they are.</summary>
    public int ReferencesWithCaches => Steps.Count(s => s.SavedBy is null);

    /// <summary>Explains the walk of <paramref name="linear"/> on <paramref name="mmu"/>, from <paramref name="root"/> or
    /// from the current top-level table.</summary>
    public static WalkExplanation Of(Mmu mmu, ulong linear, ulong? root, bool user, string mode)
    {
        var trace = new List<WalkStep>();
        // The root is a guest CR3 (guest-physical) under nested paging, else the table the hardware walks (host-physical).
        var fault = mmu.NestedPaging
            ? mmu.Explain(new GuestVirtual(linear), AccessKind.Read, user, trace, out var result, guestRoot: root is { } g ? new GuestPhysical(g) : null)
            : mmu.Explain(new GuestVirtual(linear), AccessKind.Read, user, trace, out result, root: root is { } h ? new HostPhysical(h) : null);
        bool cachesApply = root is null;
        var steps = new List<ExplainedStep>();
        int guestCached = cachesApply ? mmu.WalkCache.Peek(linear) : -1;
        var nested = mmu.Nested;
        // Nested steps come in groups, each translating one guest-physical address (a guest table's entry, or the data):
        // a group is spared whole when the guest step it serves is, or when the nested TLB holds its address.
        int i = 0;
        while (i < trace.Count)
        {
            var step = trace[i];
            if (step.Dimension == WalkDimension.Guest)
            {
                steps.Add(new ExplainedStep(steps.Count + 1, step, step.Level <= guestCached ? "page-walk cache" : null));
                i++;
                continue;
            }
            int end = i;
            while (end < trace.Count && trace[end].Dimension == WalkDimension.Nested)
            {
                end++;
            }
            bool servesGuestStep = end < trace.Count;
            bool guestSaved = servesGuestStep && trace[end].Level <= guestCached;
            ulong guestPhysical = step.Input;
            bool inNestedTlb = cachesApply && nested.NestedTlb?.Holds(new GuestPhysical(guestPhysical)) == true;
            int nestedCached = cachesApply ? nested.NestedWalkCache.Peek(guestPhysical) : -1;
            for (int k = i; k < end; k++)
            {
                string? saved = guestSaved ? "page-walk cache (guest)"
                    : inNestedTlb ? "nested TLB"
                    : trace[k].Level <= nestedCached ? "nested page-walk cache" : null;
                steps.Add(new ExplainedStep(steps.Count + 1, trace[k], saved));
            }
            i = end;
        }
        bool tlbHolds = cachesApply && mmu.DataTlb.Holds(new GuestVirtual(linear), mmu.Controls.ProcessContext);
        return new WalkExplanation(linear, root ?? mmu.Controls.Cr3, mode, steps, fault, result, tlbHolds, cachesApply);
    }
}
