using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.Memory;

/// <summary>How a VMM virtualizes the guest's memory: the VMCS controls it needs, the exits it handles (page faults,
/// control-register writes and INVLPG for shadow paging; EPT violations for nested paging), its verification and its
/// counters. The technique in use (<see cref="VirtualizationTechnique"/>) hands it those exits.</summary>
public interface IMemoryVirtualization
{
    /// <summary>Which memory virtualization this is.</summary>
    MemoryVirtualization Kind { get; }

    /// <summary>Shadow paging, when that is what this is; else null.</summary>
    ShadowPaging? Shadow { get; }

    /// <summary>The nested page table, when this is nested paging; else null.</summary>
    NestedPageTable? NestedTable { get; }

    /// <summary>Sets the execution controls this memory virtualization needs. <paramref name="hardwareAssisted"/> says
    /// whether the guest kernel runs in non-root operation at CPL 0 (else its privileged instructions trap anyway).</summary>
    void Configure(ExecutionControls controls, bool hardwareAssisted);

    /// <summary>At VM entry: installs the address space the hardware walks (the shadow of the guest's tables).</summary>
    void Activate(Cpu cpu);

    /// <summary>A page fault that reached the VMM (an exception exit with vector #PF, or one met while emulating).</summary>
    VmExitAction PageFault(Cpu cpu, ref VmExit exit);

    /// <summary>The guest loaded control register <paramref name="controlRegister"/> with <paramref name="value"/>.</summary>
    void ControlRegisterWrite(Cpu cpu, int controlRegister, ulong value);

    /// <summary>The guest invalidated the translation of <paramref name="linear"/> (INVLPG).</summary>
    void Invalidate(ulong linear);

    /// <summary>An EPT violation: the guest touched a guest-physical page with no nested mapping.</summary>
    VmExitAction NestedPageFault(Cpu cpu, ref VmExit exit);

    /// <summary>Checks the VMM's tables against what they must mirror; the problems found (none when coherent).</summary>
    IReadOnlyList<string> Verify(Cpu cpu);

    /// <summary>This memory virtualization's counters for the run's report.</summary>
    IEnumerable<EngineCounter> Counters(Cpu cpu);
}
