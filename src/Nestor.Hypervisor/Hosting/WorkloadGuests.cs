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
/// paravirtual steal-time port reports it) and exits through the debug-exit port; <c>builtin:smp-spin</c>, a guest of
/// several vCPUs (<see cref="SmpSpin"/>).</summary>
public static class WorkloadGuests
{
    /// <summary>The timer period of the ticker: 1,000,000 cycles (1 ms at the default clock), NestorOS's own.</summary>
    public const uint TickerPeriod = 1_000_000;

    /// <summary>How many ticks the ticker waits for.</summary>
    public const int TickerTicks = 500;

    /// <summary>Loop iterations of work after each tick (about 2,000 instructions).</summary>
    public const int TickerWork = 1000;

    /// <summary>Names accepted by <see cref="Get"/> (as <c>builtin:NAME</c> beside <see cref="BuiltIn.BuiltInGuests.Names"/>).</summary>
    public static IReadOnlyList<string> Names => ["spin", "ticker", "smp-spin"];

    /// <summary>The guest named <paramref name="name"/>, built for <paramref name="vcpus"/> processors where that
    /// matters (<c>smp-spin</c>), or null if it is not one of these.</summary>
    public static KernelImageSource? Get(string name, int vcpus = 1) => name switch
    {
        "spin" => GuestAssembler.Flat("built-in guest 'spin'", Spin()),
        "ticker" => GuestAssembler.Flat("built-in guest 'ticker'", Ticker()),
        "smp-spin" => GuestAssembler.Flat($"built-in guest 'smp-spin' for {vcpus} vCPU(s)", SmpSpin(vcpus)),
        _ => null,
    };

    /// <summary>Iterations of each vCPU's work in <c>smp-spin</c> (five instructions each).</summary>
    public const int SmpSpinIterations = 400_000;

    /// <summary>The multiprocessor workload, built for <paramref name="vcpus"/> processors (1 to
    /// <see cref="Configuration.VmConfig.MaximumCpus"/>): the BSP starts the APs as an SMP kernel does (INIT, SIPI,
    /// SIPI to all excluding self, Intel SDM Vol. 3A §8.4.4; <see cref="ApTrampoline"/>), every vCPU (the BSP too) does
    /// the same fixed CPU-bound work seeded by its APIC ID with interrupts off, timing it with RDTSC, stores its result
    /// and counts itself done with LOCK XADD; the BSP waits for all, prints <c>RESULT smp-spin vcpu=I sum=S cycles=C</c>
    /// per vCPU and <c>RESULT smp-spin vcpus=N total=T</c> (the sums added, computed by the guest), and exits with
    /// status 0 through the debug-exit port. A vCPU's sum depends on nothing but its ID, and its cycles on nothing but
    /// its own virtual time (its TSC), so a host's schedule, however it interleaves the vCPUs, changes neither.</summary>
    /// <param name="vcpus">The processors it starts and waits for.</param>
    /// <param name="iterations">Each vCPU's rounds of work (a huge number: CPU-bound until its host ends it).</param>
    public static byte[] SmpSpin(int vcpus, long iterations = SmpSpinIterations)
    {
        if (vcpus < 1 || vcpus > Configuration.VmConfig.MaximumCpus)
        {
            throw new ArgumentOutOfRangeException(nameof(vcpus), vcpus, "smp-spin runs on 1 to 16 vCPUs");
        }
        var low = ApTrampoline.LowMemory();
        return GuestAssembler.Assemble(a =>
        {
            const ulong scratch = 0x16F000, stack = 0x1F0000, apStacks = 0x300000;
            const ulong started = 0x5000, finished = 0x5008, sums = 0x5100, cycles = 0x5200;
            const uint apic = 0xFEE0_0000;
            var ap = a.CreateLabel();
            var work = a.CreateLabel();
            var puts = a.CreateLabel();
            var putDecimal = a.CreateLabel();
            var lowMemory = a.CreateLabel();
            var vcpuText = a.CreateLabel();
            var sumText = a.CreateLabel();
            var cyclesText = a.CreateLabel();
            var totalText = a.CreateLabel();
            var totalSumText = a.CreateLabel();
            a.mov(ecx, 0x1B);                                    // IA32_APIC_BASE: bit 8 is the BSP flag
            a.rdmsr();
            a.test(eax, 0x100);
            a.jz(ap);
            a.mov(rsp, stack);
            a.mov(__qword_ptr[(long)started], 0);
            a.mov(__qword_ptr[(long)finished], 0);
            if (vcpus > 1)
            {
                // The trampoline into low memory, the slots it reads, then INIT and two start-up IPIs (§8.4.4.1).
                a.lea(rsi, __[lowMemory]);
                a.mov(edi, (uint)ApTrampoline.Trampoline);
                a.mov(ecx, low.Length);
                a.rep.movsb();
                a.mov(rax, cr3);
                a.mov(__qword_ptr[(long)ApTrampoline.Cr3Slot], rax);
                a.lea(rax, __[ap]);
                a.mov(__qword_ptr[(long)ApTrampoline.EntrySlot], rax);
                a.mov(eax, apic + 0xF0);
                a.mov(__dword_ptr[rax], 0x1FF);                  // spurious vector register: APIC on
                a.mov(eax, apic + 0x300);
                a.mov(__dword_ptr[rax], 0x000C_4500);            // INIT, all excluding self
                a.mov(__dword_ptr[rax], 0x000C_4600 | ApTrampoline.StartupVector);
                a.mov(__dword_ptr[rax], 0x000C_4600 | ApTrampoline.StartupVector);
            }
            a.xor(ebx, ebx);                                     // the BSP's APIC ID
            a.call(work);
            var waitAll = a.CreateLabel();
            a.Label(ref waitAll);
            a.pause();
            a.cmp(__qword_ptr[(long)finished], vcpus);
            a.jne(waitAll);
            for (int i = 0; i < vcpus; i++)
            {
                a.lea(rsi, __[vcpuText]);
                a.call(puts);
                a.mov(eax, i);
                a.call(putDecimal);
                a.lea(rsi, __[sumText]);
                a.call(puts);
                a.mov(rax, __qword_ptr[(long)sums + i * 8]);
                a.call(putDecimal);
                a.lea(rsi, __[cyclesText]);
                a.call(puts);
                a.mov(rax, __qword_ptr[(long)cycles + i * 8]);
                a.call(putDecimal);
                a.mov(al, (byte)'\n');
                a.mov(dx, Uart16550.Com1);
                a.@out(dx, al);
            }
            a.lea(rsi, __[totalText]);
            a.call(puts);
            a.mov(eax, vcpus);
            a.call(putDecimal);
            a.lea(rsi, __[totalSumText]);
            a.call(puts);
            a.xor(eax, eax);
            for (int i = 0; i < vcpus; i++)
            {
                a.add(rax, __qword_ptr[(long)sums + i * 8]);
            }
            a.call(putDecimal);
            a.mov(al, (byte)'\n');
            a.mov(dx, Uart16550.Com1);
            a.@out(dx, al);
            var exit = a.CreateLabel();
            a.Label(ref exit);
            a.mov(dx, DebugExitPort.Port);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.jmp(exit);

            // An AP, in 64-bit mode from the trampoline: its APIC ID, a stack by it, the work, then halted for good.
            a.Label(ref ap);
            a.mov(eax, apic + 0x20);
            a.mov(ebx, __dword_ptr[rax]);
            a.shr(ebx, 24);
            a.mov(eax, ebx);
            a.shl(eax, 12);
            a.add(eax, (int)apStacks + 0x1000);
            a.mov(rsp, rax);
            a.mov(eax, 1);
            a.@lock.xadd(__qword_ptr[(long)started], rax);
            a.call(work);
            var halt = a.CreateLabel();
            a.Label(ref halt);
            a.cli();
            a.hlt();
            a.jmp(halt);

            // The work of vCPU RBX: SmpSpinIterations rounds of a linear congruential step seeded by its ID.
            a.Label(ref work);
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.mov(r8, rax);
            a.lea(rax, __[rbx + 1]);
            a.mov(rcx, iterations);
            var step = a.CreateLabel();
            a.Label(ref step);
            a.imul(rax, rax, 1_103_515_245);
            a.add(rax, rbx);
            a.add(rax, 12_345);
            a.dec(rcx);
            a.jnz(step);
            a.mov(__qword_ptr[rbx * 8 + (long)sums], rax);
            a.rdtsc();
            a.shl(rdx, 32);
            a.or(rax, rdx);
            a.sub(rax, r8);
            a.mov(__qword_ptr[rbx * 8 + (long)cycles], rax);
            a.mov(eax, 1);
            a.@lock.xadd(__qword_ptr[(long)finished], rax);
            a.ret();

            EmitPrinting(a, puts, putDecimal, scratch);

            a.Label(ref vcpuText);
            a.AsciiZ("RESULT smp-spin vcpu=");
            a.Label(ref sumText);
            a.AsciiZ(" sum=");
            a.Label(ref cyclesText);
            a.AsciiZ(" cycles=");
            a.Label(ref totalText);
            a.AsciiZ("RESULT smp-spin vcpus=");
            a.Label(ref totalSumText);
            a.AsciiZ(" total=");
            a.Label(ref lowMemory);
            a.db(low);
        });
    }

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

        EmitPrinting(a, puts, putDecimal, scratch);

        a.Label(ref head);
        a.AsciiZ("RESULT ticker ticks=");
        a.Label(ref stealText);
        a.AsciiZ(" steal_ns=");
    });

    // puts (the NUL-terminated text at RSI to COM1) and putDecimal (RAX in decimal to COM1, digits built below
    // scratch + 0x200); both clobber RAX, RCX, RDX, RSI, RDI.
    private static void EmitPrinting(Assembler a, Label puts, Label putDecimal, ulong scratch)
    {
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
    }
}
