using System.Diagnostics;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Machine.Architecture;
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
    private readonly ShadowPaging? shadow;
    private readonly bool largeNestedPages;

    /// <param name="nestedTable">The nested page table (nested paging), or null.</param>
    /// <param name="shadow">Shadow paging, or null.</param>
    /// <param name="largeNestedPages">Map guest RAM with 2 MiB nested pages where it can (else 4 KiB).</param>
    public HardwareAssistMonitor(Vm vm, VmControlStructure vmcs, GuestPhysicalMap physicalMap, NestedPageTable? nestedTable,
        ShadowPaging? shadow, bool largeNestedPages)
    {
        if ((nestedTable is null) == (shadow is null))
        {
            throw new ArgumentException("a hardware-assisted VMM uses either nested or shadow paging");
        }
        this.shadow = shadow;
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
        else
        {
            // Shadow paging: the VMM must see every page fault, CR3 load (and store: the guest must not see that the
            // hardware walks another table), paging-control change and INVLPG.
            c.ExceptionBitmap = 1u << (int)ExceptionVector.PageFault;
            c.Cr3LoadExiting = true;
            c.Cr3StoreExiting = true;
            c.Cr0Cr4WriteExiting = true;
            c.InvlpgExiting = true;
        }
    }

    public VmControlStructure Vmcs { get; }

    /// <summary>Shadow paging's counters, when it is in use.</summary>
    public ShadowPaging? Shadow => shadow;

    /// <summary>Why the VMM stopped the guest, when it did.</summary>
    public string? StopMessage { get; private set; }

    /// <summary>VM entry: the CPU enters non-root operation under this VMM's controls (with the shadow of the guest's
    /// address space installed, under shadow paging).</summary>
    public void Enter(Cpu cpu)
    {
        cpu.EnterNonRoot(Vmcs.Controls, this);
        shadow?.Activate(cpu);
    }

    public VmExitAction HandleExit(Cpu cpu, ref VmExit exit)
    {
        try
        {
            return Handle(cpu, ref exit);
        }
        catch (Exception e) when (e is ShadowPagingException or InvalidOperationException)
        {
            StopMessage = e.Message;
            return VmExitAction.Stop;
        }
    }

    private VmExitAction Handle(Cpu cpu, ref VmExit exit)
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
                action = shadow is not null && exit.Vector == ExceptionVector.PageFault ? shadow.PageFault(cpu, ref exit) : VmExitAction.Inject;
                reason = VmExitReason.Exception;
                break;
            case ExitReason.ControlRegisterAccess:
                {
                    int controlRegister = (int)(exit.Qualification & 15);
                    bool load = ((exit.Qualification >> 4) & 3) == 0;
                    ulong value = cpu.Registers[(int)((exit.Qualification >> 8) & 15)];
                    if (shadow is not null && load && controlRegister == 3)
                    {
                        shadow.SwitchAddressSpace(cpu, value);
                    }
                    else if (shadow is not null && load)
                    {
                        shadow.ControlRegisterWrite(cpu, controlRegister, value);
                    }
                    (action, reason) = (VmExitAction.Complete, VmExitReason.ControlRegisterAccess);
                    break;
                }
            case ExitReason.Invlpg:
                shadow?.Invalidate(exit.Qualification);
                (action, reason) = (VmExitAction.Complete, VmExitReason.Invlpg);
                break;
            case ExitReason.Invpcid:
                // Shadows stay coherent through write protection; the TLB flush is the instruction's own.
                (action, reason) = (VmExitAction.Complete, VmExitReason.Invpcid);
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
