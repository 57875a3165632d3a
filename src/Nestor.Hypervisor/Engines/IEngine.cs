using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Engines;

/// <summary>A named counter an engine keeps about itself (for KVM: its binary statistics).</summary>
public sealed record EngineCounter(string Name, ulong Value, string Unit);

/// <summary>Runs the vCPUs of a <see cref="Vm"/> and hands every VM exit to the VMM's devices and policies.</summary>
public interface IEngine
{
    /// <summary>Engine name as the CLI spells it (<c>kvm</c>, <c>sim</c>).</summary>
    string Name { get; }

    /// <summary>Runs <paramref name="vm"/> from its initial state until it ends; never throws for guest behaviour
    /// (faults, failures and timeouts are outcomes), only for host problems.</summary>
    VmOutcome Run(Vm vm, RunControl control);

    /// <summary>The engine's own counters from the last run.</summary>
    IReadOnlyList<EngineCounter> Counters { get; }
}
