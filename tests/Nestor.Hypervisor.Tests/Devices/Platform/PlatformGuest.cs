using System.Text;
using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Hosting;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>Runs a ring-0 64-bit guest (the Nestor boot protocol, code at 0x100000) on the software machine; the
/// guest stores its findings in 8-byte slots at <see cref="Results"/> (R15 points there) and ends with status 0.</summary>
internal static class PlatformGuest
{
    public const ulong Results = 0x200000, Idt = 0x210000, Scratch = 0x211000;

    public static (uint? Status, Vm Vm, string Message) Run(Action<Assembler> body, string commandLine = "")
    {
        byte[] code = GuestAssembler.Assemble(a =>
        {
            a.mov(r15, Results);
            body(a);
            a.mov(dx, 0xF4);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.hlt();
        });
        var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Kernel = GuestAssembler.Flat("platform-guest", code),
            CommandLine = commandLine,
            Timeout = TimeSpan.FromSeconds(60),
        });
        using var engine = new SimEngine();
        var outcome = vm.Run(engine).Outcome;
        return (outcome.GuestStatus, vm, outcome.Message);
    }

    public static ulong Slot(Vm vm, int index) => vm.Memory.ReadUInt64(new Machine.Addresses.GuestPhysical(Results + (ulong)index * 8));

    /// <summary>Emits RDTSC into RAX as one 64-bit value. Clobbers RDX.</summary>
    public static void ReadTsc(Assembler a)
    {
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
    }

    /// <summary>Emits a handler for <paramref name="vector"/> that adds one to the slot at R15 + <paramref name="counter"/>
    /// (with <paramref name="logTsc"/>, first storing the TSC at R15 + 24 + 8 × the count, the interrupt's arrival time)
    /// and EOIs, jumps over it, and sets up the IDT and the local APIC (<see cref="GuestInterruptSetup.Emit"/>) with RBX
    /// the local APIC's base and RSI the I/O APIC's, which the body goes on to use.</summary>
    public static void InterruptHandler(Assembler a, int vector, int counter, bool logTsc = false)
    {
        var handler = a.CreateLabel();
        var start = a.CreateLabel();
        a.jmp(start);
        a.Label(ref handler);
        if (logTsc)
        {
            a.push(rax);
            a.push(rdx);
            ReadTsc(a);
            a.mov(rdx, __qword_ptr[r15 + counter]);
            a.mov(__qword_ptr[r15 + rdx * 8 + 24], rax);
        }
        a.inc(__qword_ptr[r15 + counter]);
        a.mov(__dword_ptr[rbx + 0xB0], 0); // EOI
        if (logTsc)
        {
            a.pop(rdx);
            a.pop(rax);
        }
        a.iretq();
        a.Label(ref start);
        a.mov(rbx, 0xFEE0_0000UL);
        a.mov(rsi, 0xFEC0_0000UL);
        GuestInterruptSetup.Emit(a, Idt, vector, handler, Scratch, rbx);
    }

    public static string Ascii(ulong value, int length) => Encoding.ASCII.GetString(BitConverter.GetBytes(value), 0, length);
}
