using System.Globalization;
using System.Text.RegularExpressions;

namespace Nestor.Integration.Tests;

/// <summary>Issue 15's done-when on the built <c>nestor host run</c>: ten NestorOS VMs whose max adds up to twice the
/// host's memory all finish with the RESULT lines a VM alone gives, and with each mechanism switched off in turn the
/// report shows what it took back (docs/overcommit.md, "Reclamation on one host").</summary>
public class OvercommitHostTests
{
    private const string Workload = "memtouch 8 seq ; compute 20000";
    private const int Vms = 10;

    // Cycle counts are the guest's own timings, which reclamation moves (a balloon inflating, a page swapped back in);
    // everything the guest computes must be the same. The swap line exists only with a swap disk.
    private static string Masked(IEnumerable<string> lines) =>
        Regex.Replace(string.Join("\n", lines.Where(l => !l.StartsWith("RESULT swap ", StringComparison.Ordinal))), @"(\w*cycles\w*)=\d+", "$1=*");

    private static List<string> Results(string output, string prefix = "") =>
        [.. output.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith(prefix + "RESULT ", StringComparison.Ordinal)).Select(l => l[prefix.Length..])];

    private static long Number(string report, string pattern)
    {
        var match = Regex.Match(report, pattern);
        Assert.True(match.Success, $"the report has /{pattern}/:\n{report}");
        return long.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    private static string HostFile()
    {
        // Half the VMs get a guest swap disk (NestorOS's swap=vda), so that a ballooned guest can page out its own.
        var vms = Enumerable.Range(0, Vms).Select(i =>
        {
            string swap = "";
            if (i % 2 == 0)
            {
                string image = NestorProcess.TempPath(".img");
                using (var f = File.Create(image))
                {
                    f.SetLength(8L << 20);
                }
                swap = $", \"swap\": \"{image}\"";
            }
            return $$"""{ "name": "vm{{i}}", "technique": "hw", "balloon": true, "cmdline": "{{Workload}}", "memory": { "min": "2M", "max": "16M" }{{swap}} }""";
        });
        // A 100 MHz virtual clock: rounds of 10,000 instructions, so that the host's memory manager, which acts between
        // rounds, sees memory move in small steps.
        return NestorProcess.WriteTemp(System.Text.Encoding.UTF8.GetBytes(
            $$"""{ "host": { "memory": "80M", "swap": "160M", "cpus": 2, "mhz": 100, "sharing": { "rate": 20 } }, "vms": [ {{string.Join(",\n", vms)}} ] }"""), ".json");
    }

    [Fact]
    public void Ten_vms_of_twice_the_hosts_memory_finish_natively_and_each_mechanism_shows_what_it_saves()
    {
        var solo = NestorProcess.Run(TimeSpan.FromMinutes(5), "run", "--technique", "hw", "--memory", "16M", "--cmdline", Workload);
        Assert.True(solo.ExitCode == 0, solo.ToString());
        string expected = Masked(Results(solo.Stdout));
        Assert.Contains("RESULT compute n=20000", expected);
        string file = HostFile();

        string Run(params string[] switches)
        {
            var run = NestorProcess.Run(TimeSpan.FromMinutes(10), ["host", "run", file, .. switches]);
            Assert.True(run.ExitCode == 0, run.ToString());
            for (int i = 0; i < Vms; i++)
            {
                Assert.Equal(expected, Masked(Results(run.Stdout, $"[vm{i}] ")));
            }
            for (int i = 0; i < Vms; i += 2)
            {
                Assert.Contains(Results(run.Stdout, $"[vm{i}] "), l => l.StartsWith("RESULT swap device=vda", StringComparison.Ordinal));
            }
            Assert.Contains("admission: 80 MiB memory, 160 MiB swap", run.Stdout);
            return run.Stdout[run.Stdout.IndexOf("\nmemory: ", StringComparison.Ordinal)..];
        }

        string all = Run();
        // The VMs' frames go back as they end, so the scanner's gauges are 0 at the end: the peak is what it saved.
        Assert.True(Number(all, @"saved at peak [\d.]+ MiB \((\d+) pages\)") > 0, all);
        Assert.True(Number(all, @"VMs with one; (\d+) pages inflated") > 0, all);
        Assert.Contains("memory: reclaim on, balloon on, sharing on", all);

        string noSharing = Run("--no-sharing");
        Assert.Contains("sharing off", noSharing);
        Assert.DoesNotContain("saved at peak", noSharing);

        string noBalloon = Run("--no-balloon");
        Assert.Contains("balloon: 0 VMs with one; 0 pages inflated", noBalloon);
        Assert.True(Number(noBalloon, @"host swap: (\d+) pages out") > 0, "without balloons the host swaps\n" + noBalloon);

        string noSwap = Run("--no-host-swap");
        Assert.Contains("host swap: 0 pages out", noSwap);
        Assert.True(Number(noSwap, @"VMs with one; (\d+) pages inflated") > 0, noSwap);

        // What the ten VMs would hold with nothing taken back: more than the host has.
        string none = Run("--no-reclaim", "--no-sharing");
        Assert.True(Number(none, @"peak held (\d+)") > 80, "unconstrained, the VMs hold more than the host's 80 MiB\n" + none);
    }
}
