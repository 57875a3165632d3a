using Nestor.Hypervisor.Devices.Platform.Pci;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>PCI configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2) with the 440FX host bridge at 00:00.0.</summary>
public class PciConfigurationTests
{
    [Fact]
    public void A_guest_finds_the_host_bridge_and_nothing_else_on_bus_0()
    {
        var (status, vm, message) = PlatformGuest.Run(a =>
        {
            void Select(uint address)
            {
                a.mov(dx, PciBus.AddressPort);
                a.mov(eax, address);
                a.@out(dx, eax);
            }
            Select(0x8000_0000);                       // 00:00.0, register 0: vendor and device
            a.mov(dx, PciBus.DataPort);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15], rax);
            Select(0x8000_0008);                       // revision and class code
            a.mov(dx, PciBus.DataPort);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15 + 8], rax);
            Select(0x8000_0000);
            a.mov(dx, PciBus.DataPort + 2);            // a word at offset 2: the device ID alone
            a.xor(eax, eax);
            a.@in(ax, dx);
            a.mov(__qword_ptr[r15 + 16], rax);
            Select(0x8000_0800);                       // 00:01.0: absent
            a.mov(dx, PciBus.DataPort);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15 + 24], rax);
            Select(0x0000_0000);                       // enable bit clear: no configuration cycle
            a.mov(dx, PciBus.DataPort);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15 + 32], rax);
            Select(0x8000_0004);                       // command: write all ones, read back what is writable
            a.mov(dx, PciBus.DataPort);
            a.mov(eax, 0xFFFF_FFFF);
            a.@out(dx, eax);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15 + 40], rax);
            Select(0x8000_0000);                       // the vendor ID is read-only
            a.mov(dx, PciBus.DataPort);
            a.mov(eax, 0);
            a.@out(dx, eax);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15 + 48], rax);
            a.mov(dx, PciBus.AddressPort);             // CONFIG_ADDRESS reads back, reserved bits clear
            a.mov(eax, 0xFFFF_FFFF);
            a.@out(dx, eax);
            a.@in(eax, dx);
            a.mov(__qword_ptr[r15 + 56], rax);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(((ulong)I440fxHostBridge.Device440fx << 16) | I440fxHostBridge.VendorIntel, PlatformGuest.Slot(vm, 0));
            Assert.Equal(0x0600_0002UL, PlatformGuest.Slot(vm, 1));  // class 06 (bridge), subclass 00 (host), revision 2
            Assert.Equal((ulong)I440fxHostBridge.Device440fx, PlatformGuest.Slot(vm, 2));
            Assert.Equal(0xFFFF_FFFFUL, PlatformGuest.Slot(vm, 3));
            Assert.Equal(0xFFFF_FFFFUL, PlatformGuest.Slot(vm, 4));
            Assert.Equal(0x0000_0007UL, PlatformGuest.Slot(vm, 5));  // command bits 0-2; status read-only 0
            Assert.Equal(0x1237_8086UL, PlatformGuest.Slot(vm, 6));
            Assert.Equal(0x80FF_FFFCUL, PlatformGuest.Slot(vm, 7));
            Assert.Equal(2, vm.PcPlatform.Pci.AbsentAccesses);
            Assert.Equal(0, vm.Bus.UnclaimedAccesses.Total);
        }
    }

    [Fact]
    public void Functions_register_once_and_their_configuration_survives_a_snapshot()
    {
        var bus = new PciBus();
        var bridge = new I440fxHostBridge();
        bus.Add(0, 0, bridge);
        Assert.Throws<InvalidOperationException>(() => bus.Add(0, 0, new I440fxHostBridge()));
        bus.Write(PciBus.AddressPort, 4, 0x8000_0058);
        bus.Write(PciBus.DataPort + 1, 1, 0x33);     // PAM0 at 0x59
        var writer = new Persistence.SnapshotWriter();
        writer.WriteSection(bus);
        writer.WriteSection(bridge);
        var bus2 = new PciBus();
        var bridge2 = new I440fxHostBridge();
        bus2.Add(0, 0, bridge2);
        var reader = new Persistence.SnapshotReader(writer.ToArray());
        reader.ReadSection(bus2);
        reader.ReadSection(bridge2);
        Assert.Equal(0x8000_0058u, bus2.Address);
        Assert.Equal(0x33u, bus2.Read(PciBus.DataPort + 1, 1));
    }
}
