namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>A message-signalled interrupt in the compatibility format (SDM Vol. 3A §10.11.1, §10.11.2): a dword
/// write to 0xFEExxxxx whose address names the destination (bits 19:12 the APIC ID, bit 2 logical destination mode,
/// bit 3 redirection hint) and whose data names the vector (bits 7:0), the delivery mode (10:8) and the trigger mode
/// (bit 15), delivered on the VM's APIC bus the way the I/O APIC's messages are.</summary>
public static class MessageSignalledInterrupt
{
    /// <summary>Delivers the message; false when it is not an interrupt message (the address is not 0xFEExxxxx),
    /// asks for a delivery mode the model does not implement (only fixed and lowest priority), or no APIC took it.</summary>
    public static bool Deliver(IoApic ioApic, ulong address, uint data)
    {
        if ((address >> 20) != 0xFEE)
        {
            return false;
        }
        int mode = (int)((data >> 8) & 7);
        if (mode is not (0 or 1))
        {
            return false;
        }
        return ioApic.DeliverMessage((uint)((address >> 12) & 0xFF), (address & 4) != 0, mode == 1, (int)(data & 0xFF), (data & (1 << 15)) != 0);
    }
}
