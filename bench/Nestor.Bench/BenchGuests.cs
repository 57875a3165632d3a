using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Bench;

/// <summary>The guests the benchmark boots. Each is position-independent 64-bit ring-0 code wrapped by
/// <see cref="MultibootImage"/>, so the very same file boots on Nestor (<c>nestor run IMAGE</c>) and on QEMU
/// (<c>-kernel IMAGE</c>): both VMMs run byte-identical guest code.</summary>
internal static class BenchGuests
{
    /// <summary>COM1's scratch register. Both VMMs emulate it in user space (QEMU's serial device, Nestor's
    /// <c>Uart16550</c>) and a write to it has no side effect, so each OUT is one pure VM-exit round trip:
    /// guest → KVM → VMM user space → KVM → guest.</summary>
    public const ushort ScratchPort = 0x3FF;

    public const ushort Com1Data = 0x3F8;

    public const ushort DebugExitPort = 0xF4;

    /// <summary>The byte the start-up and memory guests print first. Not text: under QEMU, SeaBIOS prints its
    /// banner and "Booting from ROM.." on the same COM1 before the guest runs, and the harness must tell the guest's
    /// first byte from the firmware's.</summary>
    public const byte MarkerByte = 0xA5;

    /// <summary>Performs <paramref name="count"/> <c>out dx, al</c> to <see cref="ScratchPort"/>, then writes status
    /// 0 to the debug-exit port. With <paramref name="printFirst"/> it first prints the marker (see
    /// <see cref="PrintMarker"/>), which tells the harness the guest is running. The count is in ECX and the loop is <c>sub ecx,1; jnz</c>, so
    /// the only work besides the exits is two cheap instructions per iteration.</summary>
    public static byte[] PortWrites(uint count, bool printFirst) => MultibootImage.Build(GuestAssembler.Assemble(a =>
    {
        var loop = a.CreateLabel("loop");
        var done = a.CreateLabel("done");
        if (printFirst)
        {
            PrintMarker(a);
        }
        a.mov(ecx, count);
        // N = 0 must not enter the loop: 'sub ecx,1' from 0 would wrap and run 2^32 iterations.
        a.test(ecx, ecx);
        a.jz(done);
        a.mov(dx, ScratchPort);
        a.xor(eax, eax);
        a.Label(ref loop);
        a.@out(dx, al);
        a.sub(ecx, 1);
        a.jnz(loop);
        a.Label(ref done);
        Exit(a);
    }, MultibootImage.PayloadAddress));

    /// <summary>Prints the marker at once and exits with status 0: the start-up guest.</summary>
    public static byte[] FirstByte() => MultibootImage.Build(GuestAssembler.Assemble(a =>
    {
        PrintMarker(a);
        Exit(a);
    }, MultibootImage.PayloadAddress));

    /// <summary>Writes <see cref="MarkerByte"/> and then a newline to COM1. The newline is there because Nestor's
    /// UART is line-buffered (it hands bytes to stdout at '\n'); the marker then leaves Nestor one OUT later,
    /// as it would leave QEMU's unbuffered -serial stdio. Without it Nestor would hold the marker until the VM
    /// ends, and the memory guest's loop would run before the harness knew the guest had started.</summary>
    private static void PrintMarker(Assembler a)
    {
        a.mov(dx, Com1Data);
        a.mov(al, MarkerByte);
        a.@out(dx, al);
        a.mov(al, (byte)'\n');
        a.@out(dx, al);
    }

    /// <summary>Writes status 0 to the debug-exit port (Nestor: process status 0; QEMU: (0 &lt;&lt; 1) | 1 = 1).
    /// The HLT after it is never reached on either VMM; it is there so that a VMM that ignored the write would stop
    /// rather than run into whatever follows.</summary>
    private static void Exit(Assembler a)
    {
        a.mov(dx, DebugExitPort);
        a.xor(eax, eax);
        a.@out(dx, eax);
        a.hlt();
    }
}
