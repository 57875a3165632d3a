using System.Diagnostics;
using Nestor.Hypervisor.Exits;
using Nestor.Hypervisor.Paging;
using Nestor.Hypervisor.Techniques.HardwareAssist;
using Nestor.Machine.Addresses;
using Nestor.Machine.Architecture;
using Nestor.Machine.Memory;
using Nestor.Machine.Processor;
using Nestor.Machine.Virtualization;

namespace Nestor.Hypervisor.Techniques;

/// <summary>How a hardware-assisted VMM virtualizes the guest's memory.</summary>
public enum MemoryVirtualization
{
    /// <summary>Shadow page tables the VMM keeps in step with the guest's (Adams &amp; Agesen's hardware VMM).</summary>
    Shadow,
    /// <summary>Nested (extended) page tables walked by the hardware: the 2-D walk.</summary>
    Nested,
}

/// <summary>The VMM: it owns the VM's memory virtualization (nested or shadow paging) and handles every event that
/// reaches it, under one of the techniques:
/// <list type="bullet">
/// <item>hardware assistance (VT-x style): the guest kernel runs at CPL 0 in non-root operation, and the VMM sees the
/// VM exits its <see cref="VmControlStructure"/> asks for; port I/O, CPUID, MSRs and HLT are completed against the VMM's
/// devices and policies, EPT violations give guest pages their host frames on first touch;</item>
/// <item>trap-and-emulate: the guest kernel runs in ring 1 (<see cref="RingCompression"/>); its privileged instructions
/// trap (#GP) and the VMM emulates them; every exception reaches the VMM first, as its own IDT is the real one. The
/// sensitive unprivileged instructions are not caught — the expected failure of the technique on x86;</item>
/// <item>binary translation: the same, but kernel code runs translated, its privileged and sensitive instructions
/// replaced by callouts, so nothing of it traps and nothing of it sees ring 1.</item>
/// </list>
/// The software techniques always use shadow paging. The same interception mechanism (the CPU model's execution
/// controls and exit handler) stands for the VMM owning the real IDT: for them an "exit" is a trap into the VMM.</summary>
public sealed class VirtualMachineMonitor : IVmExitHandler
{
    private readonly Vm vm;
    private readonly GuestPhysicalMap physicalMap;
    private readonly NestedPageTable? nestedTable;
    private readonly ShadowPaging? shadow;
    private readonly bool largeNestedPages;
    private readonly Technique technique;

    /// <param name="nestedTable">The nested page table (nested paging), or null.</param>
    /// <param name="shadow">Shadow paging, or null.</param>
    /// <param name="largeNestedPages">Map guest RAM with 2 MiB nested pages where it can (else 4 KiB).</param>
    public VirtualMachineMonitor(Vm vm, VmControlStructure vmcs, GuestPhysicalMap physicalMap, NestedPageTable? nestedTable,
        ShadowPaging? shadow, bool largeNestedPages, Technique technique = Technique.HardwareAssist)
    {
        if ((nestedTable is null) == (shadow is null))
        {
            throw new ArgumentException("a VMM uses either nested or shadow paging");
        }
        if (technique != Technique.HardwareAssist && shadow is null)
        {
            throw new ArgumentException("a VMM without hardware assistance needs shadow paging: nested paging is hardware");
        }
        this.technique = technique;
        this.shadow = shadow;
        this.vm = vm;
        Vmcs = vmcs;
        this.physicalMap = physicalMap;
        this.nestedTable = nestedTable;
        this.largeNestedPages = largeNestedPages;
        var c = vmcs.Controls;
        if (technique == Technique.HardwareAssist)
        {
            c.HltExiting = true;
            c.IoExiting = true;
            c.MsrExiting = true;
        }
        else
        {
            // Ring compression: privileged instructions of the ring-1 kernel raise #GP, which the VMM takes.
            c.ExceptionBitmap = 1u << (int)ExceptionVector.GeneralProtection;
        }
        if (nestedTable is not null)
        {
            c.NestedPaging = true;
            c.NestedRoot = nestedTable.Root;
        }
        else
        {
            // Shadow paging: the VMM must see every page fault, CR3 load (and store: the guest must not see that the
            // hardware walks another table), paging-control change and INVLPG. Under the software techniques the CR
            // and INVLPG hooks fire while the VMM emulates the trapped instruction.
            c.ExceptionBitmap |= 1u << (int)ExceptionVector.PageFault;
            c.Cr3LoadExiting = true;
            c.Cr3StoreExiting = technique == Technique.HardwareAssist;
            c.Cr0Cr4WriteExiting = true;
            c.InvlpgExiting = true;
        }
        // Interrupts: under hardware assistance the pin-based control makes every external interrupt exit; under the
        // software techniques the VMM's own IDT is the real one, so an interrupt reaches the VMM first as well (the
        // same control stands for that). Either way the VMM injects it when the guest can take it (InterruptExit).
        c.ExternalInterruptExiting = true;
        RingCompression = technique == Technique.HardwareAssist ? null
            : new RingCompression { Translated = technique == Technique.BinaryTranslation };
        // Hypercalls reach the VMM as VMCALL exits (the model's hypercall gate), which need no control.
    }

    /// <summary>The technique this VMM uses.</summary>
    public Technique Technique => technique;

    /// <summary>How the guest kernel is deprivileged (software techniques), else null.</summary>
    public RingCompression? RingCompression { get; }

    /// <summary>Privileged instructions of the ring-1 kernel that trapped and were emulated (trap-and-emulate).</summary>
    public long PrivilegedInstructionTraps { get; private set; }

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
        cpu.RingCompression = RingCompression;
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
                action = MapGuestPage(cpu, ref exit);
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
            case ExitReason.ExternalInterrupt:
            case ExitReason.InterruptWindow:
                action = InterruptExit(cpu, ref exit);
                reason = exit.Reason == ExitReason.ExternalInterrupt ? VmExitReason.ExternalInterrupt : VmExitReason.InterruptWindow;
                break;
            case ExitReason.Vmcall when technique == Technique.Paravirtual:
                Hypercalls++;
                action = Hypercall(cpu, exit.InstructionLength);
                reason = VmExitReason.Hypercall;
                break;
            case ExitReason.TranslatorCallout:
                Callouts++;
                action = shadow?.WriteCallout(cpu, ref exit) ?? VmExitAction.Complete;
                reason = VmExitReason.Callout;
                break;
            case ExitReason.ExceptionOrNmi:
                action = exit.Vector switch
                {
                    ExceptionVector.PageFault when shadow is not null => ShadowPageFault(cpu, ref exit),
                    ExceptionVector.GeneralProtection when RingCompression is not null && cpu.PrivilegeLevel == 0 => EmulatePrivileged(cpu, ref exit),
                    _ => VmExitAction.Inject,
                };
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

    /// <summary>External interrupts the VMM injected into the guest.</summary>
    public long InjectedInterrupts { get; private set; }

    /// <summary>Times the VMM held an interrupt because the guest could not take it, and asked for the window.</summary>
    public long InterruptWindowsRequested { get; private set; }

    /// <summary>True while the VMM holds an interrupt the guest cannot take yet (its virtual IF clear, or an STI
    /// shadow): the "pending" flag of Xen's event channels, which a paravirtual guest reads with hypercall 7.</summary>
    public bool InterruptPending => Vmcs.Controls.InterruptWindowExiting;

    /// <summary>An external-interrupt or interrupt-window exit. Under hardware assistance the guest can take the interrupt
    /// when its RFLAGS.IF is set and no STI blocks it (SDM Vol. 3C §26.7.5); under the software techniques the same
    /// test is on the guest kernel's virtual IF, which the VMM keeps in the guest's RFLAGS: CLI, STI and POPF of the
    /// ring-1 kernel trap and are emulated on it, binary translation turns them into callouts, and a paravirtual kernel
    /// sets it by hypercall (SET_INTERRUPTS). If the guest can take it, the VMM accepts the highest interrupt from the
    /// local APIC and injects it through the VM-entry interruption-information field (§26.6: type external interrupt);
    /// otherwise it asks for an interrupt window and the interrupt stays requested.</summary>
    private VmExitAction InterruptExit(Cpu cpu, ref VmExit exit)
    {
        var controls = Vmcs.Controls;
        controls.InterruptWindowExiting = false;
        if (!cpu.Apic.CanDeliver)
        {
            return VmExitAction.Resume; // taken back meanwhile (the TPR rose): the next request exits again
        }
        if (!cpu.InterruptWindowOpen)
        {
            controls.InterruptWindowExiting = true;
            InterruptWindowsRequested++;
            cpu.InterruptStateChanged();
            return VmExitAction.Resume;
        }
        exit.Vector = (ExceptionVector)cpu.Apic.Accept();
        exit.ExternalInterrupt = true;
        exit.HasErrorCode = false;
        exit.ErrorCode = 0;
        InjectedInterrupts++;
        return VmExitAction.Inject;
    }

    /// <summary>Hypercalls made by a paravirtual guest.</summary>
    public long Hypercalls { get; private set; }

    /// <summary>The paravirtual interface (docs/paravirt.md): the number in RAX, arguments in RDI and RSI, the result in
    /// RAX; the VMM carries the call out and the guest goes on after the VMCALL.</summary>
    private VmExitAction Hypercall(Cpu cpu, int instructionLength)
    {
        ulong number = cpu.Registers[0], a = cpu.Registers[7], b = cpu.Registers[6];
        ulong result = 0;
        switch (number)
        {
            case 1: // MMU_UPDATE: {u64 entry_address, u64 value}[b] at guest-physical a
                {
                    if (b > 512 || !physicalMap.IsRam(a) || !physicalMap.IsRam(a + b * 16 - 1))
                    {
                        result = ulong.MaxValue;
                        break;
                    }
                    var updates = new List<(ulong, ulong)>((int)b);
                    for (ulong k = 0; k < b; k++)
                    {
                        updates.Add((vm.Memory.ReadUInt64(new GuestPhysical(a + k * 16)), vm.Memory.ReadUInt64(new GuestPhysical(a + k * 16 + 8))));
                    }
                    result = (ulong)shadow!.ApplyGuestWrites(cpu, updates);
                    break;
                }
            case 2: // SET_CR3
                shadow!.SwitchAddressSpace(cpu, a);
                cpu.LoadCr3(a);
                break;
            case 3: // INVLPG
                shadow!.Invalidate(a);
                cpu.Mmu.InvalidatePage(new GuestVirtual(a));
                break;
            case 4: // VCPU_INFO: the virtual CPU as the guest kernel would see it on bare metal
                {
                    ulong[] info = [0, cpu.GdtLimit, cpu.GdtBase, cpu.IdtLimit, cpu.IdtBase, cpu.Ldtr.Selector, cpu.Tr.Selector, cpu.Cr0];
                    if (!physicalMap.IsRam(a) || !physicalMap.IsRam(a + 8 * 8 - 1))
                    {
                        result = ulong.MaxValue;
                        break;
                    }
                    for (int k = 0; k < info.Length; k++)
                    {
                        vm.Memory.WriteUInt64(new GuestPhysical(a + (ulong)k * 8), info[k]);
                    }
                    break;
                }
            case 6: // RELEASE_TABLE: the page at a is no longer one of the guest's page tables
                result = shadow!.Release(cpu, a) ? 1UL : 0;
                break;
            case 5: // SET_INTERRUPTS: IF := a, returns the previous IF
                result = (cpu.Rflags >> 9) & 1;
                cpu.Rflags = a != 0 ? cpu.Rflags | FlagBits.Interrupt : cpu.Rflags & ~FlagBits.Interrupt;
                break;
            case 7: // EVENTS_PENDING: 1 while the VMM holds an interrupt for the guest's virtual IF to allow
                result = InterruptPending ? 1UL : 0;
                break;
            default:
                result = ulong.MaxValue; // -1: no such hypercall
                break;
        }
        cpu.Registers[0] = result;
        cpu.Rip += (ulong)instructionLength;
        return VmExitAction.Skip;
    }

    private readonly Dictionary<ulong, int> hotPageTableWriters = [];

    /// <summary>Callouts from translated code that wrote page tables (binary translation).</summary>
    public long Callouts { get; private set; }

    /// <summary>Translated instructions turned into callouts because their page-table writes kept trapping.</summary>
    public long Retranslations { get; private set; }

    /// <summary>A page fault for shadow paging; under binary translation, an instruction of kernel code whose page-table
    /// writes trap twice is retranslated into a callout, so that its later writes do not trap (adaptive binary
    /// translation, Adams &amp; Agesen §3.3).</summary>
    private VmExitAction ShadowPageFault(Cpu cpu, ref VmExit exit)
    {
        ulong rip = cpu.Rip;
        long writes = shadow!.PageTableWrites;
        var action = shadow.PageFault(cpu, ref exit);
        if (technique == Technique.BinaryTranslation && shadow.PageTableWrites > writes && cpu.PrivilegeLevel == 0)
        {
            int count = hotPageTableWriters[rip] = hotPageTableWriters.GetValueOrDefault(rip) + 1;
            if (count == AdaptiveThreshold && cpu.MarkCallout(rip))
            {
                Retranslations++;
            }
        }
        return action;
    }

    private const int AdaptiveThreshold = 2;

    /// <summary>Adaptive binary translation's state: how often each kernel instruction's page-table writes trapped
    /// (for a snapshot; an instruction becomes a callout when its count reaches the threshold).</summary>
    public IReadOnlyDictionary<ulong, int> PageTableWriteTraps => hotPageTableWriters;

    /// <summary>Restores <see cref="PageTableWriteTraps"/> from a snapshot.</summary>
    public void RestorePageTableWriteTraps(IEnumerable<KeyValuePair<ulong, int>> counts)
    {
        hotPageTableWriters.Clear();
        foreach (var (rip, count) in counts)
        {
            hotPageTableWriters[rip] = count;
        }
    }

    /// <summary>A #GP from the ring-1 kernel: the trap of trap-and-emulate. The VMM emulates the instruction as bare
    /// metal would run it at CPL 0 (its emulator is the interpreter); a page fault the emulation meets is filled
    /// through shadow paging and the emulation retried, and an exception the instruction raises at CPL 0 too is the
    /// guest's own, injected.</summary>
    private VmExitAction EmulatePrivileged(Cpu cpu, ref VmExit exit)
    {
        PrivilegedInstructionTraps++;
        for (int attempt = 0; attempt < 8; attempt++)
        {
            if (cpu.EmulatePrivileged() is not { } raised)
            {
                return VmExitAction.Skip;
            }
            var fault = new VmExit
            {
                Reason = ExitReason.ExceptionOrNmi,
                Vector = raised.Vector,
                ErrorCode = raised.ErrorCode,
                HasErrorCode = raised.HasErrorCode,
                GuestLinear = raised.FaultAddress,
                Qualification = raised.FaultAddress,
            };
            var action = raised.Vector == ExceptionVector.PageFault && shadow is not null ? shadow.PageFault(cpu, ref fault) : VmExitAction.Inject;
            if (action != VmExitAction.Resume)
            {
                exit = fault;
                return action == VmExitAction.Skip ? VmExitAction.Skip : VmExitAction.Inject;
            }
        }
        throw new InvalidOperationException($"the VMM could not emulate the privileged instruction at rip=0x{cpu.Rip:x}");
    }

    /// <summary>An EPT violation: guest RAM gets its host frame (a 2 MiB run when allowed and possible) and a nested
    /// entry; a guest-physical address that is not RAM is mapped into the device window, readable and writable but
    /// not executable, so its data accesses reach the VM's devices. The guest then re-executes the access.
    /// An instruction fetch from an address with no RAM behind it cannot be satisfied by any mapping: the bare machine
    /// raises a machine check there (the model has no bytes to decode from a device, <c>Cpu.DecodeSlow</c>), so the
    /// VMM injects the same #MC instead of mapping the page again, which would re-fault forever.
    /// A violation that recurs at the same instruction and address without the guest making progress means the VMM's
    /// mapping did not cure it: the VM is stopped with that message rather than spinning, unseen by --timeout.</summary>
    private VmExitAction MapGuestPage(Cpu cpu, ref VmExit exit)
    {
        var table = nestedTable ?? throw new InvalidOperationException("an EPT violation without nested paging");
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
            table.Map(page, PhysicalMemory.DeviceWindow | page, 12, Machine.Paging.NestedEntry.Read | Machine.Paging.NestedEntry.Write);
            return VmExitAction.Resume;
        }
        if (largeNestedPages && table.CanMapLarge(guestPhysical) && physicalMap.TouchLarge(guestPhysical, out ulong large))
        {
            table.Map(guestPhysical & ~0x1F_FFFFUL, large, 21);
            return VmExitAction.Resume;
        }
        // A write to a shared frame gets a private copy first; a shared frame is mapped read-only (copy-on-write).
        table.Map(guestPhysical, physicalMap.Touch(guestPhysical, write: (exit.Qualification & VmExit.QualificationWrite) != 0), 12,
            physicalMap.NestedPermissions(guestPhysical));
        return VmExitAction.Resume;
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
