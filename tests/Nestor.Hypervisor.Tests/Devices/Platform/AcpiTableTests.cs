using System.Buffers.Binary;
using System.Text;
using Nestor.Hypervisor.Boot;
using Nestor.Hypervisor.Configuration;
using Nestor.Hypervisor.Devices.Platform.Acpi;
using Nestor.Hypervisor.Devices.Platform.Timers;
using Nestor.Hypervisor.Engines;
using Nestor.Hypervisor.Memory;
using Nestor.Hypervisor.Tests.Boot;
using Nestor.Machine.Addresses;
using static Iced.Intel.AssemblerRegisters;

namespace Nestor.Hypervisor.Tests.Devices.Platform;

/// <summary>The ACPI tables of a Multiboot boot (ACPI 6.5 §5.2), found as an OS finds them: a 32-bit guest scans the
/// BIOS area for the RSDP on 16-byte boundaries, as kvm-unit-tests' lib/x86/acpi.c does; the tables it leads to are
/// then checked field by field.</summary>
public class AcpiTableTests
{
    private const uint Found = 0x300000;

    /// <summary>A Multiboot kludge kernel at 2 MiB whose 32-bit code scans [0xE0000, 0x100000) for "RSD PTR " and
    /// stores the address it finds at <see cref="Found"/>.</summary>
    private static byte[] Scanner()
    {
        const uint Address = 0x200000, CodeOffset = 32;
        byte[] Code() => Nestor.Hypervisor.BuiltIn.GuestAssembler.Assemble(a =>
        {
            var scan = a.CreateLabel();
            var next = a.CreateLabel();
            var found = a.CreateLabel();
            a.mov(esi, 0xE0000);
            a.Label(ref scan);
            a.cmp(__dword_ptr[esi], 0x20445352);      // "RSD "
            a.jne(next);
            a.cmp(__dword_ptr[esi + 4], 0x20525450);  // "PTR "
            a.je(found);
            a.Label(ref next);
            a.add(esi, 16);
            a.cmp(esi, 0x100000);
            a.jb(scan);
            a.xor(esi, esi);
            a.Label(ref found);
            a.mov(__dword_ptr[Found], esi);
            a.mov(dx, 0xF4);
            a.xor(eax, eax);
            a.@out(dx, eax);
            a.hlt();
        }, Address + CodeOffset, bitness: 32);
        byte[] code = Code();
        uint end = Address + CodeOffset + (uint)code.Length;
        return [.. MultibootTestKernel.Header(1u << 16, Address, Address, end, end, Address + CodeOffset), .. code];
    }

    [Fact]
    public void An_OS_scanning_the_BIOS_area_finds_the_RSDP_and_every_table_it_leads_to()
    {
        using var vm = Vm.Create(new VmConfig
        {
            Engine = EngineKind.Sim,
            Kernel = new KernelImageSource("scanner", Scanner(), KernelFormat.Elf),
            Multiboot = true,
            Timeout = TimeSpan.FromSeconds(60),
        });
        using (var engine = new SimEngine())
        {
            Assert.Equal(0u, vm.Run(engine).Outcome.GuestStatus);
        }
        var memory = vm.Memory;
        uint rsdp = memory.ReadUInt32(new GuestPhysical(Found));
        Assert.Equal(vm.PcPlatform.Acpi!.Rsdp, rsdp);
        int cpus = vm.Vcpus.Count;

        var r = Bytes(memory, rsdp, 36);
        Assert.Equal(0, AcpiTables.Sum(r.AsSpan(0, 20)));
        Assert.Equal(0, AcpiTables.Sum(r));
        Assert.Equal(2, r[15]);
        uint rsdt = BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(16));
        ulong xsdt = BinaryPrimitives.ReadUInt64LittleEndian(r.AsSpan(24));
        var fromRsdt = Entries(memory, rsdt, "RSDT", 4);
        var fromXsdt = Entries(memory, xsdt, "XSDT", 8);
        Assert.Equal(fromRsdt, fromXsdt);
        var bySignature = fromRsdt.ToDictionary(a => Signature(memory, a), a => a);
        Assert.Equal(["APIC", "FACP", "HPET"], bySignature.Keys.Order());

        var fadt = Table(memory, bySignature["FACP"], "FACP");
        Assert.Equal(276, fadt.Length);
        Assert.Equal(6, fadt[8]);
        uint facs = BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(36));
        uint dsdt = BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(40));
        Assert.Equal(dsdt, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(140)));
        Assert.Equal(0u, facs % 64);
        Assert.Equal("FACS", Encoding.ASCII.GetString(Bytes(memory, facs, 4)));
        Assert.Equal(AcpiPowerManagement.TimerPort, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(76)));
        Assert.Equal(AcpiPowerManagement.EventBlock, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(56)));
        Assert.Equal(AcpiPowerManagement.ControlBlock, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(64)));
        Assert.Equal(AcpiTables.SciInterrupt, BinaryPrimitives.ReadUInt16LittleEndian(fadt.AsSpan(46)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(fadt.AsSpan(112)) & (1u << 8)); // 24-bit PM timer
        Assert.Equal(AcpiPowerManagement.TimerPort, BinaryPrimitives.ReadUInt64LittleEndian(fadt.AsSpan(212))); // X_PM_TMR_BLK

        var dsdtTable = Table(memory, dsdt, "DSDT");
        Assert.Equal(AcpiTables.DsdtAml(), dsdtTable[36..]);
        Assert.Contains("PCI0", Encoding.ASCII.GetString(dsdtTable));

        // MADT: one enabled local APIC per vCPU, the I/O APIC, IRQ 0 -> GSI 2.
        var madt = Table(memory, bySignature["APIC"], "APIC");
        Assert.Equal(0xFEE0_0000u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(36)));
        var apicIds = new List<int>();
        uint? ioApicAddress = null;
        var overrides = new Dictionary<int, uint>();
        for (int o = 44; o < madt.Length; o += madt[o + 1])
        {
            Assert.True(madt[o + 1] >= 2, "a MADT entry of length < 2");
            switch (madt[o])
            {
                case 0:
                    Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(o + 4)) & 1);
                    apicIds.Add(madt[o + 3]);
                    break;
                case 1:
                    ioApicAddress = BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(o + 4));
                    Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(o + 8)));
                    break;
                case 2:
                    overrides[madt[o + 3]] = BinaryPrimitives.ReadUInt32LittleEndian(madt.AsSpan(o + 4));
                    break;
            }
        }
        Assert.Equal(Enumerable.Range(0, cpus), apicIds);
        Assert.Equal((uint)Nestor.Hypervisor.Devices.Interrupts.IoApic.DefaultBase, ioApicAddress);
        Assert.Equal((uint)Pit8254.Gsi, overrides[0]);

        var hpet = Table(memory, bySignature["HPET"], "HPET");
        Assert.Equal((uint)Hpet.Capabilities, BinaryPrimitives.ReadUInt32LittleEndian(hpet.AsSpan(36)));
        Assert.Equal(Hpet.BaseAddress, BinaryPrimitives.ReadUInt64LittleEndian(hpet.AsSpan(44)));

        // All of it in the BIOS area the memory map reserves.
        foreach (ulong a in (ulong[])[rsdp, rsdt, xsdt, facs, dsdt, .. fromRsdt])
        {
            Assert.InRange(a, FirmwareMemoryMap.BiosAreaStart, FirmwareMemoryMap.ExtendedStart - 36);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void The_MADT_lists_one_enabled_local_APIC_per_vCPU(int cpus)
    {
        using var memory = new GuestMemory(4UL << 20);
        var at = AcpiTables.Write(memory, cpus, ioApicId: 0);
        var madt = Table(memory, at.Madt, "APIC");
        var ids = new List<int>();
        for (int o = 44; o < madt.Length; o += madt[o + 1])
        {
            if (madt[o] == 0)
            {
                ids.Add(madt[o + 3]);
            }
        }
        Assert.Equal(Enumerable.Range(0, cpus), ids);
    }

    [Fact]
    public void A_kernel_booted_by_the_Nestor_protocol_gets_no_tables_over_its_RAM()
    {
        var (status, vm, _) = PlatformGuest.Run(_ => { });
        using (vm)
        {
            Assert.Equal(0u, status);
            Assert.Null(vm.PcPlatform.Acpi);
            Assert.Equal(0UL, vm.Memory.ReadUInt64(new GuestPhysical(AcpiTables.Base)));
        }
    }

    private static byte[] Bytes(GuestMemory memory, ulong address, int length) => memory.Span(new GuestPhysical(address), length).ToArray();

    private static string Signature(GuestMemory memory, ulong address) => Encoding.ASCII.GetString(Bytes(memory, address, 4));

    /// <summary>The table at <paramref name="address"/>, checked: its signature, and a checksum that sums to zero.</summary>
    private static byte[] Table(GuestMemory memory, ulong address, string signature)
    {
        Assert.Equal(signature, Signature(memory, address));
        int length = (int)memory.ReadUInt32(new GuestPhysical(address + 4));
        var table = Bytes(memory, address, length);
        Assert.Equal(0, AcpiTables.Sum(table));
        Assert.Equal(AcpiTables.OemId, Encoding.ASCII.GetString(table, 10, 6));
        return table;
    }

    private static List<ulong> Entries(GuestMemory memory, ulong address, string signature, int size)
    {
        var table = Table(memory, address, signature);
        var entries = new List<ulong>();
        for (int o = 36; o < table.Length; o += size)
        {
            entries.Add(size == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(table.AsSpan(o)) : BinaryPrimitives.ReadUInt64LittleEndian(table.AsSpan(o)));
        }
        return entries;
    }
}
