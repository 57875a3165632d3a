using System.Globalization;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Memory.Kvm;

namespace Nestor.Integration.Tests;

/// <summary>A test of KSM on KVM: skipped with the probe's reason on a host whose KSM cannot be switched on.</summary>
public sealed class KsmFactAttribute : FactAttribute
{
    public KsmFactAttribute()
    {
        var probe = SamePageMerging.Probe();
        if (!probe.Writable)
        {
            Skip = $"the host's KSM cannot be switched on: {probe.Reason}";
        }
    }
}

/// <summary><c>nestor bench overcommit kvm</c> end to end, through the built <c>nestor</c>: real KVM VMs, figures
/// from /proc (issue 15, "the KVM figures come from real resident memory").</summary>
public partial class KvmOvercommitTests
{
    [KsmFact]
    public void The_kvm_bench_shows_ksm_saving_the_identical_pages_of_more_vms_and_a_ballooned_vm_dropping_its_rss()
    {
        NestorProcess.RequireKvm();
        string runBefore = File.ReadAllText("/sys/kernel/mm/ksm/run").Trim();
        var result = NestorProcess.Run(TimeSpan.FromMinutes(8), "bench", "overcommit", "kvm", "--vms", "1,2", "--memory", "3M",
            "--identical", "0.5", "--zero", "0.25", "--balloon", "0.5");
        Assert.True(result.ExitCode == 0, result.ToString());
        // 1 MiB filled from 2 MiB: 256 pages, 128 identical, 64 zero, 64 random; the table's model column is
        // (N-1) x 128 + (N x 64 - 1) pages.
        Assert.Contains("256 pages from 2 MiB: 128 identical across VMs, 64 zero, 64 random", result.Stdout);
        var rows = Rows().Matches(result.Stdout).Select(m => (Vms: int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture),
            Saved: double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), Model: double.Parse(m.Groups[3].Value, CultureInfo.InvariantCulture))).ToList();
        Assert.True(rows.Count == 2, result.ToString());
        Assert.Equal([1, 2], rows.Select(r => r.Vms));
        // One VM: only its zero pages merge (among themselves). Three: two VMs' identical pages too. Measured within
        // 64 pages of the model (the boot pages below 2 MiB may merge as well).
        foreach (var r in rows)
        {
            Assert.True(r.Saved >= r.Model * 0.95 && r.Saved <= r.Model + 0.25, $"{r.Vms} VMs: saved {r.Saved} MiB, model {r.Model} MiB\n{result}");
        }
        Assert.True(rows[1].Saved > rows[0].Saved * 3, result.ToString()); // the identical pages merge only across VMs
        Assert.Matches(@"RSS 1\.\d\d -> 0\.5\d MiB \(0\.50 MiB returned", result.Stdout);
        Assert.Contains("deflated and read back: all zero", result.Stdout);
        Assert.DoesNotContain("Not shown", result.Stdout);
        Assert.Equal(runBefore, File.ReadAllText("/sys/kernel/mm/ksm/run").Trim());
    }

    [Fact]
    public void Bad_fractions_are_refused_naming_them_before_any_vm_runs()
    {
        var result = NestorProcess.Run("bench", "overcommit", "kvm", "--identical", "0.8", "--zero", "0.5");
        Assert.Equal(120, result.ExitCode); // bad input
        Assert.Contains("identical 0.8, zero 0.5", result.Stderr);
        Assert.Contains("what to do:", result.Stderr);
    }

    // A sharing row: VMs first, saved MiB the 9th column, model MiB the 12th.
    [GeneratedRegex(@"^\s*(\d+)(?:\s+[\d.]+){7}\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)\s", RegexOptions.Multiline)]
    private static partial Regex Rows();
}
