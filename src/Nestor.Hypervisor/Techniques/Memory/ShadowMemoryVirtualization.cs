using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Architecture;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.Memory;

/// <summary>Shadow paging as the VMM's memory virtualization: the hardware walks shadow tables the VMM keeps in step
/// with the guest's (<see cref="ShadowPaging"/>), so the VMM must see every page fault, CR3 load, paging-control change
/// and INVLPG (Adams &amp; Agesen, "A Comparison of Software and Hardware Techniques for x86 Virtualization", §2.3).</summary>
public sealed class ShadowMemoryVirtualization(ShadowPaging shadow) : IMemoryVirtualization
{
    /// <inheritdoc/>
    public MemoryVirtualization Kind => MemoryVirtualization.Shadow;

    /// <inheritdoc/>
    public ShadowPaging Shadow { get; } = shadow;

    ShadowPaging? IMemoryVirtualization.Shadow => Shadow;

    /// <inheritdoc/>
    public NestedPageTable? NestedTable => null;

    /// <inheritdoc/>
    public void Configure(ExecutionControls controls, bool hardwareAssisted)
    {
        // #PF in the exception bitmap (SDM Vol. 3C §25.6.3), CR3-load, CR0/CR4 and INVLPG exiting (§25.6.2, §26.1.3).
        // CR3 stores exit under hardware assistance so that the guest never sees the shadow root; under the software
        // techniques MOV from CR3 traps at ring 1 anyway, and these hooks fire while the VMM emulates it.
        controls.ExceptionBitmap |= 1u << (int)ExceptionVector.PageFault;
        controls.Cr3LoadExiting = true;
        controls.Cr3StoreExiting = hardwareAssisted;
        controls.Cr0Cr4WriteExiting = true;
        controls.InvlpgExiting = true;
    }

    /// <inheritdoc/>
    public void Activate(Cpu cpu) => Shadow.Activate(cpu);

    /// <inheritdoc/>
    public VmExitAction PageFault(Cpu cpu, ref VmExit exit) => Shadow.PageFault(cpu, ref exit);

    /// <inheritdoc/>
    public void ControlRegisterWrite(Cpu cpu, int controlRegister, ulong value)
    {
        if (controlRegister == 3)
        {
            Shadow.SwitchAddressSpace(cpu, value);
        }
        else
        {
            Shadow.ControlRegisterWrite(cpu, controlRegister, value);
        }
    }

    /// <inheritdoc/>
    public void Invalidate(ulong linear) => Shadow.Invalidate(linear);

    /// <inheritdoc/>
    public VmExitAction NestedPageFault(Cpu cpu, ref VmExit exit) =>
        throw new InvalidOperationException("an EPT violation without nested paging");

    /// <inheritdoc/>
    public IReadOnlyList<string> Verify(Cpu cpu) => Shadow.Verify(cpu.Mmu.Controls);

    /// <inheritdoc/>
    public IEnumerable<EngineCounter> Counters(Cpu cpu)
    {
        var shadow = Shadow;
        yield return new EngineCounter("shadow_hidden_faults", (ulong)shadow.HiddenFaults, "");
        yield return new EngineCounter("shadow_true_faults", (ulong)shadow.TrueFaults, "");
        yield return new EngineCounter("shadow_page_table_writes", (ulong)shadow.PageTableWrites, "");
        yield return new EngineCounter("shadow_other_emulated_writes", (ulong)shadow.OtherEmulatedWrites, "");
        yield return new EngineCounter("shadow_address_space_switches", (ulong)shadow.AddressSpaceSwitches, "");
        yield return new EngineCounter("shadow_tables_created", (ulong)shadow.TablesCreated, "");
        yield return new EngineCounter("shadow_tables_alive", (ulong)shadow.TablesAlive, "");
        yield return new EngineCounter("shadow_resets", (ulong)shadow.Resets, "");
        yield return new EngineCounter("shadow_unshadowed_pages", (ulong)shadow.Unshadowed, "");
        yield return new EngineCounter("shadow_callout_writes", (ulong)shadow.CalloutWrites, "");
        yield return new EngineCounter("vmm_software_walks", (ulong)shadow.SoftwareWalks.Walks, "");
        yield return new EngineCounter("vmm_software_walk_references", (ulong)shadow.SoftwareWalks.WalkReferences, "");
    }
}
