namespace Nestor.Hypervisor.Techniques.Paravirtual;

/// <summary>The hypercalls of Nestor's paravirtual interface (docs/paravirt.md; the guest's names are the HC_ constants
/// of guest/include/nestoros.h): VMCALL with the number in RAX, arguments in RDI and RSI, the result in RAX.</summary>
public enum Hypercall : ulong
{
    /// <summary>Applies a batch of page-table writes: RDI the guest-physical address of {u64 entry_address, u64 value}[RSI].</summary>
    MmuUpdate = 1,
    /// <summary>Loads CR3 with RDI.</summary>
    SetCr3 = 2,
    /// <summary>Invalidates the translation of the linear address in RDI.</summary>
    Invlpg = 3,
    /// <summary>Writes the virtual CPU's state (descriptor tables, CR0...) to the guest-physical address in RDI.</summary>
    VcpuInfo = 4,
    /// <summary>Sets the virtual IF to RDI (0 or 1); returns the previous IF.</summary>
    SetInterrupts = 5,
    /// <summary>The page at guest-physical RDI is no longer one of the guest's page tables.</summary>
    ReleaseTable = 6,
    /// <summary>Returns 1 while the VMM holds an interrupt the guest's virtual IF keeps out, else 0.</summary>
    EventsPending = 7,
}
