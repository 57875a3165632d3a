namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>How the software machine's platform lines reach the interrupt controllers, as on a PC: every line goes to
/// its I/O APIC pin, and the ISA ones (GSIs 1 and 3–15 as IRQs of the same number, GSI 2 as IRQ 0: the MADT's
/// interrupt source override, as QEMU wires the PIT) also to the 8259 pair. GSIs 0 and 16–23 have no 8259 input.</summary>
public sealed class IsaInterruptRouting(IoApic ioApic, Pic8259Pair pic) : IInterruptSink
{
    /// <summary>The ISA IRQ of the 8259 pair that GSI <paramref name="gsi"/> drives, or -1.</summary>
    public static int IrqOf(int gsi) => gsi switch
    {
        2 => 0,
        1 or (>= 3 and <= 15) => gsi,
        _ => -1,
    };

    /// <inheritdoc/>
    public void SetLine(int gsi, bool asserted)
    {
        ioApic.SetLine(gsi, asserted);
        if (IrqOf(gsi) is var irq and >= 0)
        {
            pic.SetIrq(irq, asserted);
        }
    }
}
