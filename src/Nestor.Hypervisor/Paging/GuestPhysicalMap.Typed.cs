using Nestor.Machine.Addresses;
using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Paging;

// The public face of the P2M speaks in typed addresses (docs/ARCHITECTURE.md: never a raw ulong for an address in a
// public API); the VMM's own paths, which run on every shadow fill and EPT violation, keep the internal ulong forms
// the typed ones wrap, as the machine's interpreter does with its MMU.
public sealed partial class GuestPhysicalMap
{
    /// <summary>Whether <paramref name="address"/> is guest RAM (else it is a device, or nothing).</summary>
    public bool IsRam(GuestPhysical address) => IsRam(address.Value);

    /// <summary>The host-physical address of <paramref name="address"/> if its page has a host frame.</summary>
    public bool TryHostPhysical(GuestPhysical address, out HostPhysical host)
    {
        bool mapped = TryHostPhysical(address.Value, out ulong raw);
        host = new HostPhysical(raw);
        return mapped;
    }

    /// <summary>Whether the page at <paramref name="address"/> is mapped to a write-protected (shared) frame.</summary>
    public bool IsWriteProtected(GuestPhysical address) => IsWriteProtected(address.Value);

    /// <summary>The EPT permissions a nested entry for <paramref name="address"/> may grant.</summary>
    public ulong NestedPermissions(GuestPhysical address) => NestedPermissions(address.Value);

    /// <summary>The host-physical address of guest RAM at <paramref name="address"/>, giving its page a host frame on
    /// first touch; with <paramref name="write"/>, a write-protected (shared) frame first gets a private copy.</summary>
    public HostPhysical Touch(GuestPhysical address, bool write = false) => new(Touch(address.Value, write));

    /// <summary>Gives the 2 MiB guest page around <paramref name="address"/> one aligned run of host frames (false when
    /// part of it is not RAM or some page of it has a frame already).</summary>
    public bool TouchLarge(GuestPhysical address, out HostPhysical hostLarge)
    {
        bool done = TouchLarge(address.Value, out ulong raw);
        hostLarge = new HostPhysical(raw);
        return done;
    }

    /// <summary>Takes the host frame away from the page at <paramref name="address"/>: the next access faults into the
    /// VMM, which gives it one again. False if it had none.</summary>
    public bool Unmap(GuestPhysical address) => Unmap(address.Value);

    /// <summary>Backs the page at <paramref name="address"/> with the host frame <paramref name="host"/>.</summary>
    public void Remap(GuestPhysical address, HostPhysical host) => Remap(address.Value, host.Value);

    /// <summary>Shares the frame behind <paramref name="source"/> with <paramref name="targetAddress"/> of
    /// <paramref name="target"/>, copy-on-write; returns the shared host frame.</summary>
    public HostPhysical Share(GuestPhysical source, GuestPhysicalMap target, GuestPhysical targetAddress) =>
        new(Share(source.Value, target, targetAddress.Value));

    /// <summary>The bytes of the host frame behind the page at <paramref name="address"/>.</summary>
    public Span<byte> PageContents(GuestPhysical address) => PageContents(address.Value);
}

public sealed partial class NestedPageTable
{
    /// <summary>The table's root (the EPT pointer's address), a host-physical frame.</summary>
    public HostPhysical Root => new(RootAddress);

    /// <summary>The leaf entry mapping <paramref name="address"/> and its page size, or 0.</summary>
    public ulong LeafEntry(GuestPhysical address, out int pageShift) => LeafEntry(address.Value, out pageShift);

    /// <summary>Removes the mapping of <paramref name="address"/> (a whole 2 MiB entry if it is one), with a nested-TLB
    /// shootdown. False if nothing mapped it.</summary>
    public bool Unmap(GuestPhysical address) => Unmap(address.Value);

    /// <summary>Makes the mapping of <paramref name="address"/> read-only, with a nested-TLB shootdown.</summary>
    public bool WriteProtect(GuestPhysical address) => WriteProtect(address.Value);

    /// <summary>Maps <paramref name="address"/> to <paramref name="host"/> with a page of 1 &lt;&lt;
    /// <paramref name="pageShift"/> bytes.</summary>
    public void Map(GuestPhysical address, HostPhysical host, int pageShift, ulong permissions = NestedEntry.ReadWriteExecute) =>
        Map(address.Value, host.Value, pageShift, permissions);

    /// <summary>Whether the 2 MiB page around <paramref name="address"/> can get one large entry.</summary>
    public bool CanMapLarge(GuestPhysical address) => CanMapLarge(address.Value);
}
