using Nestor.Hypervisor.Memory;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices;

/// <summary>How the VMM's emulated and paravirtual devices reach guest memory (their DMA): by guest-physical
/// address, only inside RAM. Every device write goes through here, so that an engine can keep what it caches about
/// guest memory right (<see cref="BeforeWrite"/>, <see cref="Written"/>): a DMA write does not pass through the
/// CPU model, so neither its decoded-instruction cache nor a copy-on-write sharing would otherwise see it. A device
/// of the assigned kind does not use this: its DMA goes through the IOMMU's remapping to host-physical memory.</summary>
public sealed class GuestDma(GuestMemory memory)
{
    /// <summary>Called before a read with its guest-physical range: an engine brings host-swapped pages back there.</summary>
    public Action<GuestPhysical, int>? BeforeRead { get; set; }

    /// <summary>Called before a write with its guest-physical range: an engine makes shared frames private there.</summary>
    public Action<GuestPhysical, int>? BeforeWrite { get; set; }

    /// <summary>Called after a write with its guest-physical range: an engine drops what it derived from those bytes
    /// (decoded instructions).</summary>
    public Action<GuestPhysical, int>? Written { get; set; }

    /// <summary>Bytes devices read from guest memory.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Bytes devices wrote to guest memory.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>Accesses refused because they were not entirely inside RAM.</summary>
    public long Refused { get; private set; }

    /// <summary>Copies guest memory at <paramref name="address"/> into <paramref name="destination"/>; false (and
    /// nothing copied) when the range is not entirely RAM, which the device reports to the guest as an error.</summary>
    public bool TryRead(GuestPhysical address, Span<byte> destination)
    {
        if (!memory.IsRam(address, (ulong)destination.Length))
        {
            Refused++;
            return false;
        }
        BeforeRead?.Invoke(address, destination.Length);
        // Through the P2M: a shared page's bytes are in its shared frame (its home memory was given back), and a read
        // leaves it shared; a page in the host swap file was read back in by BeforeRead (or is, here).
        memory.Read(address, destination);
        BytesRead += destination.Length;
        return true;
    }

    /// <summary>Copies <paramref name="source"/> into guest memory at <paramref name="address"/>; false (and nothing
    /// written) when the range is not entirely RAM.</summary>
    public bool TryWrite(GuestPhysical address, ReadOnlySpan<byte> source)
    {
        if (!memory.IsRam(address, (ulong)source.Length))
        {
            Refused++;
            return false;
        }
        BeforeWrite?.Invoke(address, source.Length);
        // Span makes every page of the range the VM's own first (a shared page's copy-on-write break, a swapped page
        // read in), where BeforeWrite has not already.
        source.CopyTo(memory.Span(address, source.Length));
        BytesWritten += source.Length;
        Written?.Invoke(address, source.Length);
        return true;
    }
}
