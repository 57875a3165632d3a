namespace Nestor.Machine.Virtualization;

/// <summary>The VM-execution controls of VMX non-root operation that the model implements (Intel SDM Vol. 3C §25.6,
/// "VM-Execution Control Fields", and §26.1 for which instructions then exit). CPUID always exits, as on hardware.
/// The hypervisor's VMCS (<c>VmControlStructure</c>) owns these and installs them on VM entry.</summary>
public sealed class ExecutionControls
{
    public bool HltExiting { get; set; }
    /// <summary>Pin-based "external-interrupt exiting" (SDM Vol. 3C §25.6.1): an interrupt the local APIC has for the
    /// CPU causes a VM exit (reason 1) instead of being delivered through the guest's IDT, whatever the guest's
    /// RFLAGS.IF (§26.2). The interrupt stays requested in the APIC ("acknowledge interrupt on exit" off); the VMM
    /// accepts and injects it (<see cref="VmExitAction.Inject"/> with <see cref="VmExit.ExternalInterrupt"/>).</summary>
    public bool ExternalInterruptExiting { get; set; }
    /// <summary>Primary processor-based "interrupt-window exiting" (SDM Vol. 3C §25.6.2, §26.7.5): a VM exit (reason 7)
    /// before the first instruction at which the guest accepts an interrupt (RFLAGS.IF = 1, no STI blocking). While it
    /// is set, an external-interrupt exit is not raised again for an interrupt the VMM already waits to inject.</summary>
    public bool InterruptWindowExiting { get; set; }
    /// <summary>"Unconditional I/O exiting": every IN, OUT, INS and OUTS exits.</summary>
    public bool IoExiting { get; set; }
    /// <summary>Every RDMSR and WRMSR exits (as with "use MSR bitmaps" off).</summary>
    public bool MsrExiting { get; set; }
    public bool Cr3LoadExiting { get; set; }
    public bool Cr3StoreExiting { get; set; }
    /// <summary>MOV to CR0 and CR4 exits (as with every bit set in the CR0 and CR4 guest/host masks).</summary>
    public bool Cr0Cr4WriteExiting { get; set; }
    /// <summary>INVLPG exits; so does INVPCID (SDM §26.1.3: INVPCID exits when "INVLPG exiting" is set).</summary>
    public bool InvlpgExiting { get; set; }
    public bool RdtscExiting { get; set; }
    /// <summary>Primary processor-based "MOV-DR exiting" (bit 23, SDM Vol. 3C §25.6.2): every MOV to or from DR0–DR7
    /// exits (reason 29, §26.1.3), after the checks that take priority over the exit (#GP above CPL 0, #UD for DR4/DR5
    /// with CR4.DE, the general-detect #DB: §26.1.1), so that a VMM can switch debug registers lazily.</summary>
    public bool MovDrExiting { get; set; }
    /// <summary>Bit n set: exception vector n exits instead of being delivered through the guest's IDT.</summary>
    public uint ExceptionBitmap { get; set; }
    /// <summary>"Enable EPT": guest-physical addresses are translated through the nested page table at
    /// <see cref="NestedRoot"/>.</summary>
    public bool NestedPaging { get; set; }
    /// <summary>The host-physical address of the nested page table's top level (the EPTP's bits 51:12).</summary>
    public ulong NestedRoot { get; set; }

    public bool Intercepts(int vector) => vector < 32 && (ExceptionBitmap & (1u << vector)) != 0;
}
