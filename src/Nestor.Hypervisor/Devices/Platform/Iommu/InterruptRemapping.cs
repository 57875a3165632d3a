using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Platform.Iommu;

/// <summary>VT-d interrupt remapping (specification rev. 4, §5.1): an interrupt request in the remappable format
/// (address bit 4 set; the handle in address bits 19:5 and bit 2, plus the data's subhandle when SHV, bit 3, is set)
/// selects a 128-bit interrupt remapping table entry (§9.10) in guest memory — bit 0 present, bit 2 destination mode,
/// bit 4 trigger mode, bits 7:5 delivery mode, bit 15 IRTE mode (0 remapped), bits 23:16 vector, bits 63:32 destination
/// (xAPIC: the APIC ID in bits 47:40), high quadword source-ID (79:64), its qualifier (81:80) and validation type
/// (83:82) — which names the interrupt that reaches the local APICs. A request in the compatibility format passes
/// through only when GSTS.CFIS is set (§5.1.2.1).</summary>
public sealed class InterruptRemapping(GuestMemory memory, IoApic ioApic)
{
    /// <summary>Interrupts remapped through an IRTE and delivered.</summary>
    public long Remapped { get; private set; }

    /// <summary>Requests blocked: compatibility format with CFIS clear, index beyond the table, entry not present or
    /// not in remapped mode, source-ID not matching.</summary>
    public long Blocked { get; private set; }

    /// <summary>Delivers a request; <paramref name="source"/> is the requester's bus/device/function, or null when
    /// the requester is not identified (the I/O APIC here, as in QEMU, whose I/O APIC messages carry no requester ID),
    /// in which case the IRTE's source-ID is not verified.</summary>
    public bool Deliver(ulong address, uint data, ushort? source, bool enabled, bool compatibilityAllowed, ulong table, ulong tableRegister)
    {
        if (!enabled)
        {
            return MessageSignalledInterrupt.Deliver(ioApic, address, data);
        }
        if ((address & (1 << 4)) == 0)
        {
            if (compatibilityAllowed)
            {
                return MessageSignalledInterrupt.Deliver(ioApic, address, data);
            }
            Blocked++;
            return false;
        }
        uint index = (uint)((address >> 5) & 0x7FFF) | (uint)(((address >> 2) & 1) << 15);
        if ((address & (1 << 3)) != 0)
        {
            index += data & 0xFFFF; // SHV: the subhandle is added (§5.1.4.1)
        }
        ulong entries = 2UL << (int)(tableRegister & 0xF); // IRTA.S: 2^(S+1) entries
        bool extended = (tableRegister & (1 << 11)) != 0;  // IRTA.EIME: x2APIC destinations
        var at = new GuestPhysical((table & ~0xFFFUL) + (ulong)index * 16);
        if (index >= entries || !memory.IsRam(at, 16))
        {
            Blocked++;
            return false;
        }
        ulong low = memory.ReadUInt64(at), high = memory.ReadUInt64(at + 8);
        if ((low & 1) == 0 || (low & (1 << 15)) != 0 || !SourceMatches(high, source))
        {
            Blocked++;
            return false;
        }
        int mode = (int)((low >> 5) & 7);
        if (mode is not (0 or 1))
        {
            Blocked++;
            return false;
        }
        uint destination = extended ? (uint)(low >> 32) : (uint)((low >> 40) & 0xFF);
        bool delivered = ioApic.DeliverMessage(destination, (low & 4) != 0, mode == 1, (int)((low >> 16) & 0xFF), (low & 16) != 0);
        if (delivered)
        {
            Remapped++;
        }
        return delivered;
    }

    // §9.10 SVT: 00b no check; 01b the requester ID against SID under the SQ mask (SQ 00b all 16 bits, 01b-11b ignore
    // function bits 2, 2:1, 2:0); 10b the bus number range (SID 15:8 start, 7:0 end).
    private static bool SourceMatches(ulong high, ushort? source)
    {
        if (source is not { } requester)
        {
            return true;
        }
        ushort sid = (ushort)high;
        int qualifier = (int)((high >> 16) & 3);
        switch ((high >> 18) & 3)
        {
            case 1:
                ushort mask = qualifier switch { 0 => 0xFFFF, 1 => 0xFFFB, 2 => 0xFFF9, _ => 0xFFF8 };
                return (sid & mask) == (requester & mask);
            case 2:
                int bus = requester >> 8;
                return bus >= (sid >> 8) && bus <= (sid & 0xFF);
            default:
                return true;
        }
    }
}
