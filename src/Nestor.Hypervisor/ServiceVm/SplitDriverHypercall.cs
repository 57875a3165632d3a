namespace Nestor.Hypervisor.ServiceVm;

/// <summary>The hypercalls of the split driver (docs/paravirt.md, "The service VM"), offered to both VMs of
/// <c>--service-vm</c> whatever the technique: VMCALL exits unconditionally in VMX non-root operation (Intel SDM Vol.
/// 3C §26.1.2), so a hardware-assisted guest reaches them as a paravirtual one does. Announced by CPUID leaf
/// 0x40000001 EAX bit 1 (<see cref="SplitDriverDomain.CpuidBit"/>). Number in RAX, arguments in RDI and RSI, the
/// result in RAX (all ones = refused).</summary>
public enum SplitDriverHypercall : ulong
{
    /// <summary>Xen's GNTTABOP_setup_table, reversed: the calling domain's grant table is the
    /// <see cref="GrantEntry"/> array at guest-physical RDI, RSI entries (at most <see cref="GrantTable.MaximumEntries"/>),
    /// which it then fills by plain memory writes.</summary>
    GrantTableSetup = 16,

    /// <summary>Xen's GNTTABOP_copy: one copy between the caller's memory and a frame the peer granted it, described
    /// by the <c>struct grant_copy</c> at guest-physical RDI (see <see cref="GrantCopy"/>). Returns 0, or all ones
    /// for a refused grant or bad arguments.</summary>
    GrantCopy = 17,

    /// <summary>Xen's EVTCHNOP_send: marks the peer's event channel RDI pending and ends the caller's turn where the
    /// engine next checks for a stop (a halt, a port write, a fault, the end of a slice). Returns 0.</summary>
    EventNotify = 18,

    /// <summary>Returns the caller's pending event channels as a bit mask and clears them (the EVENTS_PENDING path
    /// for a guest that polls instead of taking the channel's interrupt).</summary>
    EventTake = 19,
}
