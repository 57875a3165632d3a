using Nestor.Hypervisor.Configuration;
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

    /// <summary>Give it a virtio balloon (docs/overcommit.md), through which the host's memory policy takes pages back.</summary>
    public bool Balloon { get; init; }

    /// <summary>Boot it by Multiboot (the 32-bit entry) instead of the Nestor boot protocol.</summary>
    public bool Multiboot { get; init; }

    /// <summary>Where its serial output goes: a file, or null for the host's console with a <c>[name] </c> prefix.</summary>
    public string? SerialFile { get; init; }

    /// <summary>The most serial output it may produce; past it the VM is stopped as a flood (the others go on).</summary>
    public long SerialLimitBytes { get; init; } = 16L << 20;

    /// <summary>The most virtual time it may run (its own clock, in milliseconds of the host clock); null: no limit.
    /// A VM past it ends with a timeout outcome, alone.</summary>
    public double? RunLimitMilliseconds { get; init; }
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
}
