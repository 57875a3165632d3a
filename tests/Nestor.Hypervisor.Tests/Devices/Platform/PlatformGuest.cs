using System.Text;
using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Engines;
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

    public static string Ascii(ulong value, int length) => Encoding.ASCII.GetString(BitConverter.GetBytes(value), 0, length);
}
