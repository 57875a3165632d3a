namespace Nestor.Hypervisor.Exits;

/// <summary>Why the guest stopped running and control came back to the VMM (a VM exit), in the VMM's terms and
/// independent of the engine.</summary>
public enum VmExitReason
{
    /// <summary>IN/INS from an I/O port.</summary>
    PortRead,
    /// <summary>OUT/OUTS to an I/O port.</summary>
    PortWrite,
    /// <summary>A load from a guest-physical address that is not RAM.</summary>
    MmioRead,
    /// <summary>A store to a guest-physical address that is not RAM.</summary>
    MmioWrite,
    /// <summary>HLT.</summary>
    Halt,
    /// <summary>CPUID (always intercepted under hardware assist).</summary>
    Cpuid,
    /// <summary>RDMSR.</summary>
    MsrRead,
    /// <summary>WRMSR.</summary>
    MsrWrite,
    /// <summary>RDTSC or RDTSCP.</summary>
    Rdtsc,
    /// <summary>MOV to or from CR0, CR3 or CR4 (CR3 switches under shadow paging).</summary>
    ControlRegisterAccess,
    /// <summary>INVLPG.</summary>
    Invlpg,
    /// <summary>INVPCID.</summary>
    Invpcid,
    /// <summary>An exception the VMM intercepts (page faults under shadow paging).</summary>
    Exception,
    /// <summary>A guest-physical access the nested page table did not map yet (EPT violation).</summary>
    NestedPageFault,
    /// <summary>A hypercall from a paravirtual guest.</summary>
    Hypercall,
    /// <summary>A callout from binary-translated code.</summary>
    Callout,
    /// <summary>The vCPU shut down (triple fault).</summary>
    Shutdown,
    /// <summary>The engine could not execute or emulate an instruction, or deliver an event.</summary>
    InternalError,
    /// <summary>The hardware refused to enter the guest (invalid guest state).</summary>
    EntryFailure,
    /// <summary>The VMM interrupted the guest (timeout, Ctrl-C, a signal).</summary>
    Interrupted,
    /// <summary>A system event (reset, shutdown request, crash) from the engine.</summary>
    SystemEvent,
    /// <summary>Anything else.</summary>
    Other,
    /// <summary>An external interrupt for the guest reached the VMM (external-interrupt exiting, or the software VMM's
    /// own IDT).</summary>
    ExternalInterrupt,
    /// <summary>The guest became able to take the interrupt the VMM holds for it (interrupt-window exiting).</summary>
    InterruptWindow,
}
