using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Techniques.Memory;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.HardwareAssist;

/// <summary>Hardware assistance (VT-x style): the guest kernel runs unmodified at CPL 0 in non-root operation, and the
/// VMM sees the VM exits its VMCS asks for. HLT, port I/O and MSR accesses exit (SDM Vol. 3C §25.6.2: "HLT exiting",
/// "unconditional I/O exiting", MSR bitmaps off) and are completed against the VMM's devices and policies.</summary>
public sealed class HardwareAssistTechnique(VmControlStructure vmcs, IMemoryVirtualization memory) : VirtualizationTechnique(vmcs, memory)
{
    /// <inheritdoc/>
    public override Technique Kind => Technique.HardwareAssist;

    /// <inheritdoc/>
    public override void Configure(ExecutionControls controls)
    {
        base.Configure(controls);
        controls.HltExiting = true;
        controls.IoExiting = true;
        controls.MsrExiting = true;
    }

    /// <summary>HLT, I/O, MSR and RDTSC exits: the CPU completes the instruction against the VM's platform (the halt,
    /// the device bus, the MSR policy, the VMM's clock); the VMM accounts for it. INS and OUTS exit once per item, as
    /// VT-x does for a REP prefix (SDM Vol. 3C §26.1.3; the qualification's string and REP bits, Table 28-5, and the
    /// item's guest-linear address): completing one moves that item through the guest's translation (shadow or
    /// nested), the registers then being those of the next iteration.</summary>
    protected override VmExitAction Other(Cpu cpu, ref VmExit exit, out VmExitReason? reason)
    {
        switch (exit.Reason)
        {
            case ExitReason.IoInstruction:
                reason = null; // the device bus records it by port
                return VmExitAction.Complete;
            case ExitReason.Rdmsr:
                reason = VmExitReason.MsrRead;
                return VmExitAction.Complete;
            case ExitReason.Wrmsr:
                reason = VmExitReason.MsrWrite;
                return VmExitAction.Complete;
            case ExitReason.Hlt:
                reason = VmExitReason.Halt;
                return VmExitAction.Complete;
            case ExitReason.Rdtsc:
                reason = VmExitReason.Rdtsc;
                return VmExitAction.Complete;
            default:
                return base.Other(cpu, ref exit, out reason);
        }
    }
}
