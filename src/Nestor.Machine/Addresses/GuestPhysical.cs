namespace Nestor.Machine.Addresses;

/// <summary>A guest-physical address (gPA): what the guest believes is a physical address. The VMM maps it to a
/// <see cref="HostPhysical"/> address (through a memory slot, a shadow or a nested page table).</summary>
public readonly record struct GuestPhysical(ulong Value) : IComparable<GuestPhysical>
{
    public static GuestPhysical operator +(GuestPhysical address, ulong offset) => new(address.Value + offset);

    public static ulong operator -(GuestPhysical end, GuestPhysical start) => end.Value - start.Value;

    public static bool operator <(GuestPhysical a, GuestPhysical b) => a.Value < b.Value;

    public static bool operator >(GuestPhysical a, GuestPhysical b) => a.Value > b.Value;

    public static bool operator <=(GuestPhysical a, GuestPhysical b) => a.Value <= b.Value;

    public static bool operator >=(GuestPhysical a, GuestPhysical b) => a.Value >= b.Value;

    public int CompareTo(GuestPhysical other) => Value.CompareTo(other.Value);

    public override string ToString() => $"gPA 0x{Value:x}";
}

/// <summary>A guest-virtual address (gVA): translated by the guest's own page tables to a <see cref="GuestPhysical"/>.</summary>
public readonly record struct GuestVirtual(ulong Value)
{
    public static GuestVirtual operator +(GuestVirtual address, ulong offset) => new(address.Value + offset);

    public override string ToString() => $"gVA 0x{Value:x}";
}

/// <summary>A host-physical address (hPA): a location in the memory the VMM owns.</summary>
public readonly record struct HostPhysical(ulong Value)
{
    public override string ToString() => $"hPA 0x{Value:x}";
}
