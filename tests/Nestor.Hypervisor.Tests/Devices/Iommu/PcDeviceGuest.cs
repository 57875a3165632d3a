using Iced.Intel;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Devices.Platform.Iommu;
using Nestor.Hypervisor.Devices.Platform.Pci;
using Nestor.Hypervisor.Devices.Platform.Pci.Edu;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Tests.Boot;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Iommu;

/// <summary>Boots a 32-bit Multiboot guest (no paging: MMIO at its physical address) on the software machine with the
/// optional platform devices asked for (<c>--device edu</c>, <c>--device intel-iommu</c>), as kvm-unit-tests'
/// <c>intel_iommu</c> image is booted. EBP points at 4-byte result slots; vectors <see cref="FirstVector"/> + k
/// count into slot k (k = 0..3), and the handler of <see cref="IntxVector"/> also acknowledges edu's interrupt status
/// (its INTx is a level that stays up until then, edu.rst). ESI holds the I/O APIC's base, EBX the local APIC's.</summary>
internal static class PcDeviceGuest
{
    public const uint Address = 0x200000, Results = 0x300000, Idt = 0x310000, Idtr = 0x320000, StackTop = 0x340000;
    public const int FirstVector = 0x50, IntxVector = 0x50, MsiVector = 0x51, RemappedVector = 0x52, OtherVector = 0x53;
    public const uint Edu = EduConfiguration.BarAddress, Vtd = (uint)DmaRemappingHardwareUnit.BaseAddress;
    private const int Handlers = 4;

    public static (uint? Status, Vm Vm, string Message) BootGuest(PlatformDevices devices, Action<Assembler> body)
    {
        const uint CodeOffset = 32, HandlerBase = Address + 0x2000, HandlerStride = 0x100;
        var handlers = new byte[Handlers][];
        for (int k = 0; k < Handlers; k++)
        {
            int slot = k;
            handlers[k] = GuestAssembler.Assemble(a =>
            {
                a.push(eax);
                a.push(edi);
                a.inc(__dword_ptr[ebp + 4 * slot]);
                if (slot == IntxVector - FirstVector)
                {
                    a.mov(edi, Edu);
                    a.mov(eax, __dword_ptr[edi + 0x24]);
                    a.mov(__dword_ptr[edi + 0x64], eax);
                }
                a.mov(__dword_ptr[ebx + 0xB0], 0);
                a.pop(edi);
                a.pop(eax);
                a.iretd();
            }, HandlerBase + (uint)k * HandlerStride, bitness: 32);
        }
        byte[] main = GuestAssembler.Assemble(a =>
        {
            a.mov(esp, StackTop);
            a.mov(ebp, Results);
            a.mov(ebx, 0xFEE0_0000);
            a.mov(esi, 0xFEC0_0000);
            a.mov(cx, cs);
            for (int k = 0; k < Handlers; k++)
            {
                // A 32-bit interrupt gate (SDM Vol. 3A §6.11).
                uint handler = HandlerBase + (uint)k * HandlerStride;
                a.mov(edi, Idt + (uint)(FirstVector + k) * 8);
                a.mov(__word_ptr[edi], (ushort)handler);
                a.mov(__word_ptr[edi + 2], cx);
                a.mov(__word_ptr[edi + 4], 0x8E00);
                a.mov(__word_ptr[edi + 6], (ushort)(handler >> 16));
            }
            a.mov(edi, Idtr);
            a.mov(__word_ptr[edi], 0x7FF);
            a.mov(__dword_ptr[edi + 2], Idt);
            a.lidt(__[edi]);
            a.mov(al, 0xFF);
            a.@out(0x21, al);
            a.@out(0xA1, al);
            a.mov(__dword_ptr[ebx + 0xF0], 0x1FF);
            body(a);
            a.cli();
            a.mov(dx, 0xF4);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.hlt();
        }, Address + CodeOffset, bitness: 32);
        Assert.True(CodeOffset + main.Length <= HandlerBase - Address, "the main code overlaps the handlers");
        var image = new byte[HandlerBase - Address + Handlers * HandlerStride];
        main.CopyTo(image, (int)CodeOffset);
        for (int k = 0; k < Handlers; k++)
        {
            handlers[k].CopyTo(image, (int)(HandlerBase - Address + k * HandlerStride));
        }
        uint end = Address + (uint)image.Length;
        MultibootTestKernel.Header(1u << 16, Address, Address, end, end, Address + CodeOffset).CopyTo(image, 0);
        var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Kernel = new KernelImageSource("pc-devices.bin", image, KernelFormat.Elf),
            MemoryBytes = 64UL << 20,
            Multiboot = true,
            PlatformDevices = devices,
            Diagnostics = TextWriter.Null,
            Timeout = TimeSpan.FromSeconds(60),
        });
        using var engine = new SimEngine();
        var outcome = vm.Run(engine).Outcome;
        return (outcome.GuestStatus, vm, outcome.Message);
    }

    public static uint Slot(Vm vm, int index) => vm.Memory.ReadUInt32(new Machine.Addresses.GuestPhysical(Results + (ulong)index * 4));

    public static uint Ram(Vm vm, ulong address) => vm.Memory.ReadUInt32(new Machine.Addresses.GuestPhysical(address));

    /// <summary>Stores EAX in result slot <paramref name="slot"/>.</summary>
    public static void Store(Assembler a, int slot) => a.mov(__dword_ptr[ebp + 4 * slot], eax);

    /// <summary>EAX = the dword at <paramref name="address"/>.</summary>
    public static void Load(Assembler a, uint address)
    {
        a.mov(edi, address);
        a.mov(eax, __dword_ptr[edi]);
    }

    /// <summary>The dword at <paramref name="address"/> = <paramref name="value"/>.</summary>
    public static void Poke(Assembler a, uint address, uint value)
    {
        a.mov(edi, address);
        a.mov(__dword_ptr[edi], value);
    }

    /// <summary>A 64-bit value in RAM or a register as two dwords, low first.</summary>
    public static void Poke64(Assembler a, uint address, ulong value)
    {
        Poke(a, address, (uint)value);
        Poke(a, address + 4, (uint)(value >> 32));
    }

    /// <summary>Selects 00:<paramref name="devfn"/> register <paramref name="register"/> in CONFIG_ADDRESS.</summary>
    public static void Select(Assembler a, int devfn, int register)
    {
        a.mov(dx, PciBus.AddressPort);
        a.mov(eax, 0x8000_0000u | (uint)(devfn << 8) | (uint)register);
        a.@out(dx, eax);
        a.mov(dx, PciBus.DataPort);
    }

    /// <summary>A dword configuration write at a dword-aligned register.</summary>
    public static void ConfigWrite(Assembler a, int devfn, int register, uint value)
    {
        Select(a, devfn, register);
        a.mov(eax, value);
        a.@out(dx, eax);
    }

    /// <summary>EAX = the dword configuration register.</summary>
    public static void ConfigRead(Assembler a, int devfn, int register)
    {
        Select(a, devfn, register);
        a.@in(eax, dx);
    }

    /// <summary>Edu's DMA (edu.rst): source, destination, count, then the command; waits for the start bit to clear.</summary>
    public static void EduDma(Assembler a, uint source, uint destination, uint count, uint command)
    {
        Poke(a, Edu + 0x80, source);
        Poke(a, Edu + 0x88, destination);
        Poke(a, Edu + 0x90, count);
        Poke(a, Edu + 0x98, command);
        var wait = a.CreateLabel();
        a.Label(ref wait);
        a.test(__dword_ptr[edi], 1);
        a.jnz(wait);
    }

    /// <summary>Writes the global command register with GSTS's states ORed with <paramref name="bit"/> (the way the
    /// VT-d specification §10.4.4 tells software to change one bit), then stores GSTS in <paramref name="slot"/>.</summary>
    public static void Command(Assembler a, uint bit, int slot)
    {
        Load(a, Vtd + DmaRemappingHardwareUnit.GlobalStatus);
        a.and(eax, 0x96FF_FFFF); // the one-shot bits (SRTP, SFL, WBF, SIRTP) are not written back
        a.or(eax, bit);
        a.mov(edi, Vtd + DmaRemappingHardwareUnit.GlobalCommand);
        a.mov(__dword_ptr[edi], eax);
        Load(a, Vtd + DmaRemappingHardwareUnit.GlobalStatus);
        Store(a, slot);
    }
}
