namespace Nestor.Machine.Processor;

/// <summary>What drives the processor's INTR pin: the PC's 8259A pair. The bootstrap processor's local APIC passes it
/// on through LINT0 programmed for ExtINT (SDM Vol. 3A §10.5.1), or the pin reaches the core directly when the APIC is
/// hardware-disabled (virtual wire, §10.4.3 and the MultiProcessor Specification §3.6.2.1). The vector comes from the
/// controller in the interrupt acknowledge cycle, not from the APIC's IRR.</summary>
public interface IExternalInterruptController
{
    /// <summary>INTR is asserted: the controller has an unmasked request above what it has in service.</summary>
    bool InterruptRequested { get; }

    /// <summary>The interrupt acknowledge cycle: the controller puts its request in service and returns its vector
    /// (a spurious vector when the request went away).</summary>
    int Acknowledge();
}
