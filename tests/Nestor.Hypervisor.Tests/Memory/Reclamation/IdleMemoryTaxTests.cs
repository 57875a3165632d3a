using CsCheck;
using Nestor.Hypervisor.Memory.Reclamation;

namespace Nestor.Hypervisor.Tests.MemoryOvercommit;

/// <summary>ESX's idle memory tax (Waldspurger, OSDI 2002, §5.2): ρ = S / (P(f + k(1 − f))), k = 1/(1 − τ); pages go
/// from the lowest-ρ VM first until the targets fit. The expected allocations are computed here from the formula (equal
/// ρ for the VMs not held at a bound, by bisection), never typed in.</summary>
public sealed class IdleMemoryTaxTests
{
    // The formula's fixed point, independently of the policy's steps: P_i = clamp(c · w_i, min_i, max_i) with
    // w_i = S_i / (f_i + k(1 − f_i)), c such that the P_i sum to the available pages.
    private static double[] Formula(VmMemoryDemand[] vms, double tau, long available)
    {
        double k = 1 / (1 - tau);
        double[] w = [.. vms.Select(v => v.Shares / (v.ActiveFraction + k * (1 - v.ActiveFraction)))];
        double Sum(double c) => vms.Select((v, i) => Math.Clamp(c * w[i], v.MinPages, v.MaxPages)).Sum();
        if (vms.Sum(v => v.MaxPages) <= available)
        {
            return [.. vms.Select(v => (double)v.MaxPages)]; // everything fits: no level to find
        }
        double lo = 0, hi = 1;
        while (Sum(hi) < available)
        {
            hi *= 2;
        }
        for (int i = 0; i < 200; i++)
        {
            double mid = (lo + hi) / 2;
            (lo, hi) = Sum(mid) < available ? (mid, hi) : (lo, mid);
        }
        return [.. vms.Select((v, i) => Math.Clamp(lo * w[i], v.MinPages, v.MaxPages))];
    }

    private static long[] Allocate(IdleMemoryTax policy, VmMemoryDemand[] vms, long available)
    {
        var targets = new long[vms.Length];
        policy.Allocate(vms, available, targets);
        return targets;
    }

    [Fact]
    public void Two_vms_with_equal_shares_get_the_formula_s_allocation_and_equal_rho()
    {
        var policy = new IdleMemoryTax(0.75, stepPages: 1);
        VmMemoryDemand[] vms = [new("idle", 0, 100_000, 1000, 100_000, 0.1), new("active", 0, 100_000, 1000, 100_000, 0.9)];
        const long Available = 60_000;
        var targets = Allocate(policy, vms, Available);

        // k = 4: the idle VM pays 0.1 + 4·0.9 per page, the active one 0.9 + 4·0.1, so P ∝ 1/that.
        double k = 1 / (1 - 0.75);
        double wIdle = 1000 / (0.1 + k * 0.9), wActive = 1000 / (0.9 + k * 0.1);
        Assert.Equal(Available * wIdle / (wIdle + wActive), targets[0], 1.0);
        Assert.Equal(Available * wActive / (wIdle + wActive), targets[1], 1.0);
        Assert.Equal(Available, targets.Sum());
        double rhoIdle = policy.SharesPerPage(1000, targets[0], 0.1), rhoActive = policy.SharesPerPage(1000, targets[1], 0.9);
        Assert.Equal(1.0, rhoIdle / rhoActive, 3); // equal within one page's worth
    }

    [Fact]
    public void The_formula_s_rho_is_shares_per_weighted_page()
    {
        var policy = new IdleMemoryTax(0.5);
        Assert.Equal(2.0, policy.IdleCost);
        Assert.Equal(300 / (1000 * (0.25 + 2 * 0.75)), policy.SharesPerPage(300, 1000, 0.25), 12);
        Assert.Equal(double.PositiveInfinity, policy.SharesPerPage(300, 0, 0.25));
        Assert.Equal(300 / 1000.0, new IdleMemoryTax(0).SharesPerPage(300, 1000, 0.25), 12); // τ = 0: S/P
    }

    [Fact]
    public void Min_and_max_bound_the_targets_and_the_rest_follows_the_formula()
    {
        var policy = new IdleMemoryTax(0.75, stepPages: 1);
        // The idle VM would get less than its min, the active one more than its max.
        VmMemoryDemand[] vms = [new("idle", 25_000, 50_000, 1000, 50_000, 0), new("active", 0, 30_000, 1000, 30_000, 1), new("third", 0, 50_000, 500, 50_000, 0.5)];
        var targets = Allocate(policy, vms, 70_000);
        var expected = Formula(vms, 0.75, 70_000);
        Assert.Equal(25_000, expected[0], 6); // the formula itself holds them at their bounds
        Assert.Equal(30_000, expected[1], 6);
        Assert.Equal(25_000, targets[0]);
        Assert.Equal(30_000, targets[1]);
        Assert.Equal(expected[2], targets[2], 1.0);
        Assert.Equal(70_000, targets.Sum());
    }

    [Fact]
    public void When_everything_fits_each_vm_may_keep_its_max_and_when_the_mins_do_not_each_gets_its_min()
    {
        var policy = new IdleMemoryTax();
        VmMemoryDemand[] vms = [new("a", 10, 500, 1000, 100, 0), new("b", 20, 700, 1000, 300, 1)];
        Assert.Equal([500L, 700L], Allocate(policy, vms, 5000));
        Assert.Equal([10L, 20L], Allocate(policy, vms, 25));
    }

    [Fact]
    public void Tau_of_one_and_malformed_demands_are_refused_with_what_to_give()
    {
        var one = Assert.Throws<ArgumentOutOfRangeException>(() => new IdleMemoryTax(1));
        Assert.Contains("below 1", one.Message);
        Assert.Contains("0.75", one.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new IdleMemoryTax(-0.1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new IdleMemoryTax(double.NaN));
        Assert.Throws<ArgumentOutOfRangeException>(() => new IdleMemoryTax(0.5, stepPages: 0));
        var policy = new IdleMemoryTax();
        var bad = Assert.Throws<ArgumentException>(() => Allocate(policy, [new("web", 10, 5, 1000, 0, 0.5)], 100));
        Assert.Contains("'web'", bad.Message);
        var fraction = Assert.Throws<ArgumentException>(() => Allocate(policy, [new("db", 0, 5, 1000, 0, 1.5)], 100));
        Assert.Contains("'db'", fraction.Message);
        Assert.Throws<ArgumentException>(() => policy.Allocate([new("x", 0, 5, 1, 0, 0)], 100, new long[2]));
    }

    private static readonly Gen<(VmMemoryDemand[] Vms, long Available, double Tau, long Step)> Cases =
        Gen.Select(Gen.Int[1, 8], Gen.Double[0, 0.95], Gen.Long[1, 128], Gen.Int[0, int.MaxValue])
            .SelectMany(t => Gen.Select(Gen.Long[0, 5_000], Gen.Long[0, 50_000], Gen.Int[1, 10_000], Gen.Double[0, 1])
                .Array[t.Item1]
                .SelectMany(rows => Gen.Long[0, rows.Sum(r => r.Item1 + r.Item2) + 1000].Select(available => (
                    rows.Select((r, i) => new VmMemoryDemand($"vm{i}", r.Item1, r.Item1 + r.Item2, r.Item3, r.Item1, r.Item4)).ToArray(),
                    available, t.Item2, t.Item3))));

    [Fact]
    public void Property_targets_stay_within_min_and_max_and_sum_to_at_most_the_available_pages_when_the_mins_fit()
    {
        Cases.Sample(c =>
        {
            var targets = Allocate(new IdleMemoryTax(c.Tau, c.Step), c.Vms, c.Available);
            for (int i = 0; i < c.Vms.Length; i++)
            {
                Assert.InRange(targets[i], c.Vms[i].MinPages, c.Vms[i].MaxPages);
            }
            long mins = c.Vms.Sum(v => v.MinPages), maxes = c.Vms.Sum(v => v.MaxPages);
            if (mins <= c.Available)
            {
                Assert.True(targets.Sum() <= c.Available, $"{targets.Sum()} > {c.Available}");
                // Nothing is taken that need not be: the targets use all the available pages the maxes allow.
                Assert.Equal(Math.Min(maxes, c.Available), targets.Sum());
            }
        });
    }

    [Fact]
    public void Property_targets_are_the_formula_s_allocation_to_within_a_step_and_tau_zero_is_proportional_to_shares()
    {
        Cases.Sample(c =>
        {
            long mins = c.Vms.Sum(v => v.MinPages);
            if (mins > c.Available)
            {
                return;
            }
            var targets = Allocate(new IdleMemoryTax(c.Tau, c.Step), c.Vms, c.Available);
            var expected = Formula(c.Vms, c.Tau, c.Available);
            double k = 1 / (1 - c.Tau);
            double[] w = [.. c.Vms.Select(v => v.Shares / (v.ActiveFraction + k * (1 - v.ActiveFraction)))];
            double wMin = w.Min();
            for (int i = 0; i < c.Vms.Length; i++)
            {
                // The last steps leave the VMs' levels P/w within one step of another's: P within step·(w_i/w_min + 1).
                double tolerance = c.Step * (w[i] / wMin + 1) + 1;
                Assert.True(Math.Abs(targets[i] - expected[i]) <= tolerance,
                    $"vm{i}: target {targets[i]}, formula {expected[i]:0.0}, tolerance {tolerance:0.0}");
            }
        });
        // τ = 0, no bound binding: the targets are the shares' proportions of the available pages.
        Gen.Int[1, 10_000].Array[2, 6].Sample(shares =>
        {
            var vms = shares.Select((s, i) => new VmMemoryDemand($"vm{i}", 0, 1_000_000, s, 0, i % 2)).ToArray();
            var targets = Allocate(new IdleMemoryTax(0, stepPages: 1), vms, 500_000);
            for (int i = 0; i < vms.Length; i++)
            {
                double share = 500_000.0 * shares[i] / shares.Sum();
                Assert.True(Math.Abs(targets[i] - share) <= (double)shares[i] / shares.Min() + 1, $"vm{i}: {targets[i]} against {share:0.0}");
            }
        });
    }

    [Fact]
    public void Property_an_idle_vm_loses_pages_before_an_active_one_with_equal_shares()
    {
        Gen.Select(Gen.Double[0, 0.95], Gen.Double[0, 1], Gen.Double[0, 1], Gen.Long[1_000, 200_000]).Sample(t =>
        {
            var (tau, a, b, available) = t;
            double idle = Math.Min(a, b), active = Math.Max(a, b);
            VmMemoryDemand[] vms = [new("idle", 0, 200_000, 1000, 200_000, idle), new("active", 0, 200_000, 1000, 200_000, active)];
            var targets = Allocate(new IdleMemoryTax(tau, stepPages: 1), vms, available);
            Assert.True(targets[0] <= targets[1] + 1, $"τ {tau}: idle (f {idle}) keeps {targets[0]}, active (f {active}) {targets[1]}");
            if (tau > 0.1 && active - idle > 0.2)
            {
                Assert.True(targets[0] < targets[1], $"τ {tau}: the tax took nothing more from the idle VM");
            }
        });
    }
}
