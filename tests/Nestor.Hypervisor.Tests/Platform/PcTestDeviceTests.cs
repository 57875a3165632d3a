using Iced.Intel;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.BuiltIn;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Testing;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Tests.Boot;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Platform;

/// <summary>QEMU's pc-testdev as kvm-unit-tests drives it (its <c>ioapic</c> test): a 32-bit Multiboot guest raises
/// ISA IRQ lines through ports 0x2000 + n and counts what the I/O APIC delivers, edge and level, masked and not.</summary>
public class PcTestDeviceTests
{
    private const uint Results = InterruptTestGuest.Results;
    private const int EdgeVector = 0x76, LevelVector = 0x77, LineZeroVector = 0x78;
    private const uint LevelBit = 1u << 15, MaskBit = 1u << 16;

    private static (uint? Status, Vm Vm, string Message) Boot(Action<Assembler> body) => InterruptTestGuest.Boot("testdev.bin",
    [
        (EdgeVector, a =>
        {
            a.inc(__dword_ptr[ebp]);
            a.mov(__dword_ptr[ebx + 0xB0], 0);
            a.iretd();
        }),
        // The level handler leaves the line up on its first entry (the EOI makes the pin send again), lowers it from
        // the second on, as a driver acknowledging its device does.
        (LevelVector, a =>
        {
            var keep = a.CreateLabel();
            a.push(eax);
            a.push(edx);
            a.inc(__dword_ptr[ebp + 4]);
            a.cmp(__dword_ptr[ebp + 4], 2);
            a.jb(keep);
            a.mov(dx, (ushort)(PcTestDevice.IrqLinePort + 0x0F));
            a.xor(al, al);
            a.@out(dx, al);
            a.Label(ref keep);
            a.mov(__dword_ptr[ebx + 0xB0], 0);
            a.pop(edx);
            a.pop(eax);
            a.iretd();
        }),
        (LineZeroVector, a =>
        {
            a.inc(__dword_ptr[ebp + 8]);
            a.mov(__dword_ptr[ebx + 0xB0], 0);
            a.iretd();
        }),
    ], a =>
    {
        InterruptTestGuest.UseTheIoApic(a);
        body(a);
    });

    private static uint Slot(Vm vm, int index) => vm.Memory.ReadUInt32(new Machine.Addresses.GuestPhysical(Results + (ulong)index * 4));

    /// <summary>Writes <paramref name="low"/> to redirection entry <paramref name="pin"/> (the high half 0: APIC 0).</summary>
    private static void Redirect(Assembler a, int pin, uint low)
    {
        a.mov(__dword_ptr[esi], 0x10 + 2 * pin + 1);
        a.mov(__dword_ptr[esi + 0x10], 0);
        a.mov(__dword_ptr[esi], 0x10 + 2 * pin);
        a.mov(__dword_ptr[esi + 0x10], low);
    }

    private static void SetLine(Assembler a, int line, int level)
    {
        a.mov(dx, (ushort)(PcTestDevice.IrqLinePort + line));
        a.mov(al, (byte)level);
        a.@out(dx, al);
        a.nop();
    }

    private static void Record(Assembler a, int counter, int slot)
    {
        a.mov(eax, __dword_ptr[ebp + 4 * counter]);
        a.mov(__dword_ptr[ebp + 4 * slot], eax);
    }

    [Fact]
    public void Lines_from_port_0x2000_reach_the_IO_APIC_as_edges_and_levels_with_the_82093AAs_masking_rules()
    {
        var (status, vm, message) = Boot(a =>
        {
            Redirect(a, 14, EdgeVector);
            Redirect(a, 15, LevelVector | LevelBit);
            Redirect(a, 2, LineZeroVector);
            a.sti();
            // Edge: a toggle is one interrupt (kvm-unit-tests' "edge triggered intr").
            SetLine(a, 14, 1);
            SetLine(a, 14, 0);
            Record(a, 0, 10);
            // Two writes of 1 are two assertions, as QEMU's qemu_set_irq makes them: two edges.
            SetLine(a, 14, 1);
            SetLine(a, 14, 1);
            SetLine(a, 14, 0);
            Record(a, 0, 11);
            // An edge on a masked pin is lost, and unmasking does not bring it back (82093AA §3.2.4).
            Redirect(a, 14, EdgeVector | MaskBit);
            SetLine(a, 14, 1);
            SetLine(a, 14, 0);
            Redirect(a, 14, EdgeVector);
            Record(a, 0, 12);
            // Level: the pin sends while asserted; remote IRR holds it until the EOI, which sends again because the
            // line is still up; the second entry lowers it (kvm-unit-tests' "retriggered level interrupts").
            SetLine(a, 15, 1);
            Record(a, 1, 13);
            // A level asserted while masked waits and is delivered on unmasking ("unmasked level interrupt").
            Redirect(a, 15, LevelVector | LevelBit | MaskBit);
            SetLine(a, 15, 1);
            Record(a, 1, 14);
            Redirect(a, 15, LevelVector | LevelBit);
            a.nop();
            Record(a, 1, 15);
            // ISA IRQ 0 is GSI 2, as the MADT's interrupt source override says.
            SetLine(a, 0, 1);
            SetLine(a, 0, 0);
            // The scratch register: a dword at 0xE0, read back by bytes at 0xE8 + n; a byte written at 0xE9.
            a.mov(eax, 0x1234_5678);
            a.@out((byte)PcTestDevice.DataPort, eax);
            a.@in(al, (byte)(PcTestDevice.ByteDataPort + 2));
            a.movzx(eax, al);
            a.mov(__dword_ptr[ebp + 4 * 16], eax);
            a.mov(al, 0xAB);
            a.@out((byte)(PcTestDevice.ByteDataPort + 1), al);
            a.@in(eax, (byte)PcTestDevice.DataPort);
            a.mov(__dword_ptr[ebp + 4 * 17], eax);
            // The iomem scratch at 0xFF000000.
            a.mov(edi, (uint)PcTestDevice.IoMemoryBase);
            a.mov(__dword_ptr[edi + 0x10], 0xDEAD_BEEF);
            a.movzx(eax, __byte_ptr[edi + 0x11]);
            a.mov(__dword_ptr[ebp + 4 * 18], eax);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1u, Slot(vm, 10));
            Assert.Equal(3u, Slot(vm, 11));
            Assert.Equal(3u, Slot(vm, 12));
            Assert.Equal(1L, vm.IoApic.MaskedEdges);
            Assert.Equal(2u, Slot(vm, 13));
            Assert.Equal(2u, Slot(vm, 14));
            Assert.Equal(3u, Slot(vm, 15));
            Assert.Equal(1u, Slot(vm, 2));
            Assert.Equal(0x34u, Slot(vm, 16));
            Assert.Equal(0x1234_AB78u, Slot(vm, 17));
            Assert.Equal(0xBEu, Slot(vm, 18));
            Assert.Equal(0UL, vm.IoApic.Entry(15) & IoApic.RemoteIrr);
        }
    }

    [Fact]
    public void The_device_is_on_Multiboot_VMs_only_and_takes_QEMUs_access_sizes()
    {
        var (status, vm, message) = Boot(a =>
        {
            a.mov(eax, 0x1000);
            a.@out((byte)PcTestDevice.FlushPort, eax);       // 32-bit: a page flush
            a.@out((byte)PcTestDevice.FlushPort, al);        // 8-bit: not valid there, dropped
            Redirect(a, 14, EdgeVector);
            a.sti();
            a.mov(dx, (ushort)(PcTestDevice.IrqLinePort + 14));
            a.mov(ax, 1);
            a.@out(dx, ax);                            // 16-bit to a line port: dropped, as QEMU's region refuses it
            a.nop();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.NotNull(vm.PcPlatform.TestDevice);
            Assert.Equal(1, vm.PcPlatform.TestDevice!.PageFlushes);
            Assert.Equal(0u, Slot(vm, 0));
            Assert.False(vm.Interrupts[14].Asserted);
        }
        var (_, plain, _) = Devices.Platform.PlatformGuest.Run(_ => { });
        using (plain)
        {
            Assert.Null(plain.PcPlatform.TestDevice); // the Nestor boot protocol's machine has no test device
        }
    }

    [Theory]
    [InlineData(0, 2)]
    [InlineData(1, 1)]
    [InlineData(14, 14)]
    [InlineData(23, 23)]
    public void ISA_IRQ_n_is_GSI_n_except_IRQ_0(int line, int gsi) => Assert.Equal(gsi, PcTestDevice.GsiOf(line));
}
