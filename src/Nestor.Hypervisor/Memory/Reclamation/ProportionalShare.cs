namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>Share-based allocation without an idle tax (τ = 0; Waldspurger, OSDI'02 §5.1–5.2): memory is divided in
/// proportion to shares, each VM between its min and its max. ESX reclaims from the VM with the fewest shares per
/// allocated page (ρ = S / P); the allocation that rule converges to is the water level λ at which every VM that is
/// reclaimed from holds λ·S pages, while a VM holding fewer than λ·S pages is not reclaimed from at all (its ρ is the
/// higher). So a VM's demand is what it holds now, and the level is found over demands first:
/// <list type="bullet">
/// <item>if the demands fit in what is available, each VM's target is its demand plus a share of what is left over,
/// in proportion to its shares, up to its max (room to grow that the balloon does not take);</item>
/// <item>else each target is λ·S clamped to [min, demand], with λ chosen so that the targets sum to what is
/// available (the mins alone are within it: admission control reserves them).</item>
/// </list>
/// Active fractions are ignored: that is what the idle memory tax (§5.3) adds.</summary>
public sealed class ProportionalShare : IMemoryAllocationPolicy
{
    /// <inheritdoc/>
    public void Allocate(ReadOnlySpan<VmMemoryDemand> vms, long availablePages, Span<long> targetPages)
    {
        if (targetPages.Length < vms.Length)
        {
            throw new ArgumentException("one target per VM", nameof(targetPages));
        }
        long demands = 0;
        Span<long> low = vms.Length <= 256 ? stackalloc long[vms.Length] : new long[vms.Length];
        Span<long> high = vms.Length <= 256 ? stackalloc long[vms.Length] : new long[vms.Length];
        for (int i = 0; i < vms.Length; i++)
        {
            low[i] = Math.Min(vms[i].MinPages, vms[i].MaxPages);
            high[i] = Math.Clamp(vms[i].AllocatedPages, low[i], vms[i].MaxPages);
            demands += high[i];
        }
        if (demands <= availablePages)
        {
            // Everyone keeps what it holds; the rest is divided by shares up to each max.
            for (int i = 0; i < vms.Length; i++)
            {
                low[i] = high[i];
                high[i] = vms[i].MaxPages;
            }
        }
        WaterFill(vms, availablePages, low, high, targetPages);
    }

    /// <summary>Sets target[i] = clamp(λ·S_i, low_i, high_i) with the largest λ whose targets sum to at most
    /// <paramref name="available"/> (all lows when even they do not fit; all highs when they all do).</summary>
    private static void WaterFill(ReadOnlySpan<VmMemoryDemand> vms, long available, ReadOnlySpan<long> low, ReadOnlySpan<long> high, Span<long> target)
    {
        long lows = 0, highs = 0;
        for (int i = 0; i < vms.Length; i++)
        {
            lows += low[i];
            highs += high[i];
        }
        if (lows >= available || highs <= available)
        {
            var bound = lows >= available ? low : high;
            for (int i = 0; i < vms.Length; i++)
            {
                target[i] = bound[i];
            }
            return;
        }
        // Bisection on λ (pages per share): the sum is monotone in λ; 100 halvings of a double range are exact enough,
        // and what rounding leaves is handed out a page at a time by shares below.
        double lo = 0, hi = 1;
        while (Sum(vms, hi, low, high) < available && hi < 1e18)
        {
            hi *= 2;
        }
        for (int step = 0; step < 100; step++)
        {
            double mid = (lo + hi) / 2;
            if (Sum(vms, mid, low, high) <= available)
            {
                lo = mid;
            }
            else
            {
                hi = mid;
            }
        }
        long total = 0;
        for (int i = 0; i < vms.Length; i++)
        {
            target[i] = Level(vms[i], lo, low[i], high[i]);
            total += target[i];
        }
        for (long left = available - total; left > 0;)
        {
            int best = -1;
            for (int i = 0; i < vms.Length; i++)
            {
                if (target[i] < high[i] && (best < 0 || (double)target[i] / Math.Max(1, vms[i].Shares) < (double)target[best] / Math.Max(1, vms[best].Shares)))
                {
                    best = i;
                }
            }
            if (best < 0)
            {
                break;
            }
            target[best]++;
            left--;
        }
    }

    private static long Sum(ReadOnlySpan<VmMemoryDemand> vms, double level, ReadOnlySpan<long> low, ReadOnlySpan<long> high)
    {
        long sum = 0;
        for (int i = 0; i < vms.Length; i++)
        {
            sum += Level(vms[i], level, low[i], high[i]);
        }
        return sum;
    }

    private static long Level(VmMemoryDemand vm, double level, long low, long high) =>
        (long)Math.Clamp(Math.Floor(level * Math.Max(1, vm.Shares)), low, high);
}
