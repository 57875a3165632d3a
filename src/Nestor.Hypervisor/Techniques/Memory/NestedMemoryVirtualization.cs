using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Architecture;
using Nestor.Machine.Memory;
using Nestor.Machine.Paging;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.Memory;

/// <summary>Nested paging as the VMM's memory virtualization: the hardware walks the guest's own tables and then, for
/// every guest-physical address, the VMM's nested page table (EPT, Intel SDM Vol. 3C §29.3). The guest's page faults,
/// CR3 loads and INVLPGs are its own business; the VMM sees only EPT violations, which give guest pages their host
/// frames on first touch.</summary>
/// <param name="largePages">Map guest RAM with 2 MiB nested pages where it can (else 4 KiB).</param>
/// <param name="devices">The VM's devices: the pages of an assigned device's registers are mapped into the assigned
/// window (reached without exits), other device pages into the device window.</param>
public sealed class NestedMemoryVirtualization(NestedPageTable table, GuestPhysicalMap physicalMap, bool largePages, Devices.DeviceBus? devices = null)
    : IMemoryVirtualization
{
    /// <inheritdoc/>
    public MemoryVirtualization Kind => MemoryVirtualization.Nested;

    /// <inheritdoc/>
    public ShadowPaging? Shadow => null;

    /// <inheritdoc/>
    public NestedPageTable NestedTable { get; } = table;

    NestedPageTable? IMemoryVirtualization.NestedTable => NestedTable;

    /// <summary>Whether guest RAM is mapped with 2 MiB nested pages where possible.</summary>
    public bool LargePages { get; } = largePages;

    /// <inheritdoc/>
    public void Configure(ExecutionControls controls, bool hardwareAssisted)
    {
        // "Enable EPT" and the EPTP (SDM Vol. 3C §25.6.11); no #PF, CR3 or INVLPG exiting is needed.
        controls.NestedPaging = true;
        controls.NestedRoot = NestedTable.Root.Value; // the VMCS field is a raw EPTP, as the hardware holds it
    }

    /// <inheritdoc/>
    public void Activate(Cpu cpu)
    {
        // The nested root is in the controls the CPU entered with: nothing more to install.
    }

    /// <summary>The guest's own page faults are delivered through its IDT; one reaching the VMM is injected back.</summary>
    public VmExitAction PageFault(Cpu cpu, ref VmExit exit) => VmExitAction.Inject;

    /// <summary>The guest's control registers are its own under nested paging: nothing to follow.</summary>
    public void ControlRegisterWrite(Cpu cpu, int controlRegister, ulong value)
    {
    }

    /// <summary>The guest's INVLPG flushes its own translations; the nested table is unaffected.</summary>
    public void Invalidate(ulong linear)
    {
    }

    /// <summary>An EPT violation: guest RAM gets its host frame (a 2 MiB run when allowed and possible) and a nested
    /// entry; a guest-physical address that is not RAM is mapped into the device window, readable and writable but
    /// not executable, so its data accesses reach the VM's devices. The guest then re-executes the access.
    /// An instruction fetch from an address with no RAM behind it cannot be satisfied by any mapping: the bare machine
    /// raises a machine check there (the model has no bytes to decode from a device, <c>Cpu.DecodeSlow</c>), so the
    /// VMM injects the same #MC instead of mapping the page again, which would re-fault forever.
    /// A violation that recurs at the same instruction and address without the guest making progress means the VMM's
    /// mapping did not cure it: the VM is stopped with that message rather than spinning, unseen by --timeout.</summary>
    public VmExitAction NestedPageFault(Cpu cpu, ref VmExit exit)
    {
        ulong guestPhysical = exit.GuestPhysical;
        if (NoProgress(cpu, guestPhysical, exit.Qualification))
        {
            throw new InvalidOperationException(
                $"the guest's access to guest-physical 0x{guestPhysical:x} at rip=0x{cpu.Rip:x} keeps causing EPT violations " +
                $"after the VMM mapped it ({RepeatLimit} in a row without an instruction retiring)");
        }
        if (!physicalMap.IsRam(guestPhysical))
        {
            if ((exit.Qualification & VmExit.QualificationFetch) != 0)
            {
                exit.Vector = ExceptionVector.MachineCheck;
                exit.HasErrorCode = false;
                exit.ErrorCode = 0;
                return VmExitAction.Inject;
            }
            ulong page = guestPhysical & ~0xFFFUL;
            NestedTable.Map(page, Devices.Assigned.DeviceMapping.HostPhysical(devices, page), 12, NestedEntry.Read | NestedEntry.Write);
            return VmExitAction.Resume;
        }
        if (LargePages && NestedTable.CanMapLarge(guestPhysical) && physicalMap.TouchLarge(guestPhysical, out ulong large))
        {
            NestedTable.Map(guestPhysical & ~0x1F_FFFFUL, large, 21);
            return VmExitAction.Resume;
        }
        // A write to a shared frame gets a private copy first; a shared frame is mapped read-only (copy-on-write).
        NestedTable.Map(guestPhysical, physicalMap.Touch(guestPhysical, write: (exit.Qualification & VmExit.QualificationWrite) != 0), 12,
            physicalMap.NestedPermissions(guestPhysical));
        return VmExitAction.Resume;
    }

    /// <summary>The nested table mirrors no guest table (it is filled on demand from the P2M), so there is nothing to
    /// check against the guest's tables.</summary>
    public IReadOnlyList<string> Verify(Cpu cpu) => [];

    /// <inheritdoc/>
    public IEnumerable<EngineCounter> Counters(Cpu cpu)
    {
        var m = cpu.Mmu.Counters;
        yield return new EngineCounter("nested_tlb_hits", (ulong)m.NestedTlbHits, "");
        yield return new EngineCounter("nested_tlb_misses", (ulong)m.NestedTlbMisses, "");
        yield return new EngineCounter("nested_walks", (ulong)m.NestedWalks, "");
        yield return new EngineCounter("nested_walk_references", (ulong)m.NestedWalkReferences, "");
        yield return new EngineCounter("nested_walk_cache_hits", (ulong)(m.NestedWalkCacheHits[0] + m.NestedWalkCacheHits[1] + m.NestedWalkCacheHits[2]), "");
        yield return new EngineCounter("nested_page_faults", (ulong)m.NestedPageFaults, "");
    }

    // The last EPT violation, to tell a cured one (the guest retires an instruction or faults elsewhere) from one
    // the mapping cannot cure. One access can legitimately fault a few times (its page-table pages, then the data page,
    // a page-crossing access on both pages), never dozens of times at the same address.
    private const int RepeatLimit = 64;
    private (ulong Rip, ulong Address, ulong Qualification, long Retired) lastViolation = (ulong.MaxValue, 0, 0, -1);
    private int repeatedViolations;

    private bool NoProgress(Cpu cpu, ulong guestPhysical, ulong qualification)
    {
        var current = (cpu.Rip, guestPhysical & ~0xFFFUL, qualification, cpu.Counters.InstructionsRetired);
        repeatedViolations = current == lastViolation ? repeatedViolations + 1 : 0;
        lastViolation = current;
        return repeatedViolations >= RepeatLimit;
    }
}
