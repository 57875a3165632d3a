namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>A device for testing the interrupt path, on four I/O ports from <see cref="DefaultPort"/>: writing 1 to
/// the control port (+0) asserts its line, 0 deasserts it (the acknowledgement a level-triggered handler gives before
/// EOI), 2 pulses it (assert, then deassert: one edge); reading it returns 1 while the line is asserted. The count
/// port (+2, 16 bits) reads how many times the line was asserted.</summary>
public sealed class TestInterruptDevice(IInterruptLine line) : IPortDevice
{
    public const ushort DefaultPort = 0x5E0;
    public const int PortCount = 4;

    public string Name => "irq-test";

    /// <summary>The line this device drives.</summary>
    public IInterruptLine Line => line;

    /// <summary>Assertions so far.</summary>
    public int Assertions { get; private set; }

    public uint Read(ushort port, int size) => (port & 3) switch
    {
        0 => line.Asserted ? 1u : 0u,
        2 => (uint)Assertions,
        _ => 0,
    };

    public void Write(ushort port, int size, uint value)
    {
        if ((port & 3) != 0)
        {
            return;
        }
        switch (value)
        {
            case 0:
                line.Lower();
                break;
            case 1:
                Assert();
                break;
            case 2:
                Assert();
                line.Lower();
                break;
        }
    }

    private void Assert()
    {
        if (!line.Asserted)
        {
            Assertions++;
        }
        line.Raise();
    }
}
