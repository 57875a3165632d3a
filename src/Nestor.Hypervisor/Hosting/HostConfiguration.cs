using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Errors;
using Nestor.Hypervisor.Memory.Reclamation;
using Nestor.Hypervisor.Memory.Swapping;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Hosting;

/// <summary>A host's configuration as written: HOST.json, or <c>--vm</c> options (the same fields). Sizes are
/// strings (<c>64M</c>); percentages are numbers.</summary>
public sealed class HostConfigFile
{
    /// <summary>What the host has; each may be overridden on the command line.</summary>
    public HostSection? Host { get; set; }

    /// <summary>The VMs, powered on in this order.</summary>
    public List<VmSection>? Vms { get; set; }
}

/// <summary>The <c>host</c> object of HOST.json.</summary>
public sealed class HostSection
{
    /// <summary>Host memory for guests, e.g. <c>1G</c>.</summary>
    public string? Memory { get; set; }

    /// <summary>Host swap, e.g. <c>256M</c>.</summary>
    public string? Swap { get; set; }

    /// <summary>Host CPUs.</summary>
    public int? Cpus { get; set; }

    /// <summary><c>share</c> or <c>credit</c>.</summary>
    public string? Scheduler { get; set; }

    /// <summary>The virtual clock's rate in MHz (1000 by default).</summary>
    public double? Mhz { get; set; }

    /// <summary>Whether VMs configured with a balloon get it (default true).</summary>
    public bool? Balloon { get; set; }

    /// <summary>Content-based page sharing (default on).</summary>
    public SharingSection? Sharing { get; set; }

    /// <summary>Host swapping (default on).</summary>
    public HostSwapSection? HostSwap { get; set; }

    /// <summary>Reclamation by free-memory states (default on).</summary>
    public ReclaimSection? Reclaim { get; set; }
}

/// <summary>The <c>host.sharing</c> object.</summary>
public sealed class SharingSection
{
    /// <summary>On or off (default on).</summary>
    public bool? Enabled { get; set; }

    /// <summary>Pages scanned per round (100 µs of virtual time) over all VMs (default 200).</summary>
    public int? Rate { get; set; }

    /// <summary>At most this many pages of one VM per round (default: no limit).</summary>
    public int? PerVmRate { get; set; }
}

/// <summary>The <c>host.host-swap</c> object.</summary>
public sealed class HostSwapSection
{
    /// <summary>On or off (default on).</summary>
    public bool? Enabled { get; set; }

    /// <summary>The directory of the per-VM swap files (default: the temporary directory).</summary>
    public string? Dir { get; set; }

    /// <summary><c>random</c> (ESX's, the default) or <c>clock</c>.</summary>
    public string? Policy { get; set; }
}

/// <summary>The <c>host.reclaim</c> object.</summary>
public sealed class ReclaimSection
{
    /// <summary>On or off (default on).</summary>
    public bool? Enabled { get; set; }

    /// <summary>The high threshold, percent of host memory free (default 6).</summary>
    public double? High { get; set; }

    /// <summary>The soft threshold (default 4).</summary>
    public double? Soft { get; set; }

    /// <summary>The hard threshold (default 2).</summary>
    public double? Hard { get; set; }

    /// <summary>The low threshold (default 1).</summary>
    public double? Low { get; set; }
}

/// <summary>Memory-overcommitment switches from the command line (<c>--no-sharing</c>, <c>--sharing-rate</c>, ...);
/// each given one wins over the file's.</summary>
public sealed record OvercommitSwitches
{
    /// <summary><c>--no-sharing</c>.</summary>
    public bool NoSharing { get; init; }

    /// <summary><c>--no-balloon</c>.</summary>
    public bool NoBalloon { get; init; }

    /// <summary><c>--no-host-swap</c>.</summary>
    public bool NoHostSwap { get; init; }

    /// <summary><c>--no-reclaim</c>.</summary>
    public bool NoReclaim { get; init; }

    /// <summary><c>--sharing-rate</c>: pages per round.</summary>
    public int? SharingRate { get; init; }

    /// <summary><c>--sharing-vm-rate</c>: pages per VM per round.</summary>
    public int? SharingPerVmRate { get; init; }

    /// <summary><c>--host-swap-dir</c>.</summary>
    public string? HostSwapDir { get; init; }

    /// <summary><c>--host-swap-policy</c>: random or clock.</summary>
    public string? HostSwapPolicy { get; init; }
}

/// <summary>One entry of <c>vms</c>.</summary>
public sealed class VmSection
{
    /// <summary>Unique name.</summary>
    public string? Name { get; set; }

    /// <summary>An ELF64 file, or <c>builtin:nestoros</c> (the default), <c>builtin:hello</c>, <c>builtin:spin</c>,
    /// <c>builtin:ticker</c>.</summary>
    public string? Kernel { get; set; }

    /// <summary>The kernel command line.</summary>
    public string? Cmdline { get; set; }

    /// <summary><c>native</c>, <c>hw</c>, <c>trap</c>, <c>bt</c> or <c>pv</c>.</summary>
    public string? Technique { get; set; }

    /// <summary><c>nested</c> or <c>shadow</c> (with <c>hw</c>).</summary>
    public string? Mmu { get; set; }

    /// <summary>vCPUs (1: the software machine runs one per VM).</summary>
    public int? Vcpus { get; set; }

    /// <summary>Boot by Multiboot.</summary>
    public bool? Multiboot { get; set; }

    /// <summary>Memory controls.</summary>
    public MemorySection? Memory { get; set; }

    /// <summary>CPU controls.</summary>
    public CpuSection? Cpu { get; set; }

    /// <summary>A file for its serial output instead of the console.</summary>
    public string? Serial { get; set; }

    /// <summary>The most serial output, e.g. <c>1M</c>.</summary>
    public string? SerialLimit { get; set; }

    /// <summary>The most virtual time it may run, in milliseconds.</summary>
    public double? RunLimitMs { get; set; }

    /// <summary>A virtio balloon on the VM.</summary>
    public bool? Balloon { get; set; }

    /// <summary>The guest's swap disk: <c>FILE[,if=ata|virtio]</c>, an existing raw image (NestorOS gets <c>swap=DEV</c>).</summary>
    public string? Swap { get; set; }
}

/// <summary>The memory controls of a VM.</summary>
public sealed class MemorySection
{
    /// <summary>Reserved memory (default: all of max).</summary>
    public string? Min { get; set; }

    /// <summary>Guest RAM (default 64M).</summary>
    public string? Max { get; set; }

    /// <summary>Memory shares (default 10 per MiB of max, ESX's "normal").</summary>
    public int? Shares { get; set; }
}

/// <summary>The CPU controls of a VM.</summary>
public sealed class CpuSection
{
    /// <summary>Shares (default 1000, ESX's "normal" for one vCPU) or, under credit, the weight (default 256).</summary>
    public int? Shares { get; set; }

    /// <summary>Reserved percent of one host CPU.</summary>
    public double? Reservation { get; set; }

    /// <summary>Limit (under credit: cap), percent of one host CPU.</summary>
    public double? Limit { get; set; }
}

/// <summary>HOST.json through System.Text.Json's source generator (NativeAOT has no reflection-based JSON); an unknown
/// field is an error, so a misspelt one is not silently ignored.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.KebabCaseLower, UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true)]
[JsonSerializable(typeof(HostConfigFile))]
internal sealed partial class HostFileJson : JsonSerializerContext;

/// <summary>Turns HOST.json and <c>--vm</c> options into a <see cref="HostSpec"/>; every error names the field.</summary>
public static class HostConfiguration
{
    /// <summary>Reads HOST.json text; <paramref name="source"/> names it in errors.</summary>
    public static HostConfigFile ParseFile(string json, string source)
    {
        try
        {
            return JsonSerializer.Deserialize(json, HostFileJson.Default.HostConfigFile)
                ?? throw new BadInputException($"{source}: the file holds null, not a host", "Write an object with \"host\" and \"vms\"");
        }
        catch (JsonException e)
        {
            string field = string.IsNullOrEmpty(e.Path) ? "the document" : e.Path;
            throw new BadInputException($"{source}: {field}: {FirstSentence(e.Message)}",
                "Fields: host {memory, swap, cpus, scheduler, mhz, balloon, sharing {enabled, rate, per-vm-rate}, host-swap {enabled, dir, policy}, " +
                "reclaim {enabled, high, soft, hard, low}}; vms [{name, kernel, cmdline, technique, mmu, vcpus, multiboot, " +
                "memory {min, max, shares}, cpu {shares, reservation, limit}, serial, serial-limit, run-limit-ms, balloon, swap}] (docs/host.md)");
        }
    }

    private static string FirstSentence(string message)
    {
        int path = message.IndexOf(" Path:", StringComparison.Ordinal);
        return path > 0 ? message[..path] : message;
    }

    /// <summary>One <c>--vm NAME=KERNEL[,key=value]...</c>: the keys are the file's fields (<c>cmdline</c>,
    /// <c>technique</c>, <c>mmu</c>, <c>vcpus</c>, <c>memory</c> or <c>max</c>, <c>min</c>, <c>memshares</c>,
    /// <c>shares</c>, <c>reservation</c>, <c>limit</c>, <c>serial</c>, <c>serial-limit</c>, <c>run-limit-ms</c>,
    /// <c>multiboot</c>); a value cannot hold a comma.</summary>
    public static VmSection ParseVmOption(string text)
    {
        var parts = text.Split(',');
        int equals = parts[0].IndexOf('=');
        if (equals <= 0)
        {
            throw new BadInputException($"--vm '{text}' does not start with NAME=KERNEL", "Write --vm web=builtin:nestoros,cmdline=compute 1000,memory=64M");
        }
        var vm = new VmSection { Name = parts[0][..equals], Kernel = parts[0][(equals + 1)..], Memory = new MemorySection(), Cpu = new CpuSection() };
        string? swapInterface = null;
        foreach (string part in parts.Skip(1))
        {
            int eq = part.IndexOf('=');
            string key = eq < 0 ? part : part[..eq];
            string value = eq < 0 ? "" : part[(eq + 1)..];
            string field = $"--vm {vm.Name}: {key}";
            switch (key)
            {
                case "cmdline": vm.Cmdline = value; break;
                case "technique": vm.Technique = value; break;
                case "mmu": vm.Mmu = value; break;
                case "vcpus": vm.Vcpus = Integer(value, field); break;
                case "memory" or "max": vm.Memory.Max = value; break;
                case "min": vm.Memory.Min = value; break;
                case "memshares": vm.Memory.Shares = Integer(value, field); break;
                case "shares" or "weight": vm.Cpu.Shares = Integer(value, field); break;
                case "reservation": vm.Cpu.Reservation = Number(value, field); break;
                case "limit" or "cap": vm.Cpu.Limit = Number(value, field); break;
                case "serial": vm.Serial = value; break;
                case "serial-limit": vm.SerialLimit = value; break;
                case "run-limit-ms": vm.RunLimitMs = Number(value, field); break;
                case "multiboot": vm.Multiboot = true; break;
                case "balloon": vm.Balloon = true; break;
                case "swap": vm.Swap = value; break;
                case "swap-if": swapInterface = value; break;
                default:
                    throw new BadInputException($"--vm {vm.Name}: there is no setting '{key}'",
                        "Settings: cmdline, technique, mmu, vcpus, memory (or max), min, memshares, shares, reservation, limit, serial, serial-limit, run-limit-ms, multiboot, balloon, swap, swap-if");
            }
        }
        if (swapInterface is not null)
        {
            vm.Swap = (vm.Swap ?? throw new BadInputException($"--vm {vm.Name}: swap-if needs swap=FILE", "Give swap=FILE with swap-if=ata|virtio")) + ",if=" + swapInterface;
        }
        return vm;
    }

    private static int Integer(string value, string field) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) ? n
            : throw new BadInputException($"{field}: '{value}' is not a whole number", "Give a whole number");

    private static double Number(string value, string field) =>
        double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double n) && double.IsFinite(n) ? n
            : throw new BadInputException($"{field}: '{value}' is not a number", "Give a number (a percentage of one host CPU)");

    /// <summary>The host a file and the command line describe; a command-line value wins over the file's.</summary>
    public static HostSpec ToSpec(HostConfigFile file, string source, ulong? memory = null, ulong? swap = null, int? cpus = null, string? scheduler = null,
        OvercommitSwitches? switches = null, bool allowNoVms = false)
    {
        var host = file.Host ?? new HostSection();
        ulong hostMemory = memory ?? (host.Memory is { } m ? Size.Parse(m, $"{source}: host.memory") : 1UL << 30);
        ulong hostSwap = swap ?? (host.Swap is { } s ? Size.Parse(s, $"{source}: host.swap") : 0);
        int hostCpus = cpus ?? host.Cpus ?? 1;
        if (hostCpus is < 1 or > 256)
        {
            throw new BadInputException($"{source}: host.cpus: {hostCpus} host CPUs is not a host", "Give 1 to 256 host CPUs");
        }
        var kind = VcpuScheduler.Parse(scheduler ?? host.Scheduler ?? "share");
        double mhz = host.Mhz ?? 1000;
        if (mhz is < 1 or > 100_000 || !double.IsFinite(mhz))
        {
            throw new BadInputException($"{source}: host.mhz: {mhz} MHz is not a clock rate", "Give 1 to 100000 MHz (1000 by default)");
        }
        var vms = file.Vms ?? [];
        if (vms.Count == 0 && !allowNoVms) // a host with --incoming gets its VM from the migration
        {
            throw new BadInputException($"{source}: vms: the host has no VMs", "Add VMs to \"vms\", or give --vm NAME=KERNEL");
        }
        var specs = vms.Select((vm, i) => ToSpec(vm, $"{source}: vms[{i}]", kind)).ToList();
        return new HostSpec(hostMemory, hostSwap, hostCpus, kind, specs)
        {
            Clock = new HostClock((long)(mhz * 1000)),
            Overcommit = Overcommit(host, source, switches ?? new OvercommitSwitches()),
        };
    }

    /// <summary>The overcommitment switches of <c>host</c> and the command line; each mechanism on unless turned off.</summary>
    private static OvercommitOptions Overcommit(HostSection host, string source, OvercommitSwitches cli)
    {
        SharingOptions? sharing = null;
        if (!cli.NoSharing && (host.Sharing?.Enabled ?? true))
        {
            int rate = cli.SharingRate ?? host.Sharing?.Rate ?? 200;
            string rateField = cli.SharingRate is null ? $"{source}: host.sharing.rate" : "--sharing-rate";
            if (rate is < 1 or > 1 << 24)
            {
                throw new BadInputException($"{rateField}: {rate} pages per round is not a scan rate", "Give 1 to 16777216 pages per round (a round is 100 µs of virtual time)");
            }
            int? perVm = cli.SharingPerVmRate ?? host.Sharing?.PerVmRate;
            if (perVm is < 1 or > 1 << 24)
            {
                throw new BadInputException($"{(cli.SharingPerVmRate is null ? $"{source}: host.sharing.per-vm-rate" : "--sharing-vm-rate")}: {perVm} pages per round is not a scan rate",
                    "Give 1 to 16777216 pages per VM per round, or leave it out");
            }
            sharing = new SharingOptions(rate, perVm);
        }
        HostSwapOptions? hostSwap = null;
        if (!cli.NoHostSwap && (host.HostSwap?.Enabled ?? true))
        {
            string policyText = cli.HostSwapPolicy ?? host.HostSwap?.Policy ?? "random";
            var policy = policyText.ToLowerInvariant() switch
            {
                "random" => SwapVictimPolicy.Random,
                "clock" => SwapVictimPolicy.Clock,
                _ => throw new BadInputException($"{(cli.HostSwapPolicy is null ? $"{source}: host.host-swap.policy" : "--host-swap-policy")}: there is no victim policy '{policyText}'",
                    "Use random (ESX's) or clock"),
            };
            string? dir = cli.HostSwapDir ?? host.HostSwap?.Dir;
            if (dir is not null && !Directory.Exists(dir))
            {
                throw new BadInputException($"{(cli.HostSwapDir is null ? $"{source}: host.host-swap.dir" : "--host-swap-dir")}: '{dir}' is not a directory",
                    "Give an existing directory for the VMs' swap files");
            }
            hostSwap = new HostSwapOptions(dir, policy);
        }
        var r = host.Reclaim;
        var defaults = ReclamationThresholds.Default;
        var thresholds = new ReclamationThresholds(r?.High ?? defaults.High, r?.Soft ?? defaults.Soft, r?.Hard ?? defaults.Hard, r?.Low ?? defaults.Low);
        thresholds.Validate($"{source}: host.reclaim");
        return new OvercommitOptions
        {
            Reclaim = !cli.NoReclaim && (r?.Enabled ?? true),
            Balloon = !cli.NoBalloon && (host.Balloon ?? true),
            Sharing = sharing,
            HostSwap = hostSwap,
            Thresholds = thresholds,
        };
    }

    private static HostedVmSpec ToSpec(VmSection vm, string at, SchedulerKind scheduler)
    {
        string name = vm.Name ?? throw new BadInputException($"{at}.name: a VM needs a name", "Give every VM a \"name\"");
        if (name.Length == 0 || name.Length > 64 || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')))
        {
            throw new BadInputException($"{at}.name: '{name}' is not a VM name", "Use 1 to 64 letters, digits, '-', '_' or '.'");
        }
        ulong max = vm.Memory?.Max is { } maxText ? Size.Parse(maxText, $"{at}.memory.max") : 64UL << 20;
        ulong min = vm.Memory?.Min is { } minText ? Size.Parse(minText, $"{at}.memory.min") : max;
        if (min > max)
        {
            throw new BadInputException($"{at}.memory.min: {Size.Format(min)} is more than max {Size.Format(max)}", "Reserve at most the VM's memory");
        }
        int memoryShares = vm.Memory?.Shares ?? (int)Math.Max(1, 10 * (max >> 20));
        int defaultShares = scheduler == SchedulerKind.Credit ? CreditScheduler.DefaultWeight : 1000;
        int shares = vm.Cpu?.Shares ?? defaultShares;
        if (shares is < 1 or > 1_000_000)
        {
            throw new BadInputException($"{at}.cpu.shares: {shares} is out of range", "Give 1 to 1000000 shares (a weight)");
        }
        int vcpus = vm.Vcpus ?? 1;
        if (vcpus < 1)
        {
            throw new BadInputException($"{at}.vcpus: {vcpus} is not a number of vCPUs", "Give vcpus 1, or leave it out");
        }
        if (vcpus > Configuration.VmConfig.MaximumCpus)
        {
            throw new BadInputException($"{at}.vcpus: {vcpus} vCPUs is out of range: a VM has 1 to {Configuration.VmConfig.MaximumCpus}",
                $"Give vcpus between 1 and {Configuration.VmConfig.MaximumCpus}");
        }
        double reservation = vm.Cpu?.Reservation ?? 0;
        // The VM's, in percent of one host CPU (ESX's reservation and limit, Xen's cap): at most what its vCPUs can use.
        if (reservation < 0 || reservation > 100.0 * vcpus)
        {
            throw new BadInputException($"{at}.cpu.reservation: {reservation}% is not a share of {vcpus} host CPU(s)", $"Give 0 to {100 * vcpus} (percent of one host CPU, for the VM's {vcpus} vCPU(s))");
        }
        double? limit = vm.Cpu?.Limit;
        if (limit <= 0 || limit > 100.0 * vcpus)
        {
            throw new BadInputException($"{at}.cpu.limit: {limit}% is not a share of {vcpus} host CPU(s)", $"Give more than 0 and at most {100 * vcpus} (percent of one host CPU, for the VM's {vcpus} vCPU(s)), or leave it out");
        }
        if (limit is { } l && l < reservation)
        {
            throw new BadInputException($"{at}.cpu.limit: {l}% is below the reservation {reservation}%", "A limit must be at least the reservation");
        }
        var sim = ParseTechnique(vm.Technique ?? "native", vm.Mmu, at);
        if (vcpus > 1 && TechniqueRules.SeveralVcpusRefusal(sim.Technique, sim.Memory) is { } refusal)
        {
            // The one rule for several vCPUs under a technique (TechniqueRules): a VMM that virtualizes one vCPU
            // would leave the others unstarted, so the host refuses rather than admit CPU it cannot run.
            throw new BadInputException($"{at}.vcpus: {vcpus} vCPUs refused: {refusal.Message}",
                $"{refusal.Hint} (here: the VM's technique and mmu fields, or vcpus 1)");
        }
        var kernel = Kernel(vm.Kernel ?? "builtin:nestoros", max, at, vcpus);
        long serialLimit = vm.SerialLimit is { } sl ? (long)Size.Parse(sl, $"{at}.serial-limit") : 16L << 20;
        if (vm.RunLimitMs is <= 0)
        {
            throw new BadInputException($"{at}.run-limit-ms: {vm.RunLimitMs} ms is not a limit", "Give a positive number of milliseconds, or leave it out");
        }
        DiskConfig? swapDisk = null;
        if (vm.Swap is { } swapText)
        {
            try
            {
                swapDisk = DiskConfig.Parse(swapText);
            }
            catch (BadInputException e)
            {
                throw new BadInputException($"{at}.swap: {e.Message}", "Give the swap disk as FILE[,if=ata|virtio], an existing raw image (truncate -s 16M swap.img)");
            }
            if (swapDisk.ReadOnly || swapDisk.Interface == DiskInterface.Assigned)
            {
                throw new BadInputException($"{at}.swap: '{swapText}' cannot be a swap disk", "Give a writable virtio or ATA disk: FILE or FILE,if=ata");
            }
        }
        return new HostedVmSpec(name, kernel, vm.Cmdline ?? "", sim, new MemoryControls(min, max, memoryShares), new CpuControls(shares, reservation, limit))
        {
            VcpuCount = vcpus,
            Multiboot = vm.Multiboot ?? false,
            SerialFile = vm.Serial,
            SerialLimitBytes = serialLimit,
            RunLimitMilliseconds = vm.RunLimitMs,
            Balloon = vm.Balloon ?? false,
            SwapDisk = swapDisk,
        };
    }

    private static SimOptions ParseTechnique(string text, string? mmu, string at)
    {
        var technique = text.ToLowerInvariant() switch
        {
            "native" => Technique.Native,
            "hw" => Technique.HardwareAssist,
            "trap" => Technique.TrapAndEmulate,
            "bt" => Technique.BinaryTranslation,
            "pv" => Technique.Paravirtual,
            _ => throw new BadInputException($"{at}.technique: there is no technique '{text}'", "Use native, hw, trap, bt or pv"),
        };
        MemoryVirtualization? memory = mmu?.ToLowerInvariant() switch
        {
            null => null,
            "nested" => MemoryVirtualization.Nested,
            "shadow" => MemoryVirtualization.Shadow,
            _ => throw new BadInputException($"{at}.mmu: there is no memory virtualization '{mmu}'", "Use nested or shadow"),
        };
        if (TechniqueRules.Check(new TechniqueChoice(technique, memory, NestedPageSizeChosen: false)) is { } violation)
        {
            throw new BadInputException($"{at}: {violation.Message}", violation.Hint);
        }
        return new SimOptions { Technique = technique, Memory = memory };
    }

    private static KernelImageSource Kernel(string text, ulong memory, string at, int vcpus)
    {
        if (text.StartsWith("builtin:", StringComparison.Ordinal))
        {
            string name = text["builtin:".Length..];
            return WorkloadGuests.Get(name, vcpus) ?? BuiltInGuests.Get(name);
        }
        return KernelImageSource.FromFile(text, KernelFormat.Elf, null, memory);
    }
}
