using Nestor.Machine.Addresses;
using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

// VMX non-root operation (Intel SDM Vol. 3C chapters 25–28): while a VMM has entered a guest with
// EnterNonRoot, the instructions and exceptions its ExecutionControls name cause VM exits to the VMM's
// IVmExitHandler instead of (or before) executing, and guest-physical addresses go through the nested page table
// when it is on. Without EnterNonRoot the CPU is a bare machine and nothing here runs.
public sealed partial class Cpu
{
    private ExecutionControls? nonRoot;
    private IVmExitHandler? exitHandler;
    private RingCompression? ringCompression;
    private bool emulatingPrivileged;

    /// <summary>Ring compression by a software VMM, or null (bare metal, or hardware assistance).</summary>
    public RingCompression? RingCompression
    {
        get => ringCompression;
        set
        {
            ringCompression = value;
            translating = value is { Translated: true };
        }
    }

    // Binary translation is on: the run loop counts block entries (one flag test per instruction otherwise).
    private bool translating;

    private void CountTranslatedBranch(in Iced.Intel.Instruction instruction)
    {
        var rc = ringCompression!;
        rc.BlockEntries++;
        if (instruction.FlowControl is FlowControl.Return or FlowControl.IndirectBranch or FlowControl.IndirectCall)
        {
            rc.IndirectBranches++;
        }
    }

    private void CountTranslation(in Iced.Intel.Instruction instruction)
    {
        var rc = ringCompression!;
        rc.InstructionsTranslated++;
        if (instruction.FlowControl != FlowControl.Next)
        {
            rc.BlocksTranslated++;
        }
    }

    /// <summary>The privilege level the hardware enforces: the guest's CPL, except that a guest kernel under ring
    /// compression runs in ring 1 (unless the VMM is emulating its instruction, or translated it into a callout).</summary>
    private int HardwarePrivilegeLevel =>
        ringCompression is { Translated: false } rc && !emulatingPrivileged && PrivilegeLevel == 0 ? rc.KernelRing : PrivilegeLevel;

    /// <summary>Ring compression's view for a privileged or sensitive instruction of kernel code: true when it runs
    /// directly in ring 1 (its outcome is ring 1's); under binary translation it is counted as a callout instead.</summary>
    private bool DeprivilegedKernel(bool sensitiveOnly)
    {
        if (ringCompression is not { } rc || PrivilegeLevel != 0 || emulatingPrivileged)
        {
            return false;
        }
        if (rc.Translated)
        {
            rc.Callouts++;
            return false;
        }
        if (sensitiveOnly)
        {
            rc.UncaughtSensitive++;
        }
        return true;
    }

    /// <summary>For a trap-and-emulate VMM: executes the guest kernel's instruction at RIP as bare metal would at CPL 0
    /// (the #GP it raised in ring 1 was the trap), and returns the exception it raises then, if any (not delivered; RIP
    /// stays at the instruction).</summary>
    public GuestException? EmulatePrivileged()
    {
        emulatingPrivileged = true;
        try
        {
            return EmulateOne();
        }
        finally
        {
            emulatingPrivileged = false;
        }
    }

    /// <summary>For a trap-and-emulate VMM curing a fault that its emulation of a privileged instruction met (a page
    /// the shadow keeps read-only): while the scope lasts, the memory virtualization's own emulation of that
    /// instruction (<see cref="EmulateWithWriteAccess"/>) runs it at CPL 0 as well. Without it that emulation runs the
    /// instruction in ring 1, where it traps again (REP INSW: CPL &gt; IOPL, SDM Vol. 1 §19.5.1), and the #GP would be
    /// reflected into a guest that bare metal never gives one.</summary>
    public PrivilegedEmulationScope PrivilegedEmulation()
    {
        bool was = emulatingPrivileged;
        emulatingPrivileged = true;
        return new PrivilegedEmulationScope(this, was);
    }

    /// <summary>Ends <see cref="PrivilegedEmulation"/>: the previous state comes back.</summary>
    public readonly struct PrivilegedEmulationScope : IDisposable
    {
        private readonly Cpu cpu;
        private readonly bool previous;

        internal PrivilegedEmulationScope(Cpu cpu, bool previous) => (this.cpu, this.previous) = (cpu, previous);

        public void Dispose() => cpu.emulatingPrivileged = previous;
    }

    /// <summary>The execution controls while in VMX non-root operation, else null (a bare machine).</summary>
    public ExecutionControls? NonRootControls => nonRoot;

    /// <summary>VM entry: from now on the CPU runs the guest in non-root operation under <paramref name="controls"/>,
    /// and every VM exit goes to <paramref name="handler"/>.</summary>
    public void EnterNonRoot(ExecutionControls controls, IVmExitHandler handler)
    {
        nonRoot = controls;
        exitHandler = handler;
        Mmu.SetNestedPaging(controls.NestedPaging, new HostPhysical(controls.NestedRoot));
        RevalidateTranslations();
    }

    private StopReason? pendingStop;
    private bool writeOverride;
    private ulong writeOverrideLinearPage, writeOverrideHostPage;

    /// <summary>For a VMM emulating a guest instruction that writes a page its shadow page table keeps read-only (a
    /// guest page-table page): executes the one instruction at RIP, with its writes to the linear page of
    /// <paramref name="linear"/> going to the host-physical page <paramref name="hostPage"/> whatever the page tables
    /// say. The VMM's instruction emulator is the interpreter itself. Returns the exception the instruction raised
    /// instead, if any: nothing of it is delivered and RIP stays at the instruction.</summary>
    public GuestException? EmulateWithWriteAccess(ulong linear, ulong hostPage)
    {
        writeOverride = true;
        writeOverrideLinearPage = linear >> 12;
        writeOverrideHostPage = hostPage & ~0xFFFUL;
        try
        {
            return EmulateOne();
        }
        finally
        {
            writeOverride = false;
            DropWriteTranslations();
        }
    }

    /// <summary>Executes the one instruction at RIP for the VMM; its exception, if any, as data. An instruction binary
    /// translation turned into a callout runs as itself here (the VMM is the callout).</summary>
    private GuestException? EmulateOne()
    {
        RevalidateTranslations();
        instructionStart = Rip;
        try
        {
            var instruction = Fetch(Rip);
            if (instruction.Operation == FastOperation.Callout)
            {
                instruction.Operation = instruction.Original;
            }
            if (instruction.Operation != FastOperation.General)
            {
                ExecuteFast(ref instruction);
            }
            else if (Execute(in instruction.Instruction) is { } stop)
            {
                if (instruction.Class == (byte)InstructionClass.String && stringSuspension != StringSuspension.None)
                {
                    // A repeated string instruction (REP INS/OUTS of a ring-1 kernel) suspended between items: not
                    // retired, RIP at it; executed again it traps again and goes on from its registers.
                    pendingStop = TakeStringSuspension();
                    return null;
                }
                // An emulated OUT to the debug-exit port, or HLT: the run loop acts on it once the VMM is done.
                pendingStop = stop;
            }
            Counters.InstructionsRetired++;
            Counters.RetiredByClass[instruction.Class]++;
            return null;
        }
        catch (GuestFault fault)
        {
            Rip = instructionStart;
            return new GuestException(fault.Vector, fault.ErrorCode, fault.HasErrorCode, fault.FaultAddress);
        }
        finally
        {
            RevalidateTranslations();
            debugTraps = 0; // a VMM's emulation raises no debug trap (debugging a deprivileged guest is not modelled)
        }
    }

    /// <summary>For a VMM carrying out a guest's CR3 load (a paravirtual hypercall): what MOV to CR3 does.</summary>
    public void LoadCr3(ulong value)
    {
        Cr3 = value & ~(1UL << 63);
        Mmu.WriteCr3(value);
        RevalidateTranslations();
    }

    /// <summary>Binary translation's adaptive step (Adams &amp; Agesen §3.3): the instruction at <paramref name="linear"/>
    /// (already translated) becomes a callout into the VMM, so that it no longer traps. False when it is not in the
    /// translation cache.</summary>
    public bool MarkCallout(ulong linear)
    {
        if (Mmu.Translate(linear, Paging.AccessKind.Execute, PrivilegeLevel == 3, false, out ulong physical) is not null)
        {
            return false;
        }
        decodedPages.TryGetValue(physical >> 12, out var page);
        while (page is not null && (page.LinearPage != linear >> 12 || page.Bitness != Bitness))
        {
            page = page.Alias;
        }
        int slot = page?.Slots[linear & 0xFFF] ?? 0;
        if (slot <= 0)
        {
            return false;
        }
        ref var instruction = ref page!.Instructions[slot - 1];
        if (instruction.Operation != FastOperation.Callout)
        {
            instruction.Original = instruction.Operation;
            instruction.Operation = FastOperation.Callout;
        }
        return true;
    }

    /// <summary>The linear address the instruction at RIP writes, when its destination is memory (for a VMM emulating
    /// it); null otherwise.</summary>
    public ulong? DestinationAddress()
    {
        var instruction = Fetch(Rip).Instruction;
        return instruction.OpCount > 0 && instruction.GetOpKind(0) == OpKind.Memory ? EffectiveAddress(instruction) : null;
    }

    /// <summary>A callout from translated code: the VMM runs the instruction (or emulates it) instead.</summary>
    private void CalloutToVmm(ref DecodedInstruction d)
    {
        Rip = instructionStart;
        var exit = new VmExit { Reason = ExitReason.TranslatorCallout, InstructionLength = d.Instruction.Length, GuestLinear = Rip };
        var action = exitHandler!.HandleExit(this, ref exit);
        switch (action)
        {
            case VmExitAction.Skip:
                return;
            case VmExitAction.Resume:
                return;
            case VmExitAction.Complete:
                {
                    var own = d;
                    own.Operation = own.Original;
                    if (own.Operation != FastOperation.General)
                    {
                        ExecuteFast(ref own);
                    }
                    else
                    {
                        Rip = own.NextIp;
                        pendingStop = Execute(in own.Instruction);
                    }
                    return;
                }
            default:
                InjectOrStop(action, exit);
                return;
        }
    }

    /// <summary>Raised inside the model when the VMM's handler answered <see cref="VmExitAction.Stop"/>; unwinds to the
    /// run loop.</summary>
    private sealed class VmmStop : Exception;

    /// <summary>An instruction about to exit under the current controls (checked by the caller): the VM exit happens
    /// before the instruction does anything (SDM §26.1). Returns true when the instruction is over — the VMM emulated
    /// it, or re-enters at it, or injected an event — and false when it is to be carried out now (Complete).</summary>
    private bool ExitOnInstruction(ExitReason reason, ulong qualification, in Instruction i, ulong guestLinear = 0)
    {
        ulong next = Rip;
        Rip = instructionStart;
        var exit = new VmExit { Reason = reason, Qualification = qualification, InstructionLength = i.Length, GuestLinear = guestLinear };
        var action = exitHandler!.HandleExit(this, ref exit);
        switch (action)
        {
            case VmExitAction.Complete:
                Rip = next;
                return false;
            case VmExitAction.Skip:
                return true;
            case VmExitAction.Resume:
                Rip = instructionStart;
                return true;
            default:
                InjectOrStop(action, exit);
                return true;
        }
    }

    /// <summary>VM entry after an exit the VMM answered with <see cref="VmExitAction.Inject"/> (deliver the event;
    /// a triple fault shuts down) or <see cref="VmExitAction.Stop"/>.</summary>
    private void InjectOrStop(VmExitAction action, in VmExit exit)
    {
        if (action != VmExitAction.Inject)
        {
            throw new VmmStop();
        }
        if (exit.ExternalInterrupt)
        {
            if (DeliverExternalInterrupt((int)exit.Vector) is not null)
            {
                throw new ShutdownRequested();
            }
            return;
        }
        if (!Deliver(exit.Vector, exit.ErrorCode, exit.HasErrorCode, exit.GuestLinear, software: false, Rip))
        {
            throw new ShutdownRequested();
        }
    }

    /// <summary>Between instructions in non-root operation with external-interrupt or interrupt-window exiting: an
    /// interrupt-window exit when the guest accepts an interrupt now and the VMM asked for the window (SDM Vol. 3C
    /// §26.7.5), else an external-interrupt exit when the APIC has an interrupt for the CPU and the VMM is not already
    /// waiting for a window to inject one (§26.2). The VMM answers with Inject (an external interrupt: delivered
    /// through the guest's IDT now, the event injection of §26.6) or Resume.</summary>
    private StopReason? InterruptExit(ExecutionControls controls)
    {
        ExitReason reason;
        if (controls.InterruptWindowExiting && InterruptWindowOpen)
        {
            reason = ExitReason.InterruptWindow;
        }
        else if (controls.ExternalInterruptExiting && !controls.InterruptWindowExiting && Apic.CanDeliver)
        {
            reason = ExitReason.ExternalInterrupt;
        }
        else
        {
            return null;
        }
        instructionStart = Rip;
        var exit = new VmExit { Reason = reason };
        var action = exitHandler!.HandleExit(this, ref exit);
        try
        {
            if (action is not (VmExitAction.Resume or VmExitAction.Skip or VmExitAction.Complete))
            {
                InjectOrStop(action, exit);
            }
        }
        catch (ShutdownRequested)
        {
            return StopReason.Shutdown;
        }
        return null;
    }

    /// <summary>Thrown when an injected event could not be delivered (triple fault).</summary>
    private sealed class ShutdownRequested : Exception;

    /// <summary>After an instruction faulted (an exception, or an EPT violation): the exit or the delivery, with the
    /// VMM's stop or a triple fault turned into the run's stop reason.</summary>
    private StopReason? HandleFault(GuestFault? fault, NestedPageFault? nestedFault)
    {
        try
        {
            if (fault is not null)
            {
                return RaiseException(fault) ? null : StopReason.Shutdown;
            }
            NestedPageFaultExit(nestedFault!);
            return null;
        }
        catch (VmmStop)
        {
            return StopReason.VmmStop;
        }
        catch (ShutdownRequested)
        {
            return StopReason.Shutdown;
        }
        finally
        {
            RevalidateTranslations();
        }
    }

    /// <summary>An exception raised by an instruction: a VM exit when the exception bitmap names it, else delivery
    /// through the guest's IDT. Returns false on shutdown.</summary>
    private bool RaiseException(GuestFault fault)
    {
        if (nonRoot is { } controls && controls.Intercepts((int)fault.Vector))
        {
            var exit = ExceptionExit(fault, duringDelivery: false);
            switch (exitHandler!.HandleExit(this, ref exit))
            {
                case VmExitAction.Resume:
                case VmExitAction.Skip:
                case VmExitAction.Complete:
                    return true;
                case VmExitAction.Inject:
                    return Deliver(exit.Vector, exit.ErrorCode, exit.HasErrorCode, exit.GuestLinear, software: false, Rip);
                default:
                    throw new VmmStop();
            }
        }
        return Deliver(fault.Vector, fault.ErrorCode, fault.HasErrorCode, fault.FaultAddress, software: false, Rip);
    }

    /// <summary>An EPT violation: the VMM maps the guest-physical page (or emulates the access) and re-enters at the
    /// instruction, which is then executed again from the start.</summary>
    private void NestedPageFaultExit(NestedPageFault fault)
    {
        var exit = fault.Exit;
        var action = exitHandler!.HandleExit(this, ref exit);
        if (action is not (VmExitAction.Resume or VmExitAction.Skip or VmExitAction.Complete))
        {
            InjectOrStop(action, exit);
        }
    }

    /// <summary>The exit for an intercepted exception: for a page fault the qualification is the faulting linear
    /// address and CR2 is left alone (SDM §27.1: a #PF that exits does not load CR2).</summary>
    private static VmExit ExceptionExit(GuestFault fault, bool duringDelivery) => new()
    {
        Reason = ExitReason.ExceptionOrNmi,
        Vector = fault.Vector,
        ErrorCode = fault.ErrorCode,
        HasErrorCode = fault.HasErrorCode,
        Qualification = fault.Vector == ExceptionVector.PageFault ? fault.FaultAddress : 0,
        GuestLinear = fault.FaultAddress,
        DuringDelivery = duringDelivery,
    };

    /// <summary>Exit qualification of an I/O instruction (SDM Table 28-5).</summary>
    private static ulong IoQualification(ushort port, int size, bool input, bool immediate) =>
        (uint)(size - 1) | (input ? 1UL << 3 : 0) | (immediate ? 1UL << 6 : 0) | ((ulong)port << 16);

    /// <summary>Exit qualification of MOV to/from a control register (SDM Table 28-3).</summary>
    private static ulong ControlRegisterQualification(int controlRegister, bool readsControlRegister, Register general)
    {
        int gpr = general >= Register.RAX && general <= Register.R15 ? general - Register.RAX
            : general >= Register.EAX && general <= Register.R15D ? general - Register.EAX : 0;
        return (uint)controlRegister | (readsControlRegister ? 1UL << 4 : 0) | ((uint)gpr << 8);
    }
}
