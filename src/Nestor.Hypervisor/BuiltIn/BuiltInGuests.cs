using Iced.Intel;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.BuiltIn;

/// <summary>Guests built into Nestor, so that <c>nestor run</c> has something to boot on a fresh machine.</summary>
public static class BuiltInGuests
{
    /// <summary>Names accepted by <see cref="Get"/>.</summary>
    public static IReadOnlyList<string> Names => ["hello", "nestoros"];

    /// <summary>The built-in guest called <paramref name="name"/>.</summary>
    public static KernelImageSource Get(string name) => name switch
    {
        "hello" => GuestAssembler.Flat("built-in guest 'hello'", Hello()),
        "nestoros" => new KernelImageSource("built-in NestorOS", NestorOS(), KernelFormat.Elf),
        _ => throw new Errors.BadInputException($"there is no built-in guest '{name}'",
            $"Built-in guests: {string.Join(", ", Names)}"),
    };

    /// <summary>The NestorOS kernel image (guest/), built with gcc at build time and embedded: one ELF64 file that
    /// boots by the Nestor boot protocol and, through its Multiboot header, under QEMU's <c>-kernel</c>.</summary>
    public static byte[] NestorOS()
    {
        using var stream = typeof(BuiltInGuests).Assembly.GetManifestResourceStream("NestorOS.elf")
            ?? throw new InvalidOperationException("NestorOS is not embedded in this build of Nestor.Hypervisor");
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    /// <summary>A ring-0 guest that probes COM1 the way a driver does (scratch register, divisor latch, loopback),
    /// prints a greeting, the hypervisor signature from CPUID 0x40000000 and what the boot-information block says,
    /// then exits through the debug-exit port with status 0. Status 2 means the UART probe failed, 3 a bad
    /// boot-information block.</summary>
    public static byte[] Hello() => GuestAssembler.Assemble(a =>
    {
        var putc = a.CreateLabel("putc");
        var puts = a.CreateLabel("puts");
        var putDecimal = a.CreateLabel("putdec");
        var uartMissing = a.CreateLabel("uart_missing");
        var badBoot = a.CreateLabel("bad_boot");
        var greeting = a.CreateLabel();
        var hypervisorText = a.CreateLabel();
        var memoryText = a.CreateLabel();
        var mapText = a.CreateLabel();
        var commandText = a.CreateLabel();
        var modeText = a.CreateLabel();
        var byeText = a.CreateLabel();
        var badBootText = a.CreateLabel();
        var quote = a.CreateLabel();

        a.mov(r15, rdi); // boot-information block

        // Program the UART as a driver does: interrupts off, 115200 baud through the divisor latch, 8N1, FIFOs on.
        Out(a, Uart16550.Com1 + 1, 0x00);
        Out(a, Uart16550.Com1 + 3, 0x80);
        Out(a, Uart16550.Com1 + 0, 0x01);
        Out(a, Uart16550.Com1 + 1, 0x00);
        Out(a, Uart16550.Com1 + 3, 0x03);
        Out(a, Uart16550.Com1 + 2, 0xC7);
        // Scratch register: a UART is present only if it remembers a value.
        Out(a, Uart16550.Com1 + 7, 0x5A);
        a.@in(al, dx);
        a.cmp(al, 0x5A);
        a.jne(uartMissing);
        // Loopback: what is transmitted must come back.
        Out(a, Uart16550.Com1 + 4, 0x1E);
        Out(a, Uart16550.Com1 + 0, 0xAE);
        a.@in(al, dx);
        a.cmp(al, 0xAE);
        a.jne(uartMissing);
        Out(a, Uart16550.Com1 + 4, 0x0F);

        a.lea(rsi, __[greeting]);
        a.call(puts);

        // CPUID 0x40000000: the hypervisor's 12-byte signature in EBX, ECX, EDX.
        a.lea(rsi, __[hypervisorText]);
        a.call(puts);
        a.mov(eax, 0x4000_0000);
        a.cpuid();
        a.sub(rsp, 16);
        a.mov(__dword_ptr[rsp], ebx);
        a.mov(__dword_ptr[rsp + 4], ecx);
        a.mov(__dword_ptr[rsp + 8], edx);
        a.mov(__dword_ptr[rsp + 12], 0x0A); // "\n\0"
        a.mov(rsi, rsp);
        a.call(puts);
        a.add(rsp, 16);

        // The boot-information block (docs/boot-protocol.md).
        a.mov(rax, __qword_ptr[r15]);
        a.mov(rbx, BootInformation.Magic);
        a.cmp(rax, rbx);
        a.jne(badBoot);
        a.lea(rsi, __[memoryText]);
        a.call(puts);
        a.mov(rax, __qword_ptr[r15 + 0x10]);
        a.shr(rax, 20);
        a.call(putDecimal);
        a.lea(rsi, __[mapText]);
        a.call(puts);
        a.mov(eax, __dword_ptr[r15 + 0x24]);
        a.call(putDecimal);
        a.lea(rsi, __[commandText]);
        a.call(puts);
        a.mov(rsi, __qword_ptr[r15 + 0x18]);
        a.call(puts);
        a.lea(rsi, __[quote]);
        a.call(puts);
        a.lea(rsi, __[modeText]);
        a.call(puts);
        a.lea(rsi, __[byeText]);
        a.call(puts);
        a.mov(dx, DebugExitPort.Port);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();

        a.Label(ref uartMissing);
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, 2);
        a.@out(dx, eax);
        a.hlt();

        a.Label(ref badBoot);
        a.lea(rsi, __[badBootText]);
        a.call(puts);
        a.mov(dx, DebugExitPort.Port);
        a.mov(eax, 3);
        a.@out(dx, eax);
        a.hlt();

        // puts: print the NUL-terminated string at RSI.
        var putsDone = a.CreateLabel();
        a.Label(ref puts);
        a.mov(al, __byte_ptr[rsi]);
        a.test(al, al);
        a.jz(putsDone);
        a.call(putc);
        a.inc(rsi);
        a.jmp(puts);
        a.Label(ref putsDone);
        a.ret();

        // putc: wait for LSR.THRE, then transmit AL.
        var wait = a.CreateLabel();
        a.Label(ref putc);
        a.push(rdx);
        a.push(rax);
        a.mov(dx, Uart16550.Com1 + 5);
        a.Label(ref wait);
        a.@in(al, dx);
        a.test(al, 0x20);
        a.jz(wait);
        a.pop(rax);
        a.mov(dx, Uart16550.Com1);
        a.@out(dx, al);
        a.pop(rdx);
        a.ret();

        // putdec: print RAX in decimal.
        var digit = a.CreateLabel();
        a.Label(ref putDecimal);
        a.push(rbx);
        a.push(rcx);
        a.push(rdx);
        a.sub(rsp, 32);
        a.lea(rbx, __[rsp + 31]);
        a.mov(__byte_ptr[rbx], 0);
        a.mov(ecx, 10);
        a.Label(ref digit);
        a.xor(edx, edx);
        a.div(rcx);
        a.add(dl, (byte)'0');
        a.dec(rbx);
        a.mov(__byte_ptr[rbx], dl);
        a.test(rax, rax);
        a.jnz(digit);
        a.mov(rsi, rbx);
        a.call(puts);
        a.add(rsp, 32);
        a.pop(rdx);
        a.pop(rcx);
        a.pop(rbx);
        a.ret();

        a.Label(ref greeting);
        a.AsciiZ("Hello from a Nestor guest: ring 0, 64-bit long mode, paging on.\n");
        a.Label(ref hypervisorText);
        a.AsciiZ("CPUID 0x40000000 says the hypervisor is: ");
        a.Label(ref memoryText);
        a.AsciiZ("Boot information: ");
        a.Label(ref mapText);
        a.AsciiZ(" MiB of RAM in a memory map of ");
        a.Label(ref commandText);
        a.AsciiZ(" entries, command line \"");
        a.Label(ref quote);
        a.AsciiZ("\".\n");
        a.Label(ref modeText);
        a.AsciiZ("The UART answered its scratch-register and loopback probes like a real 16550.\n");
        a.Label(ref byeText);
        a.AsciiZ("Writing status 0 to the debug-exit port. Goodbye.\n");
        a.Label(ref badBootText);
        a.AsciiZ("The boot-information block has the wrong magic.\n");
    });

    private static void Out(Assembler a, int port, byte value)
    {
        a.mov(dx, (ushort)port);
        a.mov(al, value);
        a.@out(dx, al);
    }
}
