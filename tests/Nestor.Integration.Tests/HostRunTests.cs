namespace Nestor.Integration.Tests;

/// <summary><c>nestor host run</c> through the built command, as a user runs it (docs/host.md).</summary>
public class HostRunTests
{
    private const string Workload = "compute 20000 ; syscall 500";

    private static List<string> Results(string output, string prefix = "") =>
        [.. output.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.StartsWith(prefix + "RESULT ", StringComparison.Ordinal)).Select(l => l[prefix.Length..])];

    [Fact]
    public void Eight_NestorOS_vms_on_two_host_cpus_each_print_their_native_results()
    {
        var solo = NestorProcess.Run(TimeSpan.FromMinutes(5), "run", "--cmdline", Workload);
        Assert.True(solo.ExitCode == 0, solo.ToString());
        var expected = Results(solo.Stdout);
        Assert.Contains(expected, l => l.StartsWith("RESULT compute", StringComparison.Ordinal));
        string vms = string.Join(",\n", Enumerable.Range(0, 8).Select(i =>
            $$"""{ "name": "vm{{i}}", "cmdline": "{{Workload}}", "memory": { "max": "32M" } }"""));
        string file = NestorProcess.WriteTemp(System.Text.Encoding.UTF8.GetBytes($$"""{ "host": { "cpus": 2 }, "vms": [ {{vms}} ] }"""), ".json");
        var host = NestorProcess.Run(TimeSpan.FromMinutes(10), "host", "run", file);
        Assert.True(host.ExitCode == 0, host.ToString());
        for (int i = 0; i < 8; i++)
        {
            Assert.Equal(expected, Results(host.Stdout, $"[vm{i}] "));
        }
        Assert.Contains("host: 2 CPU(s), scheduler share", host.Stdout);
    }

    [Fact]
    public void A_malformed_host_file_is_refused_naming_the_field()
    {
        string file = NestorProcess.WriteTemp("""{ "vms": [ { "name": "a", "cpu": { "shares": "lots" } } ] }"""u8.ToArray(), ".json");
        var result = NestorProcess.Run("host", "run", file);
        Assert.Equal(120, result.ExitCode);
        Assert.Contains("$.vms[0].cpu.shares", result.Stderr);
    }

    [Fact]
    public void A_vm_that_does_not_fit_is_refused_with_its_shortfall_and_the_others_run()
    {
        var result = NestorProcess.Run(TimeSpan.FromMinutes(2), "host", "run", "--host-memory", "100M",
            "--vm", "a=builtin:hello,memory=64M", "--vm", "b=builtin:hello,memory=64M");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Contains("[a] Writing status 0 to the debug-exit port", result.Stdout);
        Assert.DoesNotContain("[b] ", result.Stdout);
        Assert.Matches(@"b\s+refused .*MiB short", result.Stdout);
    }

    [Fact]
    public void A_two_vcpu_smp_guest_beside_nestoros_on_two_host_cpus_prints_its_native_results_and_a_row_per_vcpu()
    {
        var solo = NestorProcess.Run(TimeSpan.FromMinutes(5), "run", "builtin:smp-spin", "--cpus", "2");
        Assert.True(solo.ExitCode == 0, solo.ToString());
        var expected = Results(solo.Stdout);
        Assert.Equal(3, expected.Count); // a line per vCPU and the total
        var host = NestorProcess.Run(TimeSpan.FromMinutes(10), "host", "run", "--vm", "a=builtin:smp-spin,vcpus=2",
            "--vm", $"b=builtin:nestoros,cmdline={Workload}", "--host-cpus", "2");
        Assert.True(host.ExitCode == 0, host.ToString());
        Assert.Equal(expected, Results(host.Stdout, "[a] "));
        Assert.Contains(Results(host.Stdout, "[b] "), l => l.StartsWith("RESULT compute", StringComparison.Ordinal));
        Assert.Matches(@"\n  a/vcpu0 ", host.Stdout);
        Assert.Matches(@"\n  a/vcpu1 ", host.Stdout);
    }
}
