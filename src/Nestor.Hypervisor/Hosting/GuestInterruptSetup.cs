using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Hosting;

/// <summary>What the small ring-0 guests that take an interrupt (the built-in ticker's local APIC timer, the tests'
/// device interrupts through the I/O APIC) all do first: one implementation, used by <see cref="WorkloadGuests"/> and
/// the tests.</summary>
internal static class GuestInterruptSetup
{
    /// <summary>Emits: a 64-bit interrupt gate (type 0xE, present, DPL 0, selector 8; SDM Vol. 3A §6.14.1) for
    /// <paramref name="vector"/> to <paramref name="handler"/> in the IDT at <paramref name="idt"/>, LIDT through
    /// the 10 bytes at <paramref name="scratch"/>, both 8259s masked (as an APIC kernel does, so that nothing arrives
    /// through them), and the local APIC whose base is in <paramref name="apic"/> software-enabled with spurious
    /// vector 0xFF (§10.9). <paramref name="maskPic"/> false leaves the 8259s alone (a guest that counts its port
    /// accesses). Clobbers RAX and RDI.</summary>
    public static void Emit(Assembler a, ulong idt, int vector, Label handler, ulong scratch, AssemblerRegister64 apic, bool maskPic = true)
    {
        a.mov(rdi, idt + (ulong)vector * 16);
        a.lea(rax, __[handler]);
        a.mov(__word_ptr[rdi], ax);
        a.mov(__word_ptr[rdi + 2], 0x08);
        a.mov(__word_ptr[rdi + 4], 0x8E00);
        a.shr(rax, 16);
        a.mov(__word_ptr[rdi + 6], ax);
        a.shr(rax, 16);
        a.mov(__dword_ptr[rdi + 8], eax);
        a.mov(__dword_ptr[rdi + 12], 0);
        a.mov(rdi, scratch);
        a.mov(__word_ptr[rdi], 0xFFF);
        a.mov(rax, idt);
        a.mov(__qword_ptr[rdi + 2], rax);
        a.lidt(__[rdi]);
        if (maskPic)
        {
            a.mov(al, 0xFF);
            a.@out(0x21, al);
            a.@out(0xA1, al);
        }
        a.mov(__dword_ptr[apic + 0xF0], 0x1FF);
    }

    /// <summary>Emits the routing of I/O APIC pin <paramref name="gsi"/> to the local APIC of ID 0: through the I/O
    /// APIC whose base is in <paramref name="ioApic"/> (IOREGSEL at +0, IOWIN at +0x10; 82093AA data sheet §3.2.4),
    /// the redirection entry's high dword (destination 0, physical) first, then its low dword
    /// <paramref name="low"/>: the vector and, if wanted, bit 15 for level-triggered; unmasked, fixed, active high.
    /// Writing the high half first means the pin is never unmasked toward a stale destination.</summary>
    public static void RouteIoApicPin(Assembler a, AssemblerRegister64 ioApic, int gsi, uint low)
    {
        a.mov(__dword_ptr[ioApic], 0x10 + 2 * gsi + 1);
        a.mov(__dword_ptr[ioApic + 0x10], 0);
        a.mov(__dword_ptr[ioApic], 0x10 + 2 * gsi);
        a.mov(__dword_ptr[ioApic + 0x10], low);
    }
}
