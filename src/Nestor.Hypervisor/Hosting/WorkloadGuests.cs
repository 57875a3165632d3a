using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Hosting;

/// <summary>The consolidation experiment's small guests, assembled with Iced at run time like the other built-in
/// guests: <c>builtin:spin</c>, CPU-bound forever (its host ends it with a run limit), and <c>builtin:ticker</c>, a
/// latency-sensitive guest that sleeps in HLT between the interrupts of its local APIC timer (periodic, SDM Vol. 3A
/// §10.5.4), does a little work at each, and after a number of ticks prints its RESULT line (with its steal time as the
/// paravirtual steal-time port reports it) and exits through the debug-exit port.</summary>
public static class WorkloadGuests
{
    /// <summary>The timer period of the ticker: 1,000,000 cycles (1 ms at the default clock), NestorOS's own.</summary>
    public const uint TickerPeriod = 1_000_000;

    /// <summary>How many ticks the ticker waits for.</summary>
    public const int TickerTicks = 500;

    /// <summary>Loop iterations of work after each tick (about 2,000 instructions).</summary>
    public const int TickerWork = 1000;

    /// <summary>The guest named <paramref name="name"/>, or null if it is not one of these.</summary>
    public static KernelImageSource? Get(string name) => name switch
    {
        "spin" => GuestAssembler.Flat("built-in guest 'spin'", Spin()),
        "ticker" => GuestAssembler.Flat("built-in guest 'ticker'", Ticker()),
        _ => null,
    };

    /// <summary>An endless loop of ALU work in ring 0 (no exits, no I/O).</summary>
    public static byte[] Spin() => GuestAssembler.Assemble(a =>
    {
        var top = a.CreateLabel();
        a.xor(eax, eax);
        a.Label(ref top);
        a.add(rax, 3);
        a.xor(rax, 0x55);
        a.jmp(top);
    });

    /// <summary>The ticker: prints <c>RESULT ticker ticks=N steal_ns=S</c> and exits with status 0.</summary>
    public static byte[] Ticker() => GuestAssembler.Assemble(a =>
    {
        const ulong idt = 0x170000, scratch = 0x16F000, stack = 0x1F0000;
        var handler = a.CreateLabel();
        var wait = a.CreateLabel();
        var work = a.CreateLabel();
        var puts = a.CreateLabel();
        var putDecimal = a.CreateLabel();
        var head = a.CreateLabel();
        var stealText = a.CreateLabel();
        var done = a.CreateLabel();

        a.mov(rsp, stack);
        a.mov(rbx, 0xFEE00000UL);
        // IDT gate for vector 32, LIDT, 8259s masked, APIC on.
        GuestInterruptSetup.Emit(a, idt, 32, handler, scratch, rbx);
        a.mov(__dword_ptr[rbx + 0x3E0], 0xB);               // divide by 1
        a.mov(__dword_ptr[rbx + 0x320], 32 | (1 << 17));    // periodic, vector 32
        a.mov(__dword_ptr[rbx + 0x380], TickerPeriod);
        a.xor(r12d, r12d);                                   // ticks seen
        a.Label(ref wait);
        a.sti();
        a.hlt();                                             // sleeps until the timer
        a.cli();
        a.mov(ecx, TickerWork);
        a.Label(ref work);
        a.add(rax, rcx);
        a.dec(ecx);
        a.jnz(work);
        a.cmp(r12d, TickerTicks);
        a.jb(wait);
        // Done: stop the timer, print the line.
        a.mov(__dword_ptr[rbx + 0x380], 0);
        a.lea(rsi, __[head]);
        a.call(puts);
        a.mov(eax, r12d);
        a.call(putDecimal);
        a.lea(rsi, __[stealText]);
        a.call(puts);
        // Steal time, 64 bits, read high-low-high until the halves agree (docs/paravirt.md).
        var retry = a.CreateLabel();
        a.Label(ref retry);
        a.mov(dx, StealTimeDevice.Port + 4);
        a.@in(eax, dx);
        a.mov(r13d, eax);
        a.mov(dx, StealTimeDevice.Port);
        a.@in(eax, dx);
        a.mov(r14d, eax);
        a.mov(dx, StealTimeDevice.Port + 4);
        a.@in(eax, dx);
        a.cmp(eax, r13d);
        a.jne(retry);
        a.mov(rax, r13);
        a.shl(rax, 32);
        a.or(rax, r14);
        a.call(putDecimal);
        a.mov(al, (byte)'\n');
        a.mov(dx, Uart16550.Com1);
        a.@out(dx, al);
        a.Label(ref done);
        a.mov(dx, DebugExitPort.Port);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.jmp(done);

        // The timer's handler: count, EOI (SDM §10.8.5), return.
        a.Label(ref handler);
        a.inc(r12d);
        a.mov(__dword_ptr[rbx + 0xB0], 0);
        a.iretq();

        // puts: the NUL-terminated text at RSI to COM1.
        a.Label(ref puts);
        var next = a.CreateLabel();
        var end = a.CreateLabel();
        a.mov(dx, Uart16550.Com1);
        a.Label(ref next);
        a.lodsb();
        a.test(al, al);
        a.jz(end);
        a.@out(dx, al);
        a.jmp(next);
        a.Label(ref end);
        a.ret();

        // putDecimal: RAX in decimal to COM1.
        a.Label(ref putDecimal);
        var divide = a.CreateLabel();
        a.mov(rdi, scratch + 0x200); // digits are written backwards from here
        a.mov(ecx, 10);
        a.Label(ref divide);
        a.xor(edx, edx);
        a.div(rcx);
        a.add(dl, (byte)'0');
        a.dec(rdi);
        a.mov(__byte_ptr[rdi], dl);
        a.test(rax, rax);
        a.jnz(divide);
        a.mov(rsi, rdi);
        a.jmp(puts);

        a.Label(ref head);
        a.AsciiZ("RESULT ticker ticks=");
        a.Label(ref stealText);
        a.AsciiZ(" steal_ns=");
    });
}
