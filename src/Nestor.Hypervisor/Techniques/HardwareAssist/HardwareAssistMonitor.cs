using System.Diagnostics;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Memory;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques.HardwareAssist;

/// <summary>How a hardware-assisted VMM virtualizes the guest's memory.</summary>
public enum MemoryVirtualization
{
    /// <summary>Shadow page tables the VMM keeps in step with the guest's (Adams &amp; Agesen's hardware VMM).</summary>
    Shadow,
    /// <summary>Nested (extended) page tables walked by the hardware: the 2-D walk.</summary>
    Nested,
}

/// <summary>A VMM built on hardware assistance (VT-x style): the guest kernel runs at CPL 0 in non-root operation,
/// and the VMM only sees the VM exits its <see cref="VmControlStructure"/> asks for. Port I/O, CPUID, MSRs and HLT are
/// completed against the VMM's devices and policies; EPT violations give guest pages their host frames on first touch
/// (nested paging).</summary>
public sealed class HardwareAssistMonitor : IVmExitHandler
{
    private readonly Vm vm;
    private readonly GuestPhysicalMap physicalMap;
    private readonly NestedPageTable? nestedTable;
    private readonly bool largeNestedPages;

    /// <param name="largeNestedPages">Map guest RAM with 2 MiB nested pages where it can (else 4 KiB).</param>
    public HardwareAssistMonitor(Vm vm, VmControlStructure vmcs, GuestPhysicalMap physicalMap, NestedPageTable? nestedTable, bool largeNestedPages)
    {
        this.vm = vm;
        Vmcs = vmcs;
        this.physicalMap = physicalMap;
        this.nestedTable = nestedTable;
        this.largeNestedPages = largeNestedPages;
        var c = vmcs.Controls;
        c.HltExiting = true;
        c.IoExiting = true;
        c.MsrExiting = true;
        if (nestedTable is not null)
        {
            c.NestedPaging = true;
            c.NestedRoot = nestedTable.Root;
        }
    }

    public VmControlStructure Vmcs { get; }

    public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
    {
        long start = Stopwatch.GetTimestamp();
        Vmcs.Record(exit);
        VmExitAction action;
        VmExitReason? reason;
        switch (exit.Reason)
        {
            case ExitReason.EptViolation:
                action = MapGuestPage(exit.GuestPhysical);
                reason = VmExitReason.NestedPageFault;
                break;
            case ExitReason.IoInstruction:
                // Completed through the device bus, which records it by port.
                return VmExitAction.Complete;
            case ExitReason.Cpuid:
                (action, reason) = (VmExitAction.Complete, VmExitReason.Cpuid);
                break;
            case ExitReason.Rdmsr:
                (action, reason) = (VmExitAction.Complete, VmExitReason.MsrRead);
                break;
            case ExitReason.Wrmsr:
                (action, reason) = (VmExitAction.Complete, VmExitReason.MsrWrite);
                break;
            case ExitReason.Hlt:
                (action, reason) = (VmExitAction.Complete, VmExitReason.Halt);
                break;
            case ExitReason.Rdtsc:
                (action, reason) = (VmExitAction.Complete, VmExitReason.Rdtsc);
                break;
            case ExitReason.ExceptionOrNmi:
                // Nothing intercepts exceptions yet but the bitmap would: reflect them to the guest.
                (action, reason) = (VmExitAction.Inject, VmExitReason.Exception);
                break;
            default:
                (action, reason) = (VmExitAction.Complete, VmExitReason.Other);
                break;
        }
        vm.Exits.Record(reason.Value, Stopwatch.GetTimestamp() - start);
        return action;
    }

    /// <summary>An EPT violation: guest RAM gets its host frame (a 2 MiB run when allowed and possible) and a nested
    /// entry; a guest-physical address that is not RAM is mapped into the device window, so its accesses reach the
    /// VM's devices. The guest then re-executes the access.</summary>
    private VmExitAction MapGuestPage(ulong guestPhysical)
    {
        var table = nestedTable ?? throw new InvalidOperationException("an EPT violation without nested paging");
        if (!physicalMap.IsRam(guestPhysical))
        {
            ulong page = guestPhysical & ~0xFFFUL;
            table.Map(page, PhysicalMemory.DeviceWindow | page, 12, Machine.Paging.NestedEntry.Read | Machine.Paging.NestedEntry.Write);
            return VmExitAction.Resume;
        }
        if (largeNestedPages && table.CanMapLarge(guestPhysical) && physicalMap.TouchLarge(guestPhysical, out ulong large))
        {
            table.Map(guestPhysical & ~0x1F_FFFFUL, large, 21);
            return VmExitAction.Resume;
        }
        table.Map(guestPhysical, physicalMap.Touch(guestPhysical), 12);
        return VmExitAction.Resume;
    }
}
