using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Storage;
using Nestor.Hypervisor.Memory.Reclamation;
using Nestor.Hypervisor.Memory.Swapping;
using Nestor.Hypervisor.Scheduling;
using Nestor.Hypervisor.Techniques;

namespace Nestor.Hypervisor.Hosting;

/// <summary>One VM of a host, as configured (a HOST.json entry or a <c>--vm</c> option).</summary>
/// <param name="Name">Unique on the host; prefixes its serial output.</param>
/// <param name="Kernel">What it boots.</param>
/// <param name="CommandLine">The kernel's command line.</param>
/// <param name="Sim">Its technique and memory virtualization on the software machine.</param>
/// <param name="Memory">Reserved (min) and guest-visible (max) memory, and memory shares.</param>
/// <param name="Cpu">Reservation, limit and shares (under the credit scheduler: weight and cap).</param>
public sealed record HostedVmSpec(string Name, KernelImageSource Kernel, string CommandLine, SimOptions Sim, MemoryControls Memory, CpuControls Cpu)
{
    /// <summary>Its vCPUs (the software machine runs one per VM).</summary>
    public int VcpuCount { get; init; } = 1;

    /// <summary>Boot it by Multiboot (the 32-bit entry) instead of the Nestor boot protocol.</summary>
    public bool Multiboot { get; init; }

    /// <summary>Where its serial output goes: a file, or null for the host's console with a <c>[name] </c> prefix.</summary>
    public string? SerialFile { get; init; }

    /// <summary>The most serial output it may produce; past it the VM is stopped as a flood (the others go on).</summary>
    public long SerialLimitBytes { get; init; } = 16L << 20;

    /// <summary>The most virtual time it may run (its own clock, in milliseconds of the host clock); null: no limit.
    /// A VM past it ends with a timeout outcome, alone.</summary>
    public double? RunLimitMilliseconds { get; init; }

    /// <summary>A virtio balloon on the VM (issue 15): the host's memory manager and the operator
    /// (<c>nestor host ctl balloon</c>) set its target; NestorOS's kernel driver or its <c>balloon</c> program answers.</summary>
    public bool Balloon { get; init; }

    /// <summary>The guest's swap disk (<c>--disk</c>'s spelling, <c>FILE[,if=ata|virtio]</c>): attached as the VM's only
    /// disk and named on NestorOS's command line (<c>swap=vda</c> or <c>swap=ata0</c>), so that a ballooned guest pages
    /// out its own cold pages (docs/overcommit.md, "Guest swapping").</summary>
    public DiskConfig? SwapDisk { get; init; }

    /// <summary>The kernel command line the VM boots with: <see cref="CommandLine"/>, after <c>swap=DEV</c> when it
    /// has a swap disk.</summary>
    public string BootCommandLine => SwapDisk is { } disk
        ? $"swap={(disk.Interface == DiskInterface.Ata ? "ata0" : "vda")} {CommandLine}".TrimEnd()
        : CommandLine;
}

/// <summary>Page sharing on a host: the scanner's rates, in pages per round (a round is 100 µs of virtual time),
/// system-wide and per VM (ESX's two knobs, Waldspurger OSDI'02 §4.2).</summary>
/// <param name="PagesPerRound">Pages hashed per round over all VMs.</param>
/// <param name="PagesPerVmPerRound">At most this many from one VM per round; null: no per-VM limit.</param>
/// <param name="Seed">Seed of each VM's random scan order.</param>
public sealed record SharingOptions(int PagesPerRound = 200, int? PagesPerVmPerRound = null, int Seed = 15);

/// <summary>Host swapping on a host: where each VM's swap file (ESX's per-VM <c>.vswp</c>, sized max − min) is
/// created, and how victims are picked.</summary>
/// <param name="Directory">The swap files' directory; null: the temporary directory.</param>
/// <param name="Policy">Random (ESX's) or clock victims.</param>
public sealed record HostSwapOptions(string? Directory = null, SwapVictimPolicy Policy = SwapVictimPolicy.Random);

/// <summary>The memory-overcommitment switches of a host (issue 15, docs/overcommit.md): each mechanism on or off,
/// so that a run shows what each saves.</summary>
public sealed record OvercommitOptions
{
    /// <summary>Everything off: no scanner, no balloons, no host swap, no reclamation (the default of a
    /// <see cref="HostSpec"/> built in code; <c>nestor host run</c> turns them on unless told otherwise).</summary>
    public static OvercommitOptions Off { get; } = new() { Reclaim = false, Balloon = false, Sharing = null, HostSwap = null };

    /// <summary>Every mechanism on with its defaults.</summary>
    public static OvercommitOptions On { get; } = new();

    /// <summary>Reclamation by the free-memory states: targets from the policy, balloons, swapping, blocking.</summary>
    public bool Reclaim { get; init; } = true;

    /// <summary>VMs configured with a balloon get their device; false: none does.</summary>
    public bool Balloon { get; init; } = true;

    /// <summary>Content-based page sharing; null: off.</summary>
    public SharingOptions? Sharing { get; init; } = new();

    /// <summary>Host swapping; null: off.</summary>
    public HostSwapOptions? HostSwap { get; init; } = new();

    /// <summary>The free-memory thresholds (ESX's 6/4/2/1%).</summary>
    public ReclamationThresholds Thresholds { get; init; } = ReclamationThresholds.Default;

    /// <inheritdoc/>
    public override string ToString() =>
        $"reclaim {(Reclaim ? "on" : "off")}, balloon {(Balloon ? "on" : "off")}, sharing {(Sharing is { } s ? $"on ({s.PagesPerRound} pages/round{(s.PagesPerVmPerRound is { } v ? $", {v} per VM" : "")})" : "off")}, " +
        $"host swap {(HostSwap is { } h ? $"on ({h.Policy.ToString().ToLowerInvariant()})" : "off")}, thresholds {Thresholds}";
}

/// <summary>What the host has and how it runs its VMs.</summary>
/// <param name="MemoryBytes">Host memory for guests (--host-memory).</param>
/// <param name="SwapBytes">Host swap (--host-swap): what may back the part of guests' memory above their min.</param>
/// <param name="HostCpus">Host CPUs (--host-cpus): as many host threads run vCPUs at once.</param>
/// <param name="Scheduler">share or credit (--scheduler).</param>
/// <param name="Vms">The VMs, in the order they power on.</param>
public sealed record HostSpec(ulong MemoryBytes, ulong SwapBytes, int HostCpus, SchedulerKind Scheduler, IReadOnlyList<HostedVmSpec> Vms)
{
    /// <summary>The virtual clock's rate.</summary>
    public HostClock Clock { get; init; } = HostClock.Default;

    /// <summary>How long the host runs, in milliseconds of virtual time: when it has, every VM still running is
    /// stopped (an experiment of fixed length, as <c>nestor bench consolidate</c> runs); null: until each has ended.</summary>
    public double? DurationMilliseconds { get; init; }

    /// <summary>A wall-clock limit on the whole host run; null: none.</summary>
    public TimeSpan? WallTimeout { get; init; }

    /// <summary>Memory overcommitment: which mechanisms run (<see cref="HostMemoryManager"/>).</summary>
    public OvercommitOptions Overcommit { get; init; } = OvercommitOptions.Off;

    /// <summary>How the host divides its memory among the VMs when it reclaims: proportional share (τ = 0) by default;
    /// the idle memory tax (Waldspurger OSDI'02 §5.3) plugs in here (<c>--idle-tax τ</c>).</summary>
    public IMemoryAllocationPolicy AllocationPolicy { get; init; } = new ProportionalShare();
}
