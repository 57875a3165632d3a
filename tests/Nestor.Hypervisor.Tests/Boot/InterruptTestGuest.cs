using Iced.Intel;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Engines;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Boot;

/// <summary>A 32-bit Multiboot guest on the software machine's PC platform that takes interrupts (no paging: MMIO at
/// its physical address), as kvm-unit-tests' device tests are booted: the tests of pc-testdev, the 8259 pair and the
/// optional devices build theirs from it. The main code sets ESP, EBP = <see cref="Results"/> (the test's slots),
/// EBX = the local APIC's base and ESI = the I/O APIC's, installs a 32-bit interrupt gate (SDM Vol. 3A §6.11) for
/// every handler, loads the IDT, runs the test's body and exits through the debug port with status 0. Each handler is
/// assembled apart at a fixed place after the main code (Iced's LEA of a label would be RIP-relative, which 32-bit
/// code lacks) and ends with its own IRETD.</summary>
internal static class InterruptTestGuest
{
    /// <summary>Where the kernel loads and where it keeps its slots, IDT, IDTR and stack.</summary>
    public const uint Address = 0x200000, Results = 0x300000, Idt = 0x310000, Idtr = 0x320000, StackTop = 0x340000;

    private const uint CodeOffset = 32, HandlerBase = Address + 0x4000;

    /// <summary>Boots the guest (named <paramref name="name"/>) with <paramref name="devices"/> asked for.</summary>
    public static (uint? Status, Vm Vm, string Message) Boot(string name, IReadOnlyList<(int Vector, Action<Assembler> Handler)> handlers,
        Action<Assembler> body, PlatformDevices? devices = null, uint handlerStride = 0x100)
    {
        var image = new byte[HandlerBase - Address + handlers.Count * handlerStride];
        for (int k = 0; k < handlers.Count; k++)
        {
            uint at = HandlerBase + (uint)k * handlerStride;
            byte[] handler = GuestAssembler.Assemble(handlers[k].Handler, at, bitness: 32);
            Assert.True(handler.Length <= handlerStride, $"handler {k} is longer than its {handlerStride} bytes");
            handler.CopyTo(image, (int)(at - Address));
        }
        byte[] main = GuestAssembler.Assemble(a =>
        {
            a.mov(esp, StackTop);
            a.mov(ebp, Results);
            a.mov(ebx, 0xFEE0_0000);
            a.mov(esi, 0xFEC0_0000);
            a.mov(cx, cs);
            for (int k = 0; k < handlers.Count; k++)
            {
                uint handler = HandlerBase + (uint)k * handlerStride;
                a.mov(edi, Idt + (uint)handlers[k].Vector * 8);
                a.mov(__word_ptr[edi], (ushort)handler);
                a.mov(__word_ptr[edi + 2], cx);
                a.mov(__word_ptr[edi + 4], 0x8E00);
                a.mov(__word_ptr[edi + 6], (ushort)(handler >> 16));
            }
            a.mov(edi, Idtr);
            a.mov(__word_ptr[edi], 0x7FF);
            a.mov(__dword_ptr[edi + 2], Idt);
            a.lidt(__[edi]);
            body(a);
            a.cli();
            a.mov(dx, 0xF4);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.hlt();
        }, Address + CodeOffset, bitness: 32);
        Assert.True(CodeOffset + main.Length <= HandlerBase - Address, "the main code overlaps the handlers");
        main.CopyTo(image, (int)CodeOffset);
        uint end = Address + (uint)image.Length;
        MultibootTestKernel.Header(1u << 16, Address, Address, end, end, Address + CodeOffset).CopyTo(image, 0);
        var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Kernel = new KernelImageSource(name, image, KernelFormat.Elf),
            MemoryBytes = 64UL << 20,
            Multiboot = true,
            PlatformDevices = devices ?? PlatformDevices.None,
            Diagnostics = TextWriter.Null,
            Timeout = TimeSpan.FromSeconds(60),
        });
        using var engine = new SimEngine();
        var outcome = vm.Run(engine).Outcome;
        return (outcome.GuestStatus, vm, outcome.Message);
    }

    /// <summary>Masks both 8259s (OCW1) and software-enables the local APIC (SVR 0x1FF): the start of a guest that
    /// takes its interrupts through the I/O APIC.</summary>
    public static void UseTheIoApic(Assembler a)
    {
        a.mov(al, 0xFF);
        a.@out(0x21, al);
        a.@out(0xA1, al);
        a.mov(__dword_ptr[ebx + 0xF0], 0x1FF);
    }
}
