namespace Nestor.Hypervisor.Memory;

/// <summary>Where the bytes of guest pages are when they are not in the VM's own RAM (<see cref="GuestMemory"/>, each
/// page's <i>home</i>): the P2M gives a page's home memory back to the host kernel when the page is shared
/// copy-on-write (its bytes are in the shared host frame) or paged out to the host swap file, so that sharing and
/// swapping free real memory (Waldspurger, OSDI 2002, §3–4: the point of both is that the machine page is reused).
/// <see cref="GuestMemory"/> asks it before every VMM-side access (loaders, devices, snapshots, inspection), so that
/// the VMM sees what the guest sees.</summary>
internal interface IGuestPageSource
{
    /// <summary>Whether some page's home is released now (when not, <see cref="GuestMemory"/> asks nothing).</summary>
    bool AnyReleased { get; }

    /// <summary>Copies the bytes at <paramref name="guestPhysical"/> (all in one page) into
    /// <paramref name="destination"/> when that page's home does not hold them; false when it does (the caller reads
    /// the home). A page in the host swap file is read back into its home, and false returned.</summary>
    bool ReadReleased(ulong guestPhysical, Span<byte> destination);

    /// <summary>Makes the homes of the pages of [<paramref name="guestPhysical"/>, +<paramref name="length"/>) hold
    /// their bytes again, for a VMM access that may write them: a shared page gets a private copy in its home (the
    /// copy-on-write break a guest write would make), a swapped-out page is read back in.</summary>
    void BringHome(ulong guestPhysical, ulong length);
}
