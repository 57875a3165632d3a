namespace Nestor.Machine.Virtualization;

/// <summary>Basic VM-exit reasons the model raises, numbered as in Intel SDM Vol. 3C Appendix C ("VMX Basic Exit
/// Reasons"), so that a trace reads like the hardware's.</summary>
public enum ExitReason : ushort
{
    /// <summary>An exception whose bit is set in the exception bitmap.</summary>
    ExceptionOrNmi = 0,
    /// <summary>An external interrupt, with external-interrupt exiting on (SDM Vol. 3C §26.2).</summary>
    ExternalInterrupt = 1,
    TripleFault = 2,
    /// <summary>The guest can take an interrupt, with interrupt-window exiting on (SDM Vol. 3C §26.7.5).</summary>
    InterruptWindow = 7,
    Cpuid = 10,
    Hlt = 12,
    /// <summary>VMCALL: a hypercall (the paravirtual interface).</summary>
    Vmcall = 18,
    Invlpg = 14,
    Rdtsc = 16,
    /// <summary>MOV to or from a control register (qualification: SDM Table 28-3).</summary>
    ControlRegisterAccess = 28,
    /// <summary>MOV to or from a debug register, with MOV-DR exiting on (qualification: SDM Vol. 3C Table 28-4).</summary>
    DebugRegisterAccess = 29,
    /// <summary>IN, OUT, INS, OUTS (qualification: SDM Table 28-5).</summary>
    IoInstruction = 30,
    Rdmsr = 31,
    Wrmsr = 32,
    /// <summary>A guest-physical access the nested page table does not allow (qualification: SDM Table 28-7).</summary>
    EptViolation = 48,
    Invpcid = 58,
    /// <summary>Not a VT-x reason: a callout from binary-translated code into a software VMM (the model's number, above
    /// the SDM's).</summary>
    TranslatorCallout = 0x100,
}
