using Nestor.Machine.Paging;

namespace Nestor.Hypervisor.Paging;

/// <summary>What a shadow page table mirrors: the guest table at <paramref name="GuestFrame"/> (guest-physical) seen at
/// <paramref name="Level"/> with the rights <paramref name="Role"/> the levels above granted, or, when
/// <paramref name="Split"/>, the 4 KiB pieces of a guest large page starting at <paramref name="GuestFrame"/> (host
/// frames behind a guest large page need not be contiguous, so the shadow maps it page by page). Two paths that reach
/// one guest table with different rights get different shadows, as KVM's shadow-page "role" does.</summary>
public readonly record struct ShadowKey(ulong GuestFrame, int Level, TranslationRights Role, bool Split);

/// <summary>One shadow page table: a host frame whose entries mirror those of one guest page table, with guest-physical
/// addresses replaced by host-physical ones, and the links the VMM needs to keep it coherent.</summary>
public sealed class ShadowPageTable(ShadowKey key, ulong hostPhysical)
{
    public ShadowKey Key { get; } = key;

    /// <summary>Where the hardware reads it.</summary>
    public ulong HostPhysical { get; } = hostPhysical;

    /// <summary>The shadow entries that point to this table.</summary>
    internal List<(ShadowPageTable Table, int Index)> Parents { get; } = [];

    /// <summary>Upper levels: the shadow table each entry points to.</summary>
    internal ShadowPageTable?[] Children { get; } = new ShadowPageTable?[512];

    /// <summary>Page tables (level 3): the guest frame each entry maps, plus one (0 = none).</summary>
    internal ulong[] LeafFrames { get; } = new ulong[512];
}
