using System.Diagnostics;
using Nestor.Hypervisor.Exits;

namespace Nestor.Hypervisor.Engines;

/// <summary>Lets another thread stop a running VM: the timeout, Ctrl-C (SIGINT), SIGTERM, SIGHUP.</summary>
public sealed class RunControl
{
    private readonly Lock gate = new();
    private Action? stopCallback;

    /// <summary>Why the run was first asked to stop, or null while it may go on.</summary>
    public VmOutcomeKind? StopReason { get; private set; }

    /// <summary>Asks the engine to stop as soon as it can; the run ends with <paramref name="reason"/> unless an
    /// earlier request gave another. The first reason is kept because it is what the user saw happen: Ctrl-C at
    /// second 9 of a 10-second --timeout is an interruption (130), not a timeout, however long the engine then
    /// takes to get out of the guest.</summary>
    public void Stop(VmOutcomeKind reason)
    {
        lock (gate)
        {
            StopReason ??= reason;
            stopCallback?.Invoke();
        }
    }

    /// <summary>Withdraws a stop request of <paramref name="reason"/> once it has been served (a pause, such as
    /// SIGUSR1's snapshot, after which the VM runs on); a request of another reason stays.</summary>
    /// <returns>True when the request was withdrawn.</returns>
    public bool Resume(VmOutcomeKind reason)
    {
        lock (gate)
        {
            if (StopReason != reason)
            {
                return false;
            }
            StopReason = null;
            return true;
        }
    }

    /// <summary>Arms a timer that stops the run with <see cref="VmOutcomeKind.Timeout"/> once
    /// <paramref name="limit"/> has passed; dispose of it to disarm it.</summary>
    public Deadline StopAfter(TimeSpan limit) => new(limit, () => Stop(VmOutcomeKind.Timeout));

    /// <summary>Called by an engine: <paramref name="kick"/> makes the running vCPU return to the VMM.</summary>
    public void OnStop(Action kick)
    {
        lock (gate)
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
        lock (gate)
        {
            stopCallback = null;
        }
    }
}

/// <summary>Calls an action once, when a wall-clock limit of any length has passed. System.Threading.Timer takes
/// at most 0xfffffffe ms (about 49.7 days) and throws beyond, so a longer limit is waited for in steps of at most
/// that, re-arming until the deadline.</summary>
public sealed class Deadline : IDisposable
{
    /// <summary>The longest single wait System.Threading.Timer accepts.</summary>
    internal static readonly TimeSpan LongestStep = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    private readonly Lock gate = new();
    private readonly TimeSpan limit;
    private readonly TimeSpan longestStep;
    private readonly long start = Stopwatch.GetTimestamp();
    private readonly Action onExpiry;
    private readonly Timer timer;
    private bool done;

    /// <param name="limit">How long from now; zero or less expires at once.</param>
    /// <param name="onExpiry">Runs on a thread-pool thread, once.</param>
    public Deadline(TimeSpan limit, Action onExpiry) : this(limit, onExpiry, LongestStep)
    {
    }

    /// <summary>With a shorter step than the timer's longest, so that tests see the re-arming in milliseconds.</summary>
    internal Deadline(TimeSpan limit, Action onExpiry, TimeSpan longestStep)
    {
        this.limit = limit;
        this.onExpiry = onExpiry;
        this.longestStep = longestStep;
        timer = new Timer(_ => Check(), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        lock (gate)
        {
            Arm(limit);
        }
    }

    /// <summary>True once the limit has passed and the action has run (or is running).</summary>
    public bool Expired { get; private set; }

    private void Check()
    {
        lock (gate)
        {
            if (done)
            {
                return;
            }
            var remaining = limit - Stopwatch.GetElapsedTime(start);
            if (remaining > TimeSpan.Zero)
            {
                Arm(remaining);
                return;
            }
            done = true;
            Expired = true;
        }
        onExpiry();
    }

    private void Arm(TimeSpan wait) =>
        timer.Change(wait <= TimeSpan.Zero ? TimeSpan.Zero : wait < longestStep ? wait : longestStep, Timeout.InfiniteTimeSpan);

    public void Dispose()
    {
        lock (gate)
        {
            done = true;
        }
        timer.Dispose();
    }
}
