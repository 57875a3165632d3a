namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>One interrupt line of the platform (a global system interrupt, GSI) as a device sees it: the device asserts
/// it (<see cref="Raise"/>) and deasserts it (<see cref="Lower"/>). Whether the assertion is an edge or a level is the
/// interrupt controller's programming, not the device's.</summary>
public interface IInterruptLine
{
    /// <summary>The line's number (GSI: the I/O APIC input pin).</summary>
    int Gsi { get; }

    /// <summary>True while the device asserts the line.</summary>
    bool Asserted { get; }

    void Raise();

    void Lower();
}

/// <summary>Where the platform's lines end: the I/O APIC of the software machine, or KVM's in-kernel irqchip
/// (<c>KVM_IRQ_LINE</c>).</summary>
public interface IInterruptSink
{
    /// <summary>Line <paramref name="gsi"/> is now asserted (true) or deasserted (false).</summary>
    void SetLine(int gsi, bool asserted);
}

/// <summary>The platform's interrupt lines (GSIs 0–23, the I/O APIC's inputs): devices hold an
/// <see cref="IInterruptLine"/> each and raise or lower it; every change goes to the <see cref="Sink"/> the engine
/// connected (the I/O APIC by default). Lines keep their level, so a sink connected later can be told the current
/// state (<see cref="Replay"/>).</summary>
public sealed class InterruptController : Persistence.ISnapshottable
{
    /// <summary>Lines on the platform: the I/O APIC's 24 inputs.</summary>
    public const int LineCount = IoApic.RedirectionEntries;

    private readonly Line[] lines = new Line[LineCount];

    public InterruptController(IInterruptSink sink)
    {
        Sink = sink;
        for (int gsi = 0; gsi < LineCount; gsi++)
        {
            lines[gsi] = new Line(this, gsi);
        }
    }

    /// <summary>Where line changes go.</summary>
    public IInterruptSink Sink { get; set; }

    /// <summary>Changes of any line's level so far.</summary>
    public long Transitions { get; private set; }

    /// <summary>Line <paramref name="gsi"/>, for a device to drive.</summary>
    public IInterruptLine this[int gsi] => (uint)gsi < LineCount ? lines[gsi]
        : throw new ArgumentOutOfRangeException(nameof(gsi), gsi, $"the platform has GSIs 0-{LineCount - 1}");

    /// <summary>Sets line <paramref name="gsi"/> to <paramref name="asserted"/>; a change goes to the sink.</summary>
    public void SetLine(int gsi, bool asserted) => ((Line)this[gsi]).Set(asserted);

    /// <summary>Tells the sink the level of every asserted line (after connecting a new sink).</summary>
    public void Replay()
    {
        foreach (var line in lines)
        {
            if (line.Asserted)
            {
                Sink.SetLine(line.Gsi, true);
            }
        }
    }

    /// <inheritdoc/>
    public string SectionTag => "IRQL";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <summary>Each line's level, and the transition count.</summary>
    public void Save(Persistence.SnapshotWriter writer)
    {
        foreach (var line in lines)
        {
            writer.WriteBoolean(line.Asserted);
        }
        writer.WriteInt64(Transitions);
    }

    /// <summary>Takes the saved levels without telling the sink: the I/O APIC's own section holds what its pins saw,
    /// and a sink connected later (the KVM irqchip) is told by <see cref="Replay"/>.</summary>
    public void Restore(Persistence.SnapshotReader reader, ushort version)
    {
        foreach (var line in lines)
        {
            line.Restore(reader.ReadBoolean());
        }
        Transitions = reader.ReadInt64();
    }

    private sealed class Line(InterruptController owner, int gsi) : IInterruptLine
    {
        public int Gsi => gsi;

        public bool Asserted { get; private set; }

        public void Raise() => Set(true);

        public void Lower() => Set(false);

        public void Restore(bool asserted) => Asserted = asserted;

        public void Set(bool asserted)
        {
            if (asserted == Asserted)
            {
                return;
            }
            Asserted = asserted;
            owner.Transitions++;
            owner.Sink.SetLine(gsi, asserted);
        }
    }
}
