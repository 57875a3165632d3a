using Nestor.Machine.Architecture;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

public sealed partial class Cpu
{
    /// <summary>Delivers an exception or interrupt through the 64-bit IDT (Intel SDM Vol. 3A §6.14): read the gate,
    /// switch to the TSS stack on a privilege change (or to an IST stack), push SS, RSP, RFLAGS, CS, RIP and the
    /// error code, clear IF for an interrupt gate, enter the handler. A fault during delivery is handled as SDM Vol.
    /// 3A §6.15 "Interrupt 8—Double Fault Exception" (Tables 6-4 and 6-5) says: after a benign event (INT n, an
    /// external interrupt, #DB, #BP, #UD, …) it is delivered instead, serially; after a contributory exception (#DE,
    /// #TS, #NP, #SS, #GP, #CP) or a page fault it becomes a double fault, unless it is itself benign, or a page
    /// fault after a contributory exception; and a contributory exception or a page fault while delivering #DF shuts
    /// the CPU down (a triple fault), recorded in <see cref="ShutdownCause"/>. Returns false on shutdown.</summary>
    /// <param name="software">INT n: the gate's DPL is checked against the CPL (§6.12.1.1).</param>
    private bool Deliver(ExceptionVector vector, uint errorCode, bool hasErrorCode, ulong faultAddress, bool software, ulong returnRip) =>
        Deliver(vector, errorCode, hasErrorCode, faultAddress, software ? DeliveredEvent.SoftwareInterrupt : DeliveredEvent.Exception, returnRip);

    /// <summary>An external interrupt (the APIC's), saved RIP the current one.</summary>
    /// <summary>The exceptions of the fault class (SDM Vol. 3A Table 6-1): the saved RIP is the faulting instruction's.</summary>
    private static bool IsFault(ExceptionVector vector) => vector is ExceptionVector.DivideError or
        ExceptionVector.BoundRangeExceeded or ExceptionVector.InvalidOpcode or ExceptionVector.DeviceNotAvailable or
        ExceptionVector.InvalidTss or ExceptionVector.SegmentNotPresent or ExceptionVector.StackFault or
        ExceptionVector.GeneralProtection or ExceptionVector.PageFault or ExceptionVector.FloatingPointError or
        ExceptionVector.AlignmentCheck or ExceptionVector.SimdFloatingPoint or ExceptionVector.Virtualization or
        ExceptionVector.ControlProtection;

    private bool DeliverInterrupt(int vector) => Deliver((ExceptionVector)vector, 0, false, 0, DeliveredEvent.ExternalInterrupt, Rip);

    private bool Deliver(ExceptionVector vector, uint errorCode, bool hasErrorCode, ulong faultAddress, DeliveredEvent kind, ulong returnRip)
    {
        if (kind == DeliveredEvent.Exception && IsFault(vector))
        {
            // A fault saves RFLAGS with RF set, so that the faulting instruction, restarted by IRET, does not take an
            // instruction breakpoint again (SDM Vol. 3A §18.3.1.1); traps (#BP, #OF, single-step #DB) do not.
            Rflags |= FlagBits.Resume;
        }
        if (kind == DeliveredEvent.Exception)
        {
            // INT n and external interrupts have their own counters, whatever their vector (INT 8 is no #DF).
            Counters.Exception(vector);
            if (vector == ExceptionVector.PageFault)
            {
                Cr2 = faultAddress;
            }
        }
        if (deliveryDepth == 0)
        {
            // The event that may start a cascade: a struct, no allocation on this path.
            cascade = new ShutdownCause(vector, kind, hasErrorCode ? errorCode : null, kind == DeliveredEvent.ExternalInterrupt ? returnRip : instructionStart,
                vector == ExceptionVector.PageFault && kind == DeliveredEvent.Exception ? faultAddress : null, null, null);
        }
        deliveryDepth++;
        try
        {
            while (true)
            {
                try
                {
                    DeliverOnce((int)vector, errorCode, hasErrorCode, kind == DeliveredEvent.SoftwareInterrupt, returnRip);
                    return true;
                }
                catch (NestedPageFault fault)
                {
                    // The IDT, GDT, TSS or stack is not mapped in the nested table yet: the VMM maps it and the
                    // delivery starts over (the SDM's IDT-vectoring information re-injects the event).
                    var exit = fault.Exit;
                    exit.DuringDelivery = true;
                    if (exitHandler!.HandleExit(this, ref exit) is not (VmExitAction.Resume or VmExitAction.Complete or VmExitAction.Skip))
                    {
                        throw new VmmStop();
                    }
                }
                catch (GuestFault fault) when (nonRoot is { } controls && controls.Intercepts((int)fault.Vector))
                {
                    // An intercepted exception during delivery (a shadow page fault on the guest's stack, say): the
                    // VMM fixes it and the delivery starts over, or reflects it, and the guest sees a fault during
                    // delivery, below.
                    var exit = ExceptionExit(fault, duringDelivery: true);
                    switch (exitHandler!.HandleExit(this, ref exit))
                    {
                        case VmExitAction.Resume:
                        case VmExitAction.Complete:
                        case VmExitAction.Skip:
                            continue;
                        case VmExitAction.Inject:
                            throw new GuestFault(exit.Vector, exit.ErrorCode, exit.HasErrorCode, exit.GuestLinear);
                        default:
                            throw new VmmStop();
                    }
                }
            }
        }
        catch (GuestFault fault)
        {
            var first = kind == DeliveredEvent.Exception ? Classify(vector) : FaultClass.Benign; // INT n and INTR are benign
            var second = Classify(fault.Vector);
            // A selector error code raised during delivery has EXT (bit 0) set when the event was external to the
            // program: an interrupt or an earlier exception, not INT n, INT3 or INTO (SDM Vol. 3A §6.13; #BP and #OF
            // only ever come from INT3 and INTO here).
            bool external = kind == DeliveredEvent.ExternalInterrupt ||
                            (kind == DeliveredEvent.Exception && vector is not (ExceptionVector.Breakpoint or ExceptionVector.Overflow));
            uint code = fault.HasErrorCode && second != FaultClass.PageFault && external ? fault.ErrorCode | 1 : fault.ErrorCode;
            if (deliveryDepth == 1)
            {
                cascade = cascade with { DeliveryFault = fault.Vector, DeliveryErrorCode = fault.HasErrorCode ? code : null };
            }
            if (deliveryDepth > 4 || (first == FaultClass.DoubleFault && second != FaultClass.Benign))
            {
                ShutdownCause = cascade;
                return false; // triple fault
            }
            if (first == FaultClass.Benign || second == FaultClass.Benign ||
                (first == FaultClass.Contributory && second == FaultClass.PageFault))
            {
                // Handled serially: the second exception is delivered as a fault of the instruction (or, for an
                // external interrupt, at the interrupted RIP).
                ulong rip = kind == DeliveredEvent.ExternalInterrupt ? returnRip : instructionStart;
                return Deliver(fault.Vector, code, fault.HasErrorCode, fault.FaultAddress, DeliveredEvent.Exception, rip);
            }
            return Deliver(ExceptionVector.DoubleFault, 0, true, 0, DeliveredEvent.Exception, returnRip);
        }
        finally
        {
            deliveryDepth--;
        }
    }

    private enum FaultClass : byte
    {
        Benign,
        Contributory,
        PageFault,
        DoubleFault,
    }

    /// <summary>SDM Vol. 3A Table 6-4, "Interrupt and Exception Classes".</summary>
    private static FaultClass Classify(ExceptionVector vector) => vector switch
    {
        ExceptionVector.DivideError or ExceptionVector.InvalidTss or ExceptionVector.SegmentNotPresent or
            ExceptionVector.StackFault or ExceptionVector.GeneralProtection or ExceptionVector.ControlProtection => FaultClass.Contributory,
        ExceptionVector.PageFault or ExceptionVector.Virtualization => FaultClass.PageFault,
        ExceptionVector.DoubleFault => FaultClass.DoubleFault,
        _ => FaultClass.Benign,
    };

    private ShutdownCause cascade;

    /// <summary>Why the CPU last shut down (a triple fault): the event whose delivery started the cascade and the
    /// fault that delivery raised; null until it has.</summary>
    public ShutdownCause? ShutdownCause { get; private set; }

    /// <summary>Delivers vector <paramref name="vector"/> (0–255) with <paramref name="returnRip"/> as the saved RIP.</summary>
    private void DeliverOnce(int vector, uint errorCode, bool hasErrorCode, bool software, ulong returnRip)
    {
        if ((Efer & Architecture.Efer.LongModeActive) == 0)
        {
            DeliverLegacy(vector, errorCode, hasErrorCode, software, returnRip);
            return;
        }
        if ((ulong)vector * 16 + 15 > IdtLimit)
        {
            throw GuestFault.GeneralProtection((uint)(vector * 8 + 2));
        }
        ulong gateAddress = IdtBase + (ulong)vector * 16;
        ulong low = ReadSupervisor(gateAddress, 8), high = ReadSupervisor(gateAddress + 8, 8);
        int type = (int)((low >> 40) & 0xF);
        int gatePrivilege = (int)((low >> 45) & 3);
        bool present = ((low >> 47) & 1) != 0;
        if (!present || (type != 0xE && type != 0xF))
        {
            throw new GuestFault(present ? ExceptionVector.GeneralProtection : ExceptionVector.SegmentNotPresent, (uint)(vector * 8 + 2), true);
        }
        if (software && gatePrivilege < PrivilegeLevel)
        {
            throw GuestFault.GeneralProtection((uint)(vector * 8 + 2));
        }
        ushort selector = (ushort)(low >> 16);
        ulong target = (low & 0xFFFF) | ((low >> 32) & 0xFFFF_0000) | (high << 32);
        int ist = (int)((low >> 32) & 7);
        Segment code = LoadDescriptor(selector);
        int newPrivilege = code.PrivilegeLevel;
        ulong oldRsp = Registers[Rsp];
        ushort oldSs = Ss.Selector;
        ulong rsp = oldRsp;
        if (ist != 0)
        {
            rsp = ReadSupervisor(Tr.Base + 0x24 + (ulong)(ist - 1) * 8, 8);
        }
        else if (newPrivilege < PrivilegeLevel)
        {
            rsp = ReadSupervisor(Tr.Base + 4 + (ulong)newPrivilege * 8, 8);
        }
        rsp &= ~0xFUL;
        int oldPrivilege = PrivilegeLevel;
        ulong oldCs = Cs.Selector;
        ulong oldFlags = Rflags;
        // Push the frame with the new privilege's view of memory.
        Cs = code;
        Cs.Selector = (ushort)((selector & ~3) | newPrivilege);
        try
        {
            Push64(ref rsp, oldSs);
            Push64(ref rsp, oldRsp);
            Push64(ref rsp, oldFlags);
            Push64(ref rsp, oldCs);
            Push64(ref rsp, returnRip);
            if (hasErrorCode)
            {
                Push64(ref rsp, errorCode);
            }
        }
        catch (Exception e) when (e is GuestFault or NestedPageFault)
        {
            // Also for an EPT violation on the new stack (not mapped yet, or a frame shared copy-on-write): the
            // delivery is retried after the VMM's exit, and must start from the interrupted privilege, or the retry
            // would see CPL 0, skip the stack switch and save the handler's CS as the interrupted one.
            Cs.Selector = (ushort)oldCs;
            Cs = LoadDescriptorOrCurrent((ushort)oldCs, oldPrivilege);
            throw;
        }
        if (newPrivilege < oldPrivilege)
        {
            Ss = new Segment { Selector = (ushort)newPrivilege, Attributes = 0 };
        }
        Registers[Rsp] = rsp;
        Rflags &= ~(FlagBits.Trap | FlagBits.Nested | FlagBits.Resume |
                    FlagBits.Virtual8086);
        if (type == 0xE)
        {
            Rflags &= ~FlagBits.Interrupt;
        }
        Rip = target;
    }

    /// <summary>Delivery in 32-bit protected mode (SDM Vol. 3A §6.12.1): 8-byte interrupt and trap gates; on a change
    /// to an inner privilege level the new SS:ESP comes from the 32-bit TSS and the old SS and ESP are pushed first;
    /// then EFLAGS, CS, EIP and the error code, 4 bytes each. Task gates, 16-bit gates, virtual-8086 mode and real
    /// mode are not modelled.</summary>
    private void DeliverLegacy(int vector, uint errorCode, bool hasErrorCode, bool software, ulong returnRip)
    {
        if (RealMode)
        {
            DeliverRealMode(vector, returnRip); // through the IVT (Cpu.RealMode)
            return;
        }
        if ((ulong)vector * 8 + 7 > IdtLimit)
        {
            throw GuestFault.GeneralProtection((uint)(vector * 8 + 2));
        }
        ulong gate = ReadSupervisor(IdtBase + (ulong)vector * 8, 8);
        int type = (int)((gate >> 40) & 0xF);
        int gatePrivilege = (int)((gate >> 45) & 3);
        if (((gate >> 47) & 1) == 0)
        {
            throw new GuestFault(ExceptionVector.SegmentNotPresent, (uint)(vector * 8 + 2), true);
        }
        if (type != 0xE && type != 0xF)
        {
            RecordUnmodelled("task gate or 16-bit gate in the IDT", null);
            throw GuestFault.GeneralProtection((uint)(vector * 8 + 2));
        }
        if (software && gatePrivilege < PrivilegeLevel)
        {
            throw GuestFault.GeneralProtection((uint)(vector * 8 + 2));
        }
        ushort selector = (ushort)(gate >> 16);
        ulong target = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF_0000);
        Segment code = LoadDescriptor(selector);
        if ((code.Attributes & 0x18) != 0x18)
        {
            throw GuestFault.GeneralProtection((uint)(selector & ~3));
        }
        int oldPrivilege = PrivilegeLevel;
        int newPrivilege = (code.Attributes & 0x04) != 0 ? oldPrivilege : code.PrivilegeLevel;
        uint oldEsp = (uint)Registers[Rsp];
        ushort oldSs = Ss.Selector;
        uint esp = oldEsp;
        ushort newSs = oldSs;
        if (newPrivilege < oldPrivilege)
        {
            esp = (uint)ReadSupervisor(Tr.Base + 4 + (ulong)newPrivilege * 8, 4);
            newSs = (ushort)ReadSupervisor(Tr.Base + 8 + (ulong)newPrivilege * 8, 2);
        }
        ulong oldCs = Cs.Selector;
        ulong oldFlags = Rflags;
        Cs = code;
        Cs.Selector = (ushort)((selector & ~3) | newPrivilege);
        try
        {
            if (newPrivilege < oldPrivilege)
            {
                Push32(ref esp, oldSs);
                Push32(ref esp, oldEsp);
            }
            Push32(ref esp, (uint)oldFlags);
            Push32(ref esp, (uint)oldCs);
            Push32(ref esp, (uint)returnRip);
            if (hasErrorCode)
            {
                Push32(ref esp, errorCode);
            }
        }
        catch (Exception e) when (e is GuestFault or NestedPageFault) // as in 64-bit delivery above
        {
            Cs = LoadDescriptorOrCurrent((ushort)oldCs, oldPrivilege);
            throw;
        }
        if (newPrivilege < oldPrivilege)
        {
            Ss = LoadDescriptor(newSs);
        }
        Registers[Rsp] = esp;
        Rflags &= ~(FlagBits.Trap | FlagBits.Nested | FlagBits.Resume | FlagBits.Virtual8086);
        if (type == 0xE)
        {
            Rflags &= ~FlagBits.Interrupt;
        }
        Rip = target;
    }

    private void Push32(ref uint esp, ulong value)
    {
        esp -= 4;
        WriteLinear(esp, 4, value);
    }

    private Segment LoadDescriptorOrCurrent(ushort selector, int privilege)
    {
        var s = Cs;
        s.Selector = (ushort)((selector & ~3) | privilege);
        return s;
    }

    private void Push64(ref ulong rsp, ulong value)
    {
        rsp -= 8;
        WriteLinear(rsp, 8, value);
    }

    /// <summary>An implicit supervisor access (descriptor tables, TSS): allowed to supervisor pages whatever the CPL.</summary>
    private ulong ReadSupervisor(ulong linear, int size)
    {
        var saved = Cs.Selector;
        Cs.Selector &= 0xFFFC;
        try
        {
            return ReadLinear(linear, size);
        }
        finally
        {
            Cs.Selector = saved;
            if ((saved & 3) != 0)
            {
                // The read fast path may now hold a supervisor translation, which the interrupted CPL must not reuse.
                DropReadTranslations();
            }
        }
    }

    /// <summary>Reads a segment descriptor from the GDT (the LDT is not modelled).</summary>
    private Segment LoadDescriptor(ushort selector)
    {
        if ((selector & ~3) == 0)
        {
            return new Segment { Selector = selector };
        }
        if ((selector & 4) != 0 || (ulong)(selector & ~7) + 7 > GdtLimit)
        {
            throw GuestFault.GeneralProtection((uint)(selector & ~3));
        }
        ulong d = ReadSupervisor(GdtBase + (ulong)(selector & ~7), 8);
        if (((d >> 47) & 1) == 0)
        {
            throw new GuestFault(ExceptionVector.SegmentNotPresent, (uint)(selector & ~3), true);
        }
        uint limit = (uint)((d & 0xFFFF) | ((d >> 32) & 0xF_0000));
        if (((d >> 55) & 1) != 0)
        {
            limit = (limit << 12) | 0xFFF;
        }
        return new Segment
        {
            Selector = selector,
            Base = ((d >> 16) & 0xFF_FFFF) | ((d >> 32) & 0xFF00_0000),
            Limit = limit,
            Attributes = (ushort)((d >> 40) & 0xF0FF),
        };
    }
}
