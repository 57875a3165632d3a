using System.Buffers.Binary;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.ServiceVm;

/// <summary>One entry of a grant table in its owner's memory, 8 bytes, the shape of Xen's version-1
/// <c>grant_entry</c> (xen/include/public/grant_table.h): u16 flags, u16 the domain granted, u32 the guest frame
/// number granted.</summary>
public readonly record struct GrantEntry(ushort Flags, ushort Domain, uint Frame)
{
    /// <summary>Size of an entry in bytes.</summary>
    public const int Size = 8;

    /// <summary>Flags bit 0: the entry grants access (Xen's GTF_permit_access).</summary>
    public const ushort PermitAccess = 1;

    /// <summary>Flags bit 1: the grantee may only read the frame (Xen's GTF_readonly is bit 2; the model keeps one
    /// type of grant and packs the bits).</summary>
    public const ushort ReadOnly = 2;
}

/// <summary>Why the VMM refused a grant.</summary>
public enum GrantRefusal
{
    /// <summary>The grant was honoured.</summary>
    None,
    /// <summary>The reference is past the table, or the domain has no table.</summary>
    NoSuchReference,
    /// <summary>The entry does not permit access.</summary>
    NotGranted,
    /// <summary>The entry grants the frame to another domain.</summary>
    OtherDomain,
    /// <summary>A write through a read-only grant.</summary>
    ReadOnly,
    /// <summary>The granted frame is not the owner's RAM, or the range runs past the frame.</summary>
    OutOfRange,
}

/// <summary>A domain's grant table (Xen's grant tables, "Xen and the Art of Virtualization" §3.2 and the Xen
/// interface manual): the table lives in its owner's memory, which grants a frame by writing an entry; the VMM reads
/// the entry each time the grantee asks for the frame, so a revoked grant (the owner clears the entry) is refused
/// from then on. The grantee never maps the table and never names a frame, only a reference: it reaches exactly the
/// frames granted to it, with the access granted.</summary>
public sealed class GrantTable(Vm owner)
{
    /// <summary>Largest table: one page of entries.</summary>
    public const uint MaximumEntries = 4096 / GrantEntry.Size;

    /// <summary>Guest-physical address of the table in the owner's memory, or null before GRANT_TABLE_SETUP.</summary>
    public ulong? Address { get; private set; }

    /// <summary>Entries in the table.</summary>
    public uint Entries { get; private set; }

    /// <summary>Sets the table's place; false (refused) for too many entries or a table not in the owner's RAM.</summary>
    public bool Setup(ulong address, ulong entries)
    {
        if (entries == 0 || entries > MaximumEntries || address % GrantEntry.Size != 0
            || !owner.Memory.IsRam(new GuestPhysical(address), entries * GrantEntry.Size))
        {
            return false;
        }
        (Address, Entries) = (address, (uint)entries);
        return true;
    }

    /// <summary>The entry of <paramref name="reference"/>, read from the owner's memory now.</summary>
    public GrantEntry? Read(uint reference)
    {
        if (Address is not { } table || reference >= Entries)
        {
            return null;
        }
        var bytes = owner.Memory.Span(new GuestPhysical(table + reference * (ulong)GrantEntry.Size), GrantEntry.Size);
        return new GrantEntry(BinaryPrimitives.ReadUInt16LittleEndian(bytes), BinaryPrimitives.ReadUInt16LittleEndian(bytes[2..]),
            BinaryPrimitives.ReadUInt32LittleEndian(bytes[4..]));
    }

    /// <summary>Checks that <paramref name="grantee"/> may reach bytes [<paramref name="offset"/>,
    /// offset+<paramref name="length"/>) of the frame granted by <paramref name="reference"/>, for a write if
    /// <paramref name="write"/>; gives the granted range's guest-physical address in the owner.</summary>
    public GrantRefusal Check(uint reference, ushort grantee, bool write, uint offset, uint length, out ulong address)
    {
        address = 0;
        if (Read(reference) is not { } entry)
        {
            return GrantRefusal.NoSuchReference;
        }
        if ((entry.Flags & GrantEntry.PermitAccess) == 0)
        {
            return GrantRefusal.NotGranted;
        }
        if (entry.Domain != grantee)
        {
            return GrantRefusal.OtherDomain;
        }
        if (write && (entry.Flags & GrantEntry.ReadOnly) != 0)
        {
            return GrantRefusal.ReadOnly;
        }
        ulong frame = (ulong)entry.Frame << 12;
        if (length == 0 || offset + (ulong)length > 4096 || !owner.Memory.IsRam(new GuestPhysical(frame), 4096))
        {
            return GrantRefusal.OutOfRange;
        }
        address = frame + offset;
        return GrantRefusal.None;
    }
}
