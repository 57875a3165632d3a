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
    public const uint Results = InterruptTestGuest.Results;
    public const int FirstVector = 0x50, IntxVector = 0x50, MsiVector = 0x51, RemappedVector = 0x52, OtherVector = 0x53;
    public const uint Edu = EduConfiguration.BarAddress, Vtd = (uint)DmaRemappingHardwareUnit.BaseAddress;
    private const int Handlers = 4;

    public static (uint? Status, Vm Vm, string Message) BootGuest(PlatformDevices devices, Action<Assembler> body) =>
        InterruptTestGuest.Boot("pc-devices.bin", [.. Enumerable.Range(0, Handlers).Select(slot => (FirstVector + slot, (Action<Assembler>)(a =>
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
        })))], a =>
        {
            InterruptTestGuest.UseTheIoApic(a);
            body(a);
        }, devices);

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
