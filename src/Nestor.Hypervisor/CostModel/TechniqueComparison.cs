using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques;
using Nestor.Hypervisor.Techniques.HardwareAssist;

namespace Nestor.Hypervisor.CostModel;

/// <summary>One way of running the guest: a technique and its memory virtualization.</summary>
public sealed record BenchConfiguration(string Technique, string? Mmu, SimOptions Options)
{
    public string Name => Mmu is null ? Technique : $"{Technique}+{Mmu}";

    public static BenchConfiguration Native { get; } = new("native", null, new SimOptions());

    public static BenchConfiguration HardwareShadow { get; } =
        new("hw", "shadow", new SimOptions { Technique = Techniques.Technique.HardwareAssist, Memory = MemoryVirtualization.Shadow });

    public static BenchConfiguration HardwareNested { get; } =
        new("hw", "nested", new SimOptions { Technique = Techniques.Technique.HardwareAssist, Memory = MemoryVirtualization.Nested });

    public static BenchConfiguration TrapAndEmulate { get; } =
        new("trap", "shadow", new SimOptions { Technique = Techniques.Technique.TrapAndEmulate, Memory = MemoryVirtualization.Shadow });

    public static BenchConfiguration BinaryTranslation { get; } =
        new("bt", "shadow", new SimOptions { Technique = Techniques.Technique.BinaryTranslation, Memory = MemoryVirtualization.Shadow });

    public static BenchConfiguration Paravirtual { get; } =
        new("pv", "shadow", new SimOptions { Technique = Techniques.Technique.Paravirtual, Memory = MemoryVirtualization.Shadow });

    /// <summary>The configurations <c>nestor bench</c> compares.</summary>
    public static IReadOnlyList<BenchConfiguration> Standard { get; } =
        [Native, TrapAndEmulate, BinaryTranslation, Paravirtual, HardwareShadow, HardwareNested];
}

/// <summary>One configuration's figures for the workload, net of the same boot running a trivial program.</summary>
/// <param name="Events">The workload's own events (the run's less the trivial run's).</param>
/// <param name="Cost">Their modelled cost.</param>
/// <param name="Wall">Measured wall time of the workload's run, boot included (the software machine's, not the
/// modelled machine's).</param>
/// <param name="RatioToNative">Modelled cycles over the native configuration's.</param>
/// <param name="ResultsDiffer">The RESULT lines this configuration printed where they differ from the first
/// configuration's (empty when they agree): trap-and-emulate's <c>sensitive</c> is expected to.</param>
public sealed record BenchRow(BenchConfiguration Configuration, MachineEvents Events, ModelledCost Cost, TimeSpan Wall, double RatioToNative,
    IReadOnlyList<string> ResultsDiffer);

/// <summary>The comparison of one workload under several configurations, costed by one profile.</summary>
public sealed record ComparisonResult(string Workload, string Baseline, CostProfile Profile, IReadOnlyList<BenchRow> Rows, IReadOnlyList<string> Results)
{
    /// <summary>The operations the workload counted (the <c>count=</c> of its first RESULT line), if it says.</summary>
    public long? Operations =>
        Results.Count > 0 && Regex.Match(Results[0], @" count=(\d+)") is { Success: true } m && long.TryParse(m.Groups[1].Value, out long n) && n > 0
            ? n : null;
}

/// <summary>Runs one NestorOS workload under each configuration on the software machine and costs what each did with one
/// profile: the measurements behind <c>nestor bench</c>. Every configuration must print the same RESULT lines (timing
/// fields aside); each is also run with a baseline — the same command with its count set to 0 when the program reports
/// a count and accepts 0 (so that boot, start-up and printing cancel out), else <see cref="BaselineProgram"/> — and the
/// difference is what the workload's operations did.</summary>
public static class TechniqueComparison
{
    public const string BaselineProgram = "hello";

    public static ComparisonResult Run(KernelImageSource kernel, string commandLine, ulong memoryBytes, CostProfile profile,
        IReadOnlyList<BenchConfiguration> configurations, TextWriter? progress = null, TimeSpan? timeout = null)
    {
        var rows = new List<(BenchConfiguration Configuration, MachineEvents Events, TimeSpan Wall, List<string> Differ)>();
        List<string>? expected = null;
        string? baselineCommand = null;
        foreach (var configuration in configurations)
        {
            progress?.WriteLine($"  {configuration.Name}: {commandLine} ...");
            var (events, wall, results) = RunOnce(kernel, commandLine, memoryBytes, configuration, timeout);
            baselineCommand ??= ChooseBaseline(kernel, commandLine, results, memoryBytes, configuration, timeout);
            progress?.WriteLine($"  {configuration.Name}: {baselineCommand} (the baseline subtracted) ...");
            var (baseline, _, _) = RunOnce(kernel, baselineCommand, memoryBytes, configuration, timeout);
            expected ??= results;
            rows.Add((configuration, events.Minus(baseline), wall, results.Except(expected).ToList()));
        }
        double native = ModelledCost.Of(rows[0].Events, profile).Total;
        var result = rows.Select(r =>
        {
            var cost = ModelledCost.Of(r.Events, profile);
            return new BenchRow(r.Configuration, r.Events, cost, r.Wall, native > 0 ? cost.Total / native : 0, r.Differ);
        }).ToList();
        return new ComparisonResult(commandLine, baselineCommand ?? BaselineProgram, profile, result, expected ?? []);
    }

    /// <summary>The command with its count (the number its RESULT line reports as <c>count=</c>) replaced by 0, if the
    /// program runs with that; else <see cref="BaselineProgram"/>.</summary>
    private static string ChooseBaseline(KernelImageSource kernel, string commandLine, List<string> results, ulong memoryBytes,
        BenchConfiguration configuration, TimeSpan? timeout)
    {
        var count = results.Count > 0 ? Regex.Match(results[0], @" count=(\d+)") : Match.Empty;
        var tokens = commandLine.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        int at = count.Success ? Array.LastIndexOf(tokens, count.Groups[1].Value) : -1;
        if (at <= 0 || count.Groups[1].Value == "0")
        {
            return BaselineProgram;
        }
        tokens[at] = "0";
        string zero = string.Join(' ', tokens);
        try
        {
            RunOnce(kernel, zero, memoryBytes, configuration, timeout);
            return zero;
        }
        catch (WorkloadFailedException)
        {
            return BaselineProgram;
        }
    }

    private static (MachineEvents Events, TimeSpan Wall, List<string> Results) RunOnce(KernelImageSource kernel, string commandLine,
        ulong memoryBytes, BenchConfiguration configuration, TimeSpan? timeout)
    {
        var serial = new MemoryStream();
        using var vm = Vm.Create(new VmConfig
        {
            Kernel = kernel,
            MemoryBytes = memoryBytes,
            CommandLine = commandLine,
            SerialOutput = serial,
            Timeout = timeout,
        });
        using var engine = new SimEngine(configuration.Options);
        var clock = Stopwatch.StartNew();
        var run = vm.Run(engine);
        var outcome = run.Outcome;
        clock.Stop();
        vm.Serial.Flush();
        string output = Encoding.UTF8.GetString(serial.ToArray());
        if (outcome.Kind != VmOutcomeKind.DebugExit || outcome.GuestStatus != 0 || !output.Contains("failures=0", StringComparison.Ordinal))
        {
            throw new WorkloadFailedException($"'{commandLine}' under {configuration.Name} did not end well: {outcome.Message}\n{output}",
                outcome.Kind == VmOutcomeKind.Timeout ? "Give a longer --timeout, or a smaller count" : "Run it alone with nestor run --cmdline to see why")
            {
                Outcome = outcome.Kind,
            };
        }
        var results = Regex.Matches(output, @"^RESULT .*$", RegexOptions.Multiline)
            .Select(m => Regex.Replace(m.Value.TrimEnd('\r'), @" \w+_(cycles|ns)=\d+", ""))
            .ToList();
        return (run.Events!, clock.Elapsed, results);
    }
}
