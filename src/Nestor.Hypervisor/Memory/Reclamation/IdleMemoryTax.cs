namespace Nestor.Hypervisor.Memory.Reclamation;

/// <summary>ESX's idle memory tax (Waldspurger, "Memory Resource Management in VMware ESX Server", OSDI 2002, §5.2):
/// min-funding revocation over an adjusted shares-per-page ratio. A VM with shares S, P pages, of which a fraction f is
/// active, has ρ = S / (P · (f + k(1 − f))) with k = 1 / (1 − τ): an idle page costs k times an active one. When memory
/// is short, pages are taken from the VM with the lowest ρ first (it pays least for what it holds), which raises its
/// ρ, until the targets fit. τ = 0 (k = 1) is plain proportional share: ρ = S / P, so the targets are in proportion to
/// the shares (within the VMs' min and max). The default τ = 0.75 is ESX's: most idle memory can be reclaimed while a
/// quarter of it stays as a buffer against a working set that grows (§5.2).
/// <para>τ = 1 is refused, not capped: k would be infinite, so any idle page would make ρ zero and every VM with one
/// idle page would be drained to its min before an active VM gives up a page, which is no longer a tax but the end of
/// share-based isolation; the largest τ is any value below 1 (ESX's configuration takes 0–99%).</para>
/// <para>How targets are found: every VM starts at its max (the most it may hold: a VM only given what it holds now
/// could never grow), then, while the targets sum to more than the available pages, the VM with the lowest ρ at its
/// current target (ρ evaluated with P = that target) above its min gives up <see cref="StepPages"/> pages (fewer at the
/// end, so that the sum is exactly the available pages). The result is the formula's allocation, equal ρ for every VM
/// not held at its min or max, to within one step. Nothing is allocated per call.</para></summary>
public sealed class IdleMemoryTax : IMemoryAllocationPolicy
{
    /// <summary>ESX's default tax rate (§5.2: "defaults to 75%").</summary>
    public const double DefaultTaxRate = 0.75;

    /// <summary>The default reclamation step: 64 pages (256 KiB).</summary>
    public const long DefaultStepPages = 64;

    /// <param name="taxRate">τ, in [0, 1).</param>
    /// <param name="stepPages">Pages taken from the lowest-ρ VM at a time (at least 1).</param>
    /// <exception cref="ArgumentOutOfRangeException">τ is not in [0, 1), or the step is below 1.</exception>
    public IdleMemoryTax(double taxRate = DefaultTaxRate, long stepPages = DefaultStepPages)
    {
        if (!(taxRate >= 0 && taxRate < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(taxRate), taxRate,
                $"the idle memory tax rate τ must be at least 0 and below 1, not {taxRate}: at τ = 1 an idle page would cost k = 1/(1 − τ) = ∞ " +
                "times an active one; give e.g. 0.75 (ESX's default) or 0 for plain proportional share");
        }
        if (stepPages < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(stepPages), stepPages, "the reclamation step must be at least one page");
        }
        TaxRate = taxRate;
        IdleCost = 1 / (1 - taxRate);
        StepPages = stepPages;
    }

    /// <summary>τ.</summary>
    public double TaxRate { get; }

    /// <summary>k = 1 / (1 − τ): what an idle page costs against an active one.</summary>
    public double IdleCost { get; }

    /// <summary>Pages taken from the lowest-ρ VM at a time.</summary>
    public long StepPages { get; }

    /// <summary>ρ = S / (P · (f + k(1 − f))) for a VM with <paramref name="shares"/> S holding <paramref name="pages"/>
    /// P, a fraction <paramref name="activeFraction"/> f of them active (§5.2). Infinite for P = 0 (a VM holding nothing
    /// pays for nothing and is the last to lose a page).</summary>
    public double SharesPerPage(long shares, long pages, double activeFraction) =>
        pages <= 0 ? double.PositiveInfinity : shares / (pages * (activeFraction + IdleCost * (1 - activeFraction)));

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">The spans differ in length, or a VM's demand is malformed (min above max,
    /// a negative count, an active fraction outside [0, 1]); the message names the VM.</exception>
    public void Allocate(ReadOnlySpan<VmMemoryDemand> vms, long availablePages, Span<long> targetPages)
    {
        if (targetPages.Length != vms.Length)
        {
            throw new ArgumentException($"{vms.Length} VMs but room for {targetPages.Length} targets", nameof(targetPages));
        }
        long total = 0, mins = 0;
        for (int i = 0; i < vms.Length; i++)
        {
            Check(vms[i]);
            targetPages[i] = vms[i].MaxPages;
            total += vms[i].MaxPages;
            mins += vms[i].MinPages;
        }
        if (mins >= availablePages)
        {
            // Admission control keeps the mins within the host's memory; if they are not, the mins are all one can give.
            for (int i = 0; i < vms.Length; i++)
            {
                targetPages[i] = vms[i].MinPages;
            }
            return;
        }
        while (total > availablePages)
        {
            int victim = -1;
            double lowest = double.PositiveInfinity;
            for (int i = 0; i < vms.Length; i++)
            {
                if (targetPages[i] <= vms[i].MinPages)
                {
                    continue;
                }
                double rho = SharesPerPage(vms[i].Shares, targetPages[i], vms[i].ActiveFraction);
                if (victim < 0 || rho < lowest)
                {
                    (victim, lowest) = (i, rho);
                }
            }
            // mins < available < total, so some VM is above its min.
            long step = Math.Min(StepPages, Math.Min(total - availablePages, targetPages[victim] - vms[victim].MinPages));
            targetPages[victim] -= step;
            total -= step;
        }
    }

    private static void Check(in VmMemoryDemand vm)
    {
        if (vm.MinPages < 0 || vm.MaxPages < vm.MinPages)
        {
            throw new ArgumentException($"VM '{vm.Name}': min {vm.MinPages} and max {vm.MaxPages} pages must satisfy 0 ≤ min ≤ max", nameof(vm));
        }
        if (vm.Shares < 0)
        {
            throw new ArgumentException($"VM '{vm.Name}': memory shares must not be negative, not {vm.Shares}", nameof(vm));
        }
        if (!(vm.ActiveFraction >= 0 && vm.ActiveFraction <= 1))
        {
            throw new ArgumentException($"VM '{vm.Name}': the active fraction must be in [0, 1], not {vm.ActiveFraction}", nameof(vm));
        }
    }
}
