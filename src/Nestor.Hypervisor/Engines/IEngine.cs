using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Engines;

/// <summary>A named counter an engine keeps about itself (for KVM: its binary statistics).</summary>
public sealed record EngineCounter(string Name, ulong Value, string Unit);

/// <summary>Lets another thread stop a running VM (timeout, Ctrl-C).</summary>
public sealed class RunControl
{
    private Action? stopCallback;

    /// <summary>Why the run was asked to stop, or null while it may go on.</summary>
    public VmOutcomeKind? StopReason { get; private set; }

    /// <summary>Asks the engine to stop as soon as it can; the run ends with <paramref name="reason"/>.</summary>
    public void Stop(VmOutcomeKind reason)
    {
        lock (this)
        {
            StopReason ??= reason;
            stopCallback?.Invoke();
        }
    }

    /// <summary>Called by an engine: <paramref name="kick"/> makes the running vCPU return to the VMM.</summary>
    public void OnStop(Action kick)
    {
        lock (this)
        {
            stopCallback = kick;
            if (StopReason is not null)
            {
                kick();
            }
        }
    }

    /// <summary>Called by an engine when the vCPU can no longer be kicked.</summary>
    public void ClearStop()
    {
        lock (this)
        {
            stopCallback = null;
        }
    }
}

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
