using Iced.Intel;
using Nestor.Machine.Architecture;
using Nestor.Machine.Paging;
using Nestor.Machine.Virtualization;

namespace Nestor.Machine.Processor;

// String port I/O: INS and OUTS, with and without REP (SDM Vol. 2B "INS/INSB/INSW/INSD" and "OUTS/OUTSB/OUTSW/OUTSD").
public sealed partial class Cpu
{
    /// <summary>INSB/INSW/INSD and OUTSB/OUTSW/OUTSD. The port is DX; INS stores at ES:RDI (no segment override,
    /// SDM Vol. 2B INS), OUTS loads from DS:RSI (overridable); the address-size attribute (67h) chooses RDI/EDI/DI,
    /// RSI/ESI/SI and RCX/ECX/CX as for the other string instructions; RFLAGS.DF chooses the direction. The I/O
    /// privilege check (SDM Vol. 1 §19.3: CPL &gt; IOPL and no TSS I/O permission bitmap in the model, so #GP(0)) is
    /// made once, before any item moves. Each item is one access to the platform, exactly as IN or OUT makes it, so
    /// the exit statistics count items. In VMX non-root operation with I/O exiting, each item is one VM exit before it
    /// moves (SDM Vol. 3C §26.1.3: a REP-prefixed INS/OUTS exits on every iteration, the instruction being restarted
    /// with the registers of that iteration), its qualification saying string and REP (Table 28-5) and its
    /// guest-linear address field the item's linear address (§28.2.5). A REP form is suspended between items as the
    /// other string instructions are (a stop request, a deliverable interrupt, the slice).</summary>
    private StopReason? StringPortIo(in Instruction i)
    {
        var mnemonic = i.Mnemonic;
        bool input = mnemonic is Mnemonic.Insb or Mnemonic.Insw or Mnemonic.Insd;
        int size = mnemonic is Mnemonic.Insb or Mnemonic.Outsb ? 1 : mnemonic is Mnemonic.Insw or Mnemonic.Outsw ? 2 : 4;
        CheckIoPermission();
        ushort port = (ushort)Registers[Rdx];
        MatchIoBreakpoints(port, size); // an armed I/O breakpoint traps after the instruction (Cpu.Debug.cs)
        int addressSize = StringAddressSize(i);
        ulong mask = addressSize == 8 ? ulong.MaxValue : addressSize == 4 ? 0xFFFF_FFFFUL : 0xFFFFUL;
        ulong kept = addressSize == 2 ? ~0xFFFFUL : 0;
        // Only FS and GS have a base in 64-bit mode (SDM Vol. 3A §3.2.4); INS's ES cannot be overridden.
        ulong sourceBase = input ? 0 : i.MemorySegment == Register.FS ? Fs.Base : i.MemorySegment == Register.GS ? Gs.Base : 0;
        if (Bitness != 64)
        {
            sourceBase = input ? Es.Base : SegmentBase(i.MemorySegment); // every segment has a base (Cpu.RealMode)
        }
        ulong step = (Rflags & FlagBits.Direction) != 0 ? unchecked((ulong)-size) : (ulong)size;
        // F3 and F2 both repeat INS and OUTS (neither tests ZF), as F2 does MOVS.
        bool repeat = i.HasRepPrefix || i.HasRepePrefix || i.HasRepnePrefix;
        if (!repeat)
        {
            if (!PortItem(i, input, size, port, sourceBase, step, mask, kept, repeat: false))
            {
                return null;
            }
            return !input && platform.StopRequested ? StopReason.PlatformStop : null;
        }
        long iterations = 0;
        while ((Registers[Rcx] & mask) != 0)
        {
            if (!PortItem(i, input, size, port, sourceBase, step, mask, kept, repeat: true))
            {
                return null; // the VMM finished this iteration itself; RIP and the registers are as it left them
            }
            Registers[Rcx] = (Registers[Rcx] & kept) | ((Registers[Rcx] - 1) & mask);
            bool more = (Registers[Rcx] & mask) != 0;
            if (!input && platform.StopRequested)
            {
                // A write that ended the run (the debug-exit port): stop after this item, as OUT does.
                if (!more)
                {
                    return StopReason.PlatformStop; // the instruction is complete and retires
                }
                stringSuspension = StringSuspension.PlatformStop;
                Rip = instructionStart;
                return StopReason.Budget;
            }
            if ((++iterations & (watchingData ? 0 : RepeatCheckInterval - 1)) == 0 && more && SuspendString(iterations) is { } suspended)
            {
                return suspended;
            }
        }
        return null;
    }

    /// <summary>One item of INS or OUTS. False when a VM exit for it was handled by the VMM without the CPU
    /// completing the item (the VMM emulated it, re-entered at the instruction, or injected an event).</summary>
    private bool PortItem(in Instruction i, bool input, int size, ushort port, ulong sourceBase, ulong step, ulong mask, ulong kept, bool repeat)
    {
        ulong linear = sourceBase + ((input ? Registers[Rdi] : Registers[Rsi]) & mask); // for INS the base is ES's
        // The item's memory is translated before anything moves. For INS the store is checked before the port is
        // read: a device's read has side effects (the ATA data register advances its buffer), so a page fault on the
        // store must not lose the item; after the handler the iteration is made again with the same RDI and RCX.
        // Under a VMM the check also comes before the item's I/O exit, so a fault the VMM cures itself (a shadow
        // fill, an EPT violation) is taken first and each item exits once; the guest sees what it would see if the
        // VMM, emulating the item after the exit, had met the fault (SDM Vol. 3C §26.1.1 gives the exit priority).
        ProbeItem(linear, size, input ? AccessKind.Write : AccessKind.Read);
        if (nonRoot is { IoExiting: true })
        {
            ulong qualification = IoQualification(port, size, input, immediate: false) | StringQualification | (repeat ? RepQualification : 0);
            if (ExitOnInstruction(ExitReason.IoInstruction, qualification, i, linear))
            {
                return false;
            }
        }
        if (input)
        {
            Counters.PortReads++;
            WriteLinear(linear, size, platform.PortRead(port, size));
            ulong rdi = Registers[Rdi];
            Registers[Rdi] = (rdi & kept) | ((rdi + step) & mask);
        }
        else
        {
            ulong value = ReadLinear(linear, size);
            Counters.PortWrites++;
            platform.PortWrite(port, size, (uint)value);
            ulong rsi = Registers[Rsi];
            Registers[Rsi] = (rsi & kept) | ((rsi + step) & mask);
        }
        return true;
    }

    /// <summary>Translates the item's first and last byte for <paramref name="kind"/> (raising the page fault or the
    /// EPT violation the access would), unless the data fast path already holds its page.</summary>
    private void ProbeItem(ulong linear, int size, AccessKind kind)
    {
        bool crosses = (linear & 0xFFF) + (ulong)size > 0x1000;
        if (!crosses && TryProbeFast(linear, kind))
        {
            return;
        }
        Translate(linear, kind);
        if (crosses)
        {
            Translate(linear + (ulong)size - 1, kind);
        }
    }

    /// <summary>Exit qualification bit 4 of an I/O instruction: a string instruction (SDM Vol. 3C Table 28-5).</summary>
    private const ulong StringQualification = 1UL << 4;

    /// <summary>Exit qualification bit 5 of an I/O instruction: REP-prefixed (SDM Vol. 3C Table 28-5).</summary>
    private const ulong RepQualification = 1UL << 5;
}
