using System.Globalization;
using System.Net;
using System.Text;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Hosting;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Migration;

/// <summary>How a live migration goes. The defaults are QEMU's migration parameters (qapi/migration.json, QEMU 9):
/// <c>downtime-limit</c> 300 ms, <c>max-bandwidth</c> 128 MiB/s, and for <c>auto-converge</c>
/// <c>cpu-throttle-initial</c> 20 %, <c>cpu-throttle-increment</c> 10 %, <c>max-cpu-throttle</c> 99 %.</summary>
/// <param name="Destination">Where: <c>tcp:HOST:PORT</c>, a <c>nestor host run --incoming</c> there.</param>
public sealed record MigrationSettings(string Destination)
{
    /// <summary>QEMU's default <c>max-bandwidth</c>: 128 MiB/s.</summary>
    public const long DefaultBandwidth = 128L << 20;

    /// <summary>QEMU's default <c>downtime-limit</c>: 300 ms.</summary>
    public static readonly TimeSpan DefaultDowntime = TimeSpan.FromMilliseconds(300);

    /// <summary>The most bytes a second the stream may carry.</summary>
    public long MaxBandwidth { get; init; } = DefaultBandwidth;

    /// <summary>The stop-and-copy starts once the dirty pages left could be sent within this at the bandwidth measured.</summary>
    public TimeSpan DowntimeLimit { get; init; } = DefaultDowntime;

    /// <summary>Throttle the vCPU when rounds do not shrink (QEMU's <c>auto-converge</c> capability).</summary>
    public bool AutoConverge { get; init; } = true;

    /// <summary>QEMU's <c>cpu-throttle-initial</c> and <c>cpu-throttle-increment</c>, in percent.</summary>
    public int ThrottleInitial { get; init; } = 20;

    /// <inheritdoc cref="ThrottleInitial"/>
    public int ThrottleIncrement { get; init; } = 10;

    /// <summary>QEMU's <c>max-cpu-throttle</c>, in percent.</summary>
    public int ThrottleMaximum { get; init; } = 99;

    /// <summary>Auto-converge's decision after a round, for sim's and KVM's sources alike (QEMU's
    /// <c>migration_trigger_throttle</c>): a round whose dirty bytes are above half the bytes the round before it sent
    /// does not shrink; after two such rounds in a row the throttle rises (to <see cref="ThrottleInitial"/>, then by
    /// <see cref="ThrottleIncrement"/> up to <see cref="ThrottleMaximum"/>) and the count starts again. Returns the
    /// throttle in percent, <paramref name="current"/> when unchanged.</summary>
    public int NextThrottle(int current, long dirtyBytes, long lastSentBytes, ref int roundsNotShrinking)
    {
        if (!AutoConverge)
        {
            return current;
        }
        roundsNotShrinking = dirtyBytes > lastSentBytes / 2 ? roundsNotShrinking + 1 : 0;
        if (roundsNotShrinking < 2)
        {
            return current;
        }
        roundsNotShrinking = 0;
        return current == 0 ? ThrottleInitial : Math.Min(ThrottleMaximum, current + ThrottleIncrement);
    }

    /// <summary>The link's rate for the next estimate (bytes per second): what the last round that moved bytes for over a
    /// millisecond achieved, at most <see cref="MaxBandwidth"/> (a loopback link outruns the limit, so mostly the limit);
    /// the limit itself before any such round. The one estimate sim's and KVM's sources use for the downtime.</summary>
    public double MeasuredBandwidth(IReadOnlyList<MigrationRound> rounds)
    {
        var last = rounds.LastOrDefault(r => r.Milliseconds > 1 && r.Bytes > 0);
        double measured = last is null ? MaxBandwidth : last.Bytes / (last.Milliseconds / 1000);
        return Math.Min(measured, MaxBandwidth);
    }

    /// <summary>Pre-copy rounds after which the stop-and-copy starts whatever is left (Clark et al. bound the rounds
    /// too, §4: 30 in Xen's implementation).</summary>
    public int MaxRounds { get; init; } = 30;

    /// <summary>Pre-copy (the default), post-copy, or one pre-copy round then post-copy.</summary>
    public MigrationMode Mode { get; init; } = MigrationMode.PreCopy;

    /// <summary>Post-copy's pre-paging window: after a demanded page, this many pages on each side of it that have not
    /// been sent go next, nearest first (Hines and Gopalan, VEE'09, §3.2: bubbling around the faulting pivot), and the
    /// background push continues from past the window.</summary>
    public int PrepageWindow { get; init; } = DefaultPrepageWindow;

    /// <summary>Before migrating, inflate the VM's balloon to the guest's free memory (its last <c>MEMFREE</c>
    /// statistic, virtio 1.2 §5.5.6.3, less <see cref="BalloonKeepBytes"/>), through the host's balloon API, so that
    /// the pages the guest does not use are all zeros (reclaimed) and neither sent nor demanded (Hines and Gopalan's
    /// dynamic self-ballooning, VEE'09 §3.3, here driven by the host). The balloon stays inflated on the destination.</summary>
    public bool BalloonFirst { get; init; }

    /// <summary>Free memory the balloon-first inflation leaves the guest: 1 MiB.</summary>
    public const ulong BalloonKeepBytes = 1UL << 20;

    /// <summary>The pre-paging window by default: 8 pages on each side (64 KiB in all with the faulting page).</summary>
    public const int DefaultPrepageWindow = 8;

    /// <summary>The stream version to declare: for the tests of a destination's refusal of a newer stream only.</summary>
    public ushort? StreamVersion { get; init; }

    /// <summary>The destination's address.</summary>
    /// <exception cref="BadInputException">Not <c>tcp:HOST:PORT</c>.</exception>
    public static IPEndPoint ParseAddress(string text, string what)
    {
        const string hint = "Give tcp:HOST:PORT with a numeric IPv4 or IPv6 host, e.g. tcp:127.0.0.1:4444";
        if (!text.StartsWith("tcp:", StringComparison.Ordinal))
        {
            throw new BadInputException($"{what} '{text}' is not a tcp: address (the only transport is TCP)", hint);
        }
        string rest = text["tcp:".Length..];
        int colon = rest.LastIndexOf(':');
        if (colon <= 0 || !ushort.TryParse(rest[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out ushort port) ||
            !IPAddress.TryParse(rest[..colon].Trim('[', ']'), out var address))
        {
            throw new BadInputException($"{what} '{text}' is not tcp:HOST:PORT", hint);
        }
        return new IPEndPoint(address, port);
    }

    /// <summary>Checks the values.</summary>
    public void Validate()
    {
        ParseAddress(Destination, "the destination");
        if (MaxBandwidth < 1 << 16)
        {
            throw new BadInputException($"a bandwidth limit of {MaxBandwidth:N0} bytes/s is too small to migrate", "Give at least 64 KiB/s (the default is QEMU's 128 MiB/s)");
        }
        if (DowntimeLimit <= TimeSpan.Zero || DowntimeLimit > TimeSpan.FromMinutes(10))
        {
            throw new BadInputException($"a downtime limit of {DowntimeLimit.TotalMilliseconds} ms is out of range", "Give 1 ms to 10 minutes (the default is QEMU's 300 ms)");
        }
        if (MaxRounds is < 1 or > 1000)
        {
            throw new BadInputException($"{MaxRounds} rounds is out of range", "Give 1 to 1000 pre-copy rounds");
        }
        if (PrepageWindow is < 0 or > 4096)
        {
            throw new BadInputException($"a pre-paging window of {PrepageWindow} pages is out of range", $"Give 0 to 4096 pages on each side (the default is {DefaultPrepageWindow})");
        }
    }

    /// <summary>The mode named <paramref name="text"/> (<c>precopy</c>, <c>postcopy</c>, <c>hybrid</c>; null: pre-copy).</summary>
    /// <exception cref="BadInputException">Another name.</exception>
    public static MigrationMode ParseMode(string? text) => text switch
    {
        null or "precopy" => MigrationMode.PreCopy,
        "postcopy" => MigrationMode.PostCopy,
        "hybrid" => MigrationMode.Hybrid,
        var other => throw new BadInputException($"mode '{other}' is not a migration mode", "Give precopy, postcopy or hybrid"),
    };

    /// <summary>The mode's name as <see cref="ParseMode"/> reads it.</summary>
    public static string NameOf(MigrationMode mode) => mode switch
    {
        MigrationMode.PostCopy => "postcopy",
        MigrationMode.Hybrid => "hybrid",
        _ => "precopy",
    };
}

/// <summary>How a live migration moves memory.</summary>
public enum MigrationMode
{
    /// <summary>Clark et al. (NSDI'05): RAM in rounds while the VM runs, then the stop-and-copy; the source keeps a
    /// whole VM until the destination has all of it.</summary>
    PreCopy,
    /// <summary>Hines and Gopalan (VEE'09): the VM stops, its vCPU, devices and VMM state go first and it resumes on
    /// the destination at once; its pages follow, pushed in the background and demanded when the guest touches one
    /// that has not arrived. Until the last page arrives the VM exists in two halves: either side failing loses it.</summary>
    PostCopy,
    /// <summary>One pre-copy round (every page while the VM runs), then post-copy for what it dirtied since (Hines and
    /// Gopalan's hybrid, §3.4).</summary>
    Hybrid,
}

/// <summary>A hosted VM's settings as the migration stream carries them to the destination, which builds the same
/// <see cref="HostedVmSpec"/> from them (with the kernel's bytes from the header): one <c>key=value</c> a line.</summary>
public static class MigrationVmDescription
{
    /// <summary>The text of <paramref name="spec"/>.</summary>
    public static string Encode(HostedVmSpec spec)
    {
        var c = CultureInfo.InvariantCulture;
        var text = new StringBuilder();
        text.Append("name=").Append(spec.Name).Append('\n');
        text.Append("cmdline=").Append(spec.CommandLine).Append('\n');
        text.Append("technique=").Append((int)spec.Sim.Technique).Append('\n');
        text.Append("mmu=").Append(spec.Sim.Memory is { } m ? ((int)m).ToString(c) : "").Append('\n');
        text.Append("large-nested-pages=").Append(spec.Sim.LargeNestedPages ? 1 : 0).Append('\n');
        text.Append("memory=").Append(spec.Memory.MinBytes).Append(' ').Append(spec.Memory.MaxBytes).Append(' ').Append(spec.Memory.Shares).Append('\n');
        text.Append("cpu=").Append(spec.Cpu.Shares).Append(' ').Append(spec.Cpu.ReservationPercent.ToString("R", c)).Append(' ')
            .Append(spec.Cpu.LimitPercent?.ToString("R", c) ?? "none").Append('\n');
        text.Append("multiboot=").Append(spec.Multiboot ? 1 : 0).Append('\n');
        text.Append("serial-limit=").Append(spec.SerialLimitBytes).Append('\n');
        text.Append("balloon=").Append(spec.Balloon ? 1 : 0).Append('\n');
        return text.ToString();
    }

    /// <summary>The spec <paramref name="text"/> describes, booting <paramref name="kernel"/>.</summary>
    /// <exception cref="MigrationStreamException">A description this Nestor does not write.</exception>
    public static HostedVmSpec Decode(string text, KernelImageSource kernel)
    {
        var c = CultureInfo.InvariantCulture;
        var values = new Dictionary<string, string>();
        foreach (string line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = line.IndexOf('=');
            if (eq <= 0)
            {
                throw Bad(line);
            }
            values[line[..eq]] = line[(eq + 1)..];
        }
        string Get(string key) => values.TryGetValue(key, out var v) ? v : throw Bad($"(no {key})");
        try
        {
            var memory = Get("memory").Split(' ');
            var cpu = Get("cpu").Split(' ');
            var sim = new SimOptions
            {
                Technique = (Technique)int.Parse(Get("technique"), c),
                Memory = Get("mmu") is { Length: > 0 } mmu ? (MemoryVirtualization)int.Parse(mmu, c) : null,
                LargeNestedPages = Get("large-nested-pages") == "1",
            };
            return new HostedVmSpec(Get("name"), kernel, Get("cmdline"), sim,
                new MemoryControls(ulong.Parse(memory[0], c), ulong.Parse(memory[1], c), int.Parse(memory[2], c)),
                new CpuControls(int.Parse(cpu[0], c), double.Parse(cpu[1], c), cpu[2] == "none" ? null : double.Parse(cpu[2], c)))
            {
                Multiboot = Get("multiboot") == "1",
                SerialLimitBytes = long.Parse(Get("serial-limit"), c),
                Balloon = values.GetValueOrDefault("balloon") == "1", // the device must be there for its state to restore
            };
        }
        catch (Exception e) when (e is FormatException or OverflowException or IndexOutOfRangeException)
        {
            throw Bad(text.Replace('\n', ' '));
        }
    }

    private static MigrationStreamException Bad(string what) =>
        new($"the migration stream's VM description holds '{what}', which this Nestor does not write", MigrationRefusal.Invalid);
}
