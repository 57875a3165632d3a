using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Devices.Platform.Pci.Edu;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Hypervisor.Tests.Devices.Iommu.PcDeviceGuest;

namespace Nestor.Hypervisor.Tests.Devices.Iommu;

/// <summary>QEMU's edu PCI device (docs/specs/edu.rst as fact) as a Multiboot guest finds it with <c>--device edu</c>:
/// at 00:01.0, its registers in BAR0, DMA, INTx and MSI.</summary>
public class EduDeviceTests
{
    private const int EduDevfn = 8;
    private static readonly PlatformDevices EduOnly = new() { Edu = true };

    [Fact]
    public void A_guest_finds_edu_at_00_01_0_sizes_its_BAR_and_reads_its_identification_liveness_and_factorial()
    {
        var (status, vm, message) = BootGuest(EduOnly, a =>
        {
            // The device ID as kvm-unit-tests' lib/x86 reads it: register 2 selected, a word read at 0xCFC (QEMU's
            // host bridge ORs CONFIG_ADDRESS bits 1:0 into the register).
            Select(a, EduDevfn, 2);
            a.xor(eax, eax);
            a.@in(ax, dx);
            Store(a, 0);
            ConfigRead(a, EduDevfn, 0x10);          // BAR0 as the firmware left it
            Store(a, 1);
            ConfigWrite(a, EduDevfn, 0x10, 0xFFFF_FFFF);
            ConfigRead(a, EduDevfn, 0x10);          // the size mask: 1 MiB, 32-bit memory
            Store(a, 2);
            ConfigWrite(a, EduDevfn, 0x10, EduConfiguration.BarAddress);
            ConfigRead(a, EduDevfn, 0x34);          // the capability pointer, then the MSI capability's header
            Store(a, 3);
            ConfigRead(a, EduDevfn, 0x40);
            Store(a, 4);
            ConfigRead(a, EduDevfn, 0x3C);          // interrupt line and pin
            Store(a, 5);
            Load(a, Edu + 0x00);
            Store(a, 6);
            Poke(a, Edu + 0x04, 0x1234_5678);
            Load(a, Edu + 0x04);
            Store(a, 7);
            Poke(a, Edu + 0x08, 10);
            var wait = a.CreateLabel();
            a.Label(ref wait);
            a.mov(edi, Edu + 0x20);
            a.test(__dword_ptr[edi], 1);
            a.jnz(wait);
            Load(a, Edu + 0x08);
            Store(a, 8);
            // Memory space disabled in the command register: the BAR no longer decodes.
            ConfigWrite(a, EduDevfn, 0x04, 0x4);
            Load(a, Edu + 0x00);
            Store(a, 9);
            ConfigWrite(a, EduDevfn, 0x04, 0x6);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(EduConfiguration.DeviceEdu, Slot(vm, 0));
            Assert.Equal(EduConfiguration.BarAddress, Slot(vm, 1));
            Assert.Equal(0xFFF0_0000u, Slot(vm, 2));
            Assert.Equal((uint)EduConfiguration.MsiCapability, Slot(vm, 3) & 0xFF);
            Assert.Equal(0x0080_0005u, Slot(vm, 4));  // MSI, last capability, 64-bit, disabled
            Assert.Equal(0x0000_010Au, Slot(vm, 5)); // INTA#, line 10
            Assert.Equal(EduDevice.Identification, Slot(vm, 6));
            Assert.Equal(~0x1234_5678u, Slot(vm, 7));
            Assert.Equal(3_628_800u, Slot(vm, 8));
            Assert.Equal(0xFFFF_FFFFu, Slot(vm, 9));
        }
    }

    [Fact]
    public void Edu_DMA_copies_between_RAM_and_its_buffer_without_an_IOMMU_and_only_while_it_may_master_the_bus()
    {
        const uint Source = 0x400000, Destination = 0x401000, Untouched = 0x402000;
        var (status, vm, message) = BootGuest(EduOnly, a =>
        {
            Poke(a, Source, 0xC0FF_EE01);
            Poke(a, Source + 4, 0x0BAD_F00D);
            EduDma(a, Source, (uint)EduDevice.BufferAddress, 8, 1);                 // RAM to the device
            EduDma(a, (uint)EduDevice.BufferAddress, Destination, 8, 1 | 2);        // the device to RAM
            ConfigWrite(a, EduDevfn, 0x04, 0x2);                                    // bus master off
            EduDma(a, (uint)EduDevice.BufferAddress, Untouched, 8, 1 | 2);
            ConfigWrite(a, EduDevfn, 0x04, 0x6);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(0xC0FF_EE01u, Ram(vm, Destination));
            Assert.Equal(0x0BAD_F00Du, Ram(vm, Destination + 4));
            Assert.Equal(0u, Ram(vm, Untouched));
            var edu = vm.PcPlatform.Edu!;
            Assert.Equal(2, edu.Transfers);
            Assert.Equal(1, edu.TransfersRefused);
        }
    }

    [Fact]
    public void Edu_interrupts_arrive_as_INTx_on_the_IO_APIC_pin_its_line_names_and_as_an_MSI_once_enabled()
    {
        var (status, vm, message) = BootGuest(EduOnly, a =>
        {
            // I/O APIC pin 10, level, active high, to APIC 0 (PCI INTx is level, PCI 3.0 §2.2.6).
            a.mov(__dword_ptr[esi], 0x10 + 2 * EduConfiguration.InterruptLine + 1);
            a.mov(__dword_ptr[esi + 0x10], 0);
            a.mov(__dword_ptr[esi], 0x10 + 2 * EduConfiguration.InterruptLine);
            a.mov(__dword_ptr[esi + 0x10], IntxVector | (1 << 15));
            a.sti();
            Poke(a, Edu + 0x60, 0x1);                // raise: INTx, acknowledged by the handler
            a.nop();
            Poke(a, Edu + 0x08, 5);                  // factorial without its interrupt bit: nothing
            a.nop();
            // MSI: address 0xFEE00000 (APIC 0), data = the vector, fixed; control bit 0 (PCI 3.0 §6.8.1).
            ConfigWrite(a, EduDevfn, 0x44, 0xFEE0_0000);
            ConfigWrite(a, EduDevfn, 0x48, 0);
            ConfigWrite(a, EduDevfn, 0x4C, MsiVector);
            Select(a, EduDevfn, 0x40);
            a.add(dx, 2);
            a.mov(ax, 0x81);
            a.@out(dx, ax);
            Poke(a, Edu + 0x64, 0xFFFF_FFFF);
            Poke(a, Edu + 0x60, 0x2);
            a.nop();
            Poke(a, Edu + 0x20, 0x80);               // factorial with its interrupt bit: one more message
            Poke(a, Edu + 0x08, 4);
            a.nop();
            a.cli();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1u, Slot(vm, IntxVector - FirstVector));
            Assert.Equal(2u, Slot(vm, MsiVector - FirstVector));
            Assert.Equal(1, vm.PcPlatform.Edu!.LineAssertions);
            Assert.Equal(2, vm.PcPlatform.Edu!.MessagesSent);
        }
    }

    [Fact]
    public void An_unknown_device_name_is_refused_with_the_names_there_are()
    {
        var e = Assert.Throws<ArgumentException>(() => PlatformDevices.Parse(["edu", "e1000"]));
        Assert.Contains("e1000", e.Message);
        Assert.Contains("intel-iommu", e.Message);
        var both = PlatformDevices.Parse(["intel-iommu", "edu"]);
        Assert.True(both.IntelIommu && both.Edu);
        Assert.False(PlatformDevices.None.Any);
    }
}

/// <summary>The DMAR table (VT-d §8.1, §8.3) a VM with <c>--device intel-iommu</c> lists in its RSDT and XSDT.</summary>
public class DmarTableTests
{
    private static byte[] Bytes(Vm vm, ulong at, int length)
    {
        var bytes = new byte[length];
        vm.Memory.Read(new Machine.Addresses.GuestPhysical(at), bytes);
        return bytes;
    }

    [Fact]
    public void A_VM_with_the_VT_d_unit_reports_it_in_a_DMAR_table_with_one_DRHD_including_every_PCI_device()
    {
        var (status, vm, message) = PcDeviceGuest.BootGuest(new PlatformDevices { IntelIommu = true }, _ => { });
        using (vm)
        {
            Assert.True(status == 0, message);
            var acpi = vm.PcPlatform.Acpi!;
            Assert.NotEqual(0UL, acpi.Dmar);
            var rsdt = Bytes(vm, acpi.Rsdt, 36 + 16);
            Assert.Equal(36u + 16, BitConverter.ToUInt32(rsdt, 4));
            Assert.Equal((uint)acpi.Dmar, BitConverter.ToUInt32(rsdt, 36 + 12));
            var dmar = Bytes(vm, acpi.Dmar, 72);
            Assert.Equal("DMAR", System.Text.Encoding.ASCII.GetString(dmar, 0, 4));
            Assert.Equal(72u, BitConverter.ToUInt32(dmar, 4));
            Assert.Equal(0, Nestor.Hypervisor.Devices.Platform.Acpi.AcpiTables.Sum(dmar));
            Assert.Equal(47, dmar[36]);                                   // host address width - 1
            Assert.Equal(1, dmar[37] & 1);                                // INTR_REMAP
            Assert.Equal(0, BitConverter.ToUInt16(dmar, 48));             // DRHD
            Assert.Equal(24, BitConverter.ToUInt16(dmar, 50));
            Assert.Equal(1, dmar[52] & 1);                                // INCLUDE_PCI_ALL
            Assert.Equal(0xFED9_0000UL, BitConverter.ToUInt64(dmar, 56));
            Assert.Equal(3, dmar[64]);                                    // device scope: the I/O APIC
        }
        var (plainStatus, plain, plainMessage) = PcDeviceGuest.BootGuest(PlatformDevices.None, _ => { });
        using (plain)
        {
            Assert.True(plainStatus == 0, plainMessage);
            Assert.Equal(0UL, plain.PcPlatform.Acpi!.Dmar);
            Assert.Equal(36u + 12, BitConverter.ToUInt32(Bytes(plain, plain.PcPlatform.Acpi.Rsdt, 8), 4));
        }
    }
}
