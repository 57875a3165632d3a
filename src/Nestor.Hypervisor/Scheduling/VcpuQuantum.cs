namespace Nestor.Hypervisor.Scheduling;

/// <summary>The hand-over between the host's dispatch thread and one vCPU's thread: the host dispatches the vCPU
/// for a round with a budget, the vCPU's engine runs it and reports what it did (busy and idle cycles) at its next
/// <see cref="NextBudget"/>, or when its run ends (<see cref="Finish"/>).</summary>
public sealed class VcpuQuantum : IVcpuQuantum, IVcpuRound, IDisposable
{
    private readonly Lock gate = new();
    private readonly SemaphoreSlim dispatched = new(0);
    private readonly ManualResetEventSlim ended = new(false);
    private CountdownEvent? round;
    private long budget;
    private bool awaitingReport;
    private bool stopped;
    private bool started;
    private long lastClock, lastRetired;
    private long roundStartClock, roundStartRetired, roundLeft;
    private bool idlesOften;
    private bool waiting, interrupted;

    /// <summary>The engine's slices for a vCPU that idled lately: short enough to see it go idle in HLT soon after it
    /// does (the machine skips the idle time inside a slice), so that it blocks and leaves its host CPU.</summary>
    public const long ShortSlice = 2048;

    /// <summary>Busy cycles (instructions retired) of the last report.</summary>
    public long BusyCycles { get; private set; }

    /// <summary>Cycles the guest idled in HLT in the last report.</summary>
    public long IdleCycles { get; private set; }

    /// <summary>The vCPU's clock (its TSC) at the last report.</summary>
    public long Clock { get; private set; }

    /// <summary>The run ended: the vCPU will never report again.</summary>
    public bool Finished { get; private set; }

    /// <summary>The host: runs the vCPU for up to <paramref name="instructions"/>; it reports to
    /// <paramref name="roundDone"/>. False if its run has already ended.</summary>
    public bool Dispatch(long instructions, CountdownEvent roundDone)
    {
        lock (gate)
        {
            if (Finished)
            {
                return false;
            }
            budget = instructions;
            round = roundDone;
            awaitingReport = true;
            BusyCycles = IdleCycles = 0;
        }
        dispatched.Release();
        return true;
    }

    /// <summary>The host: the run is to end; a waiting vCPU goes on (for one instruction, after which the engine
    /// sees the stop) without a round.</summary>
    public void Stop()
    {
        lock (gate)
        {
            if (stopped)
            {
                return;
            }
            stopped = true;
        }
        dispatched.Release();
    }

    /// <summary>The host: wakes a vCPU thread that waits to be dispatched (descheduled, between rounds) without a
    /// round, for one instruction, so that the engine sees a stop request its run was given (a snapshot of a paused
    /// VM: the run must return for its state to be saved). False if the thread is not waiting now.</summary>
    public bool Interrupt()
    {
        lock (gate)
        {
            if (!waiting || interrupted || stopped || Finished)
            {
                return false;
            }
            interrupted = true;
        }
        dispatched.Release();
        return true;
    }

    /// <inheritdoc/>
    public long NextBudget(long clock, long instructionsRetired)
    {
        if (started)
        {
            long busy = instructionsRetired - lastRetired;
            bool idled = clock - lastClock > busy;
            roundLeft -= busy;
            if (!idled && roundLeft > 0 && !stopped)
            {
                // Still in the round: the next short slice, without a report.
                lastClock = clock;
                lastRetired = instructionsRetired;
                return Math.Min(roundLeft, idlesOften ? ShortSlice : roundLeft);
            }
            idlesOften = idled;
            Report(clock, instructionsRetired, finished: false);
        }
        switch (AwaitDispatch(clock, instructionsRetired, out long granted))
        {
            case Handoff.Stopped:
                return 1;
            case Handoff.Interrupted:
                // Woken without a round (Interrupt): one instruction, after which the engine sees its stop request.
                roundLeft = 0;
                return 1;
        }
        roundLeft = granted;
        return Math.Min(granted, idlesOften ? ShortSlice : granted);
    }

    private enum Handoff { Round, Stopped, Interrupted }

    // The engine's thread: waits until the host dispatches the vCPU, stops or interrupts it; the round's budget in
    // `granted`. The one hand-off both NextBudget and AwaitRound wait in.
    private Handoff AwaitDispatch(long clock, long instructionsRetired, out long granted)
    {
        started = true;
        lock (gate)
        {
            waiting = true;
        }
        dispatched.Wait();
        lock (gate)
        {
            waiting = false;
            lastClock = roundStartClock = clock;
            lastRetired = roundStartRetired = instructionsRetired;
            granted = budget;
            if (stopped)
            {
                dispatched.Release(); // every later call goes on at once too
                return Handoff.Stopped;
            }
            if (interrupted)
            {
                interrupted = false;
                return Handoff.Interrupted;
            }
            return Handoff.Round;
        }
    }

    /// <summary>Whether the vCPU could run at its last <see cref="EndRound"/> (a vCPU of a VM with several: false while
    /// it waits for its start-up IPI or is halted until an interrupt).</summary>
    public bool Runnable { get; internal set; } = true;

    /// <inheritdoc/>
    public long AwaitRound(long clock, long instructionsRetired) => AwaitDispatch(clock, instructionsRetired, out long granted) switch
    {
        Handoff.Stopped => 1,
        Handoff.Interrupted => 0,
        _ => granted,
    };

    /// <inheritdoc/>
    public void EndRound(long clock, long instructionsRetired, bool runnable)
    {
        Runnable = runnable;
        Report(clock, instructionsRetired, finished: false);
    }

    /// <summary>The host: waits until the vCPU's run has ended (after <see cref="Stop"/>). The host stops a VM between
    /// rounds (its duration or run limit is over) and then waits here before it decides the next round, so that the
    /// one instruction the engine runs to see the stop is never inside a round (it is not charged) and the VM is
    /// never dispatched again: whether its thread or the next round came first would otherwise decide both, and two
    /// identical runs could differ by that cycle.</summary>
    public void WaitFinished() => ended.Wait();

    /// <summary>The vCPU's thread: its run is over, with the clock and count of its final state.</summary>
    public void Finish(long clock, long instructionsRetired) => Report(clock, instructionsRetired, finished: true);

    private void Report(long clock, long instructionsRetired, bool finished)
    {
        CountdownEvent? done = null;
        lock (gate)
        {
            if (awaitingReport && started)
            {
                long busy = instructionsRetired - roundStartRetired;
                BusyCycles = busy;
                IdleCycles = Math.Max(0, clock - roundStartClock - busy);
            }
            Clock = clock;
            Finished |= finished;
            if (awaitingReport)
            {
                awaitingReport = false;
                done = round;
            }
        }
        if (finished)
        {
            ended.Set();
        }
        done?.Signal();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        dispatched.Dispose();
        ended.Dispose();
    }
}
