using Nestor.Hypervisor.Devices.DmaRemapping;
using Iced.Intel;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Platform;
using Nestor.Hypervisor.Devices.Platform.Iommu;
using Nestor.Hypervisor.Devices.Platform.Pci.Edu;
using Nestor.Hypervisor.Devices.Testing;
using static Iced.Intel.AssemblerRegisters;
using static Nestor.Hypervisor.Devices.Platform.Iommu.DmaRemappingHardwareUnit;
using static Nestor.Hypervisor.Tests.Devices.Iommu.PcDeviceGuest;

namespace Nestor.Hypervisor.Tests.Devices.Iommu;

/// <summary>The guest's VT-d unit (<c>--device intel-iommu</c>, VT-d specification rev. 4): its registers as
/// kvm-unit-tests' vtd_init checks them, DMA remapping through legacy root/context tables and second-level tables in
/// guest memory, faults, the invalidation queue and interrupt remapping.</summary>
public class DmaRemappingHardwareUnitTests
{
    private static readonly PlatformDevices Both = new() { IntelIommu = true, Edu = true };
    private const uint RootTable = 0x800000, ContextTable = 0x801000, Level3 = 0x802000, Level2 = 0x803000, Level1 = 0x804000;
    private const uint Queue = 0x810000, WaitStatus = 0x811000, RemapTable = 0x812000;
    private const uint Page = 0x500000, LargePage = 0x600000;

    // Legacy mode (§9.1, §9.3): bus 0's root entry, 00:01.0's context entry (3-level table, AW 001b, domain 1), and
    // a second-level table mapping IOVA 0 to Page (4 KiB, read/write) and IOVA 2 MiB to LargePage (a 2 MiB page).
    private static void BuildTables(Assembler a)
    {
        Poke64(a, RootTable, ContextTable | 1);
        Poke64(a, ContextTable + EduDevice.SourceId * 16, Level3 | 1);
        Poke64(a, ContextTable + EduDevice.SourceId * 16 + 8, 1 | (1 << 8));
        Poke64(a, Level3, Level2 | 3);
        Poke64(a, Level2, Level1 | 3);
        Poke64(a, Level2 + 8, LargePage | 0x83);
        Poke64(a, Level1, Page | 3);
        Poke64(a, Vtd + RootTableAddress, RootTable);
    }

    [Fact]
    public void Registers_read_as_vtd_init_checks_them_and_each_global_command_shows_in_the_status()
    {
        var (status, vm, message) = BootGuest(new PlatformDevices { IntelIommu = true }, a =>
        {
            Load(a, Vtd + DmaRemappingHardwareUnit.Version); Store(a, 0);
            Load(a, Vtd + Capability); Store(a, 1);
            Load(a, Vtd + Capability + 4); Store(a, 2);
            Load(a, Vtd + ExtendedCapability); Store(a, 3);
            Load(a, Vtd + FaultStatus); Store(a, 4);
            Load(a, Vtd + GlobalStatus); Store(a, 5);
            Poke64(a, Vtd + RootTableAddress, RootTable);
            Command(a, SetRootTablePointer, 6);
            Poke64(a, Vtd + QueueAddress, Queue);
            Command(a, QueuedInvalidationEnable, 7);
            Poke64(a, Vtd + InterruptRemappingTableAddress, RemapTable | 3);
            Command(a, SetInterruptRemapTablePointer, 8);
            Command(a, TranslationEnable, 9);
            Command(a, InterruptRemappingEnable, 10);
            Command(a, 0, 11);                   // writing the states back changes nothing
            Load(a, Vtd + GlobalStatus);
            a.and(eax, ~TranslationEnable);
            a.mov(edi, Vtd + DmaRemappingHardwareUnit.GlobalCommand);
            a.mov(__dword_ptr[edi], eax);              // TE cleared: translation off, the rest stays
            Load(a, Vtd + GlobalStatus); Store(a, 12);
            Load(a, Vtd + FaultStatus); Store(a, 13);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(VersionValue, Slot(vm, 0));
            ulong cap = Slot(vm, 1) | ((ulong)Slot(vm, 2) << 32);
            Assert.Equal(CapabilityValue, cap);
            Assert.NotEqual(0UL, cap & (1UL << 9));   // SAGAW: 39-bit (3-level) tables
            Assert.NotEqual(0UL, cap & (1UL << 34));  // SLLPS: 2 MiB pages
            Assert.Equal(0x22UL, (cap >> 24) & 0x3FF); // FRO: the fault recording register at 0x220
            uint ecap = Slot(vm, 3);
            Assert.Equal(QueuedInvalidation | InterruptRemappingSupport, ecap & 0x1E); // QI, IR; EIM off (eim=off)
            Assert.Equal(0u, Slot(vm, 4));
            Assert.Equal(0u, Slot(vm, 5));
            Assert.Equal(SetRootTablePointer, Slot(vm, 6));
            Assert.Equal(SetRootTablePointer | QueuedInvalidationEnable, Slot(vm, 7));
            uint withTables = SetRootTablePointer | QueuedInvalidationEnable | SetInterruptRemapTablePointer;
            Assert.Equal(withTables, Slot(vm, 8));
            Assert.Equal(withTables | TranslationEnable, Slot(vm, 9));
            Assert.Equal(withTables | TranslationEnable | InterruptRemappingEnable, Slot(vm, 10));
            Assert.Equal(withTables | TranslationEnable | InterruptRemappingEnable, Slot(vm, 11));
            Assert.Equal(withTables | InterruptRemappingEnable, Slot(vm, 12));
            Assert.Equal(0u, Slot(vm, 13));
            Assert.Equal(0, vm.Bus.UnclaimedAccesses.Total);
        }
    }

    [Fact]
    public void Edu_DMA_is_translated_by_4_KiB_and_2_MiB_pages_and_an_unmapped_IOVA_is_blocked_with_a_fault_recorded()
    {
        var (status, vm, message) = BootGuest(Both, a =>
        {
            BuildTables(a);
            Command(a, SetRootTablePointer, 0);
            Command(a, TranslationEnable, 1);
            Poke(a, Edu + (uint)EduDevice.BufferAddress, 0x1111_2222);
            EduDma(a, (uint)EduDevice.BufferAddress, 0x10, 4, 1 | 2);         // IOVA 0x10: Page + 0x10
            EduDma(a, (uint)EduDevice.BufferAddress, 0x20_0040, 4, 1 | 2);    // IOVA 2 MiB + 0x40: LargePage + 0x40
            EduDma(a, (uint)EduDevice.BufferAddress, 0x1000, 4, 1 | 2);       // IOVA 4 KiB: not mapped
            Load(a, Vtd + FaultStatus); Store(a, 2);
            Load(a, Vtd + FaultRecording); Store(a, 3);
            Load(a, Vtd + FaultRecording + 8); Store(a, 4);
            Load(a, Vtd + FaultRecording + 12); Store(a, 5);
            Poke(a, Vtd + FaultRecording + 12, 1u << 31);                     // F is write-1-to-clear
            Load(a, Vtd + FaultStatus); Store(a, 6);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(0x1111_2222u, Ram(vm, Page + 0x10));
            Assert.Equal(0x1111_2222u, Ram(vm, LargePage + 0x40));
            Assert.NotEqual(0x1111_2222u, Ram(vm, 0x10)); // not written untranslated (0x10 holds the firmware's IVT entry 4)
            Assert.Equal(0u, Ram(vm, 0x1000));
            Assert.Equal(2u, Slot(vm, 2) & 3);                  // FSTS.PPF, no overflow
            Assert.Equal(0x1000u, Slot(vm, 3));                 // the faulting page
            Assert.Equal((uint)EduDevice.SourceId, Slot(vm, 4) & 0xFFFF);
            Assert.Equal(0x8000_0000u | SecondLevelWalk.WriteDenied, Slot(vm, 5)); // F, a write (T = 0), reason 5
            Assert.Equal(0u, Slot(vm, 6) & 2);
            Assert.Equal(1, vm.PcPlatform.Edu!.TransfersRefused);
            Assert.Equal(1, vm.PcPlatform.RemappingUnit!.Faults);
        }
    }

    [Fact]
    public void The_invalidation_queue_completes_a_wait_descriptor_by_writing_its_status_and_stops_at_an_invalid_one()
    {
        var (status, vm, message) = BootGuest(new PlatformDevices { IntelIommu = true }, a =>
        {
            Poke64(a, Vtd + QueueTail, 0);
            Poke64(a, Vtd + QueueAddress, Queue);
            Command(a, QueuedInvalidationEnable, 0);
            // §6.5.2: an IOTLB global invalidation (type 2, granularity 01b), then a wait (type 5) with SW (bit 5),
            // its status data in bits 63:32 and the status address in the high quadword.
            Poke64(a, Queue, 2 | (1 << 4));
            Poke64(a, Queue + 16, 5 | (1 << 5) | (0xCAFEUL << 32));
            Poke64(a, Queue + 24, WaitStatus);
            Poke64(a, Vtd + QueueTail, 0x20);
            Load(a, WaitStatus); Store(a, 1);
            Load(a, Vtd + QueueHead); Store(a, 2);
            Load(a, Vtd + FaultStatus); Store(a, 3);
            Poke64(a, Queue + 32, 0xE);                          // no such descriptor type
            Poke64(a, Vtd + QueueTail, 0x30);
            Load(a, Vtd + QueueHead); Store(a, 4);
            Load(a, Vtd + FaultStatus); Store(a, 5);
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(QueuedInvalidationEnable, Slot(vm, 0) & QueuedInvalidationEnable);
            Assert.Equal(0xCAFEu, Slot(vm, 1));
            Assert.Equal(0x20u, Slot(vm, 2));
            Assert.Equal(0u, Slot(vm, 3));
            Assert.Equal(0x20u, Slot(vm, 4));                    // the head stays at the bad descriptor
            Assert.Equal(1u << 4, Slot(vm, 5) & (1u << 4));      // FSTS.IQE
        }
    }

    // §9.10: a present, remapped-mode IRTE for a fixed interrupt to APIC 0 with the given vector.
    private static void Irte(Assembler a, int index, int vector, uint destination = 0) =>
        Poke64(a, RemapTable + (uint)index * 16, 1 | ((ulong)vector << 16) | ((ulong)destination << 40));

    private static void EnableRemapping(Assembler a)
    {
        Poke64(a, Vtd + InterruptRemappingTableAddress, RemapTable | 3); // 16 entries
        Command(a, SetInterruptRemapTablePointer, 30);
        Command(a, InterruptRemappingEnable, 31);
    }

    [Fact]
    public void An_MSI_in_the_remappable_format_reaches_the_vector_its_IRTE_names_and_a_compatibility_one_is_blocked()
    {
        var (status, vm, message) = BootGuest(Both, a =>
        {
            Irte(a, 2, RemappedVector);
            EnableRemapping(a);
            a.sti();
            // Edu's MSI: the remappable format (§5.1.5.2), handle 2 in address bits 19:5, bit 4 set; data 0.
            ConfigWrite(a, 8, 0x44, 0xFEE0_0000 | (2 << 5) | (1 << 4));
            ConfigWrite(a, 8, 0x48, 0);
            ConfigWrite(a, 8, 0x4C, 0);
            Select(a, 8, 0x42);
            a.mov(ax, 0x81);
            a.@out(dx, ax);
            Poke(a, Edu + 0x60, 1);
            a.nop();
            // A compatibility-format MSI while CFIS is clear is blocked (§5.1.2.1).
            ConfigWrite(a, 8, 0x44, 0xFEE0_0000);
            ConfigWrite(a, 8, 0x4C, MsiVector);
            Poke(a, Edu + 0x60, 2);
            a.nop();
            a.cli();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1u, Slot(vm, RemappedVector - FirstVector));
            Assert.Equal(0u, Slot(vm, MsiVector - FirstVector));
            Assert.Equal(1, vm.PcPlatform.RemappingUnit!.Interrupts.Remapped);
            Assert.Equal(1, vm.PcPlatform.RemappingUnit!.Interrupts.Blocked);
        }
    }

    [Fact]
    public void An_IO_APIC_entry_in_the_remappable_format_is_delivered_through_its_IRTE()
    {
        const int Pin = 14;
        var (status, vm, message) = BootGuest(new PlatformDevices { IntelIommu = true }, a =>
        {
            Irte(a, 1, RemappedVector);
            EnableRemapping(a);
            // §5.1.5.1: bit 48 the format, the handle's bits 14:0 in 63:49 (index 1), vector field as the IRTE's
            // (the EOI matches it), edge.
            a.mov(__dword_ptr[esi], 0x10 + 2 * Pin + 1);
            a.mov(__dword_ptr[esi + 0x10], (1 << 17) | (1 << 16));
            a.mov(__dword_ptr[esi], 0x10 + 2 * Pin);
            a.mov(__dword_ptr[esi + 0x10], OtherVector);
            a.sti();
            a.mov(dx, (ushort)(PcTestDevice.IrqLinePort + Pin));
            a.mov(al, 1);
            a.@out(dx, al);
            a.mov(al, 0);
            a.@out(dx, al);
            a.nop();
            a.cli();
        });
        using (vm)
        {
            Assert.True(status == 0, message);
            Assert.Equal(1u, Slot(vm, RemappedVector - FirstVector));
            Assert.Equal(0u, Slot(vm, OtherVector - FirstVector));
            Assert.Equal(1, vm.PcPlatform.RemappingUnit!.Interrupts.Remapped);
        }
    }

    [Fact]
    public void An_IRTE_names_the_destination_APIC_the_remapped_interrupt_goes_to()
    {
        var memory = new Memory.GuestMemory(1UL << 20);
        var ioApic = new IoApic();
        (uint Destination, int Vector)? sent = null;
        ioApic.Bus = (destination, logical, lowest, vector, level) => { sent = (destination, vector); return true; };
        var unit = new DmaRemappingHardwareUnit(memory, ioApic);
        memory.WriteUInt64(new Machine.Addresses.GuestPhysical(0x10000 + 5 * 16), 1 | (0x61UL << 16) | (3UL << 40));
        unit.Write(BaseAddress + InterruptRemappingTableAddress, 8, 0x10000 | 3);
        unit.Write(BaseAddress + DmaRemappingHardwareUnit.GlobalCommand, 4, SetInterruptRemapTablePointer);
        unit.Write(BaseAddress + DmaRemappingHardwareUnit.GlobalCommand, 4, SetInterruptRemapTablePointer | InterruptRemappingEnable);
        Assert.True(unit.DeliverMessage(0xFEE0_0000 | (5 << 5) | (1 << 4), 0x30, EduDevice.SourceId));
        Assert.Equal((3u, 0x61), sent);
        // Beyond the table's 16 entries: blocked, nothing sent.
        sent = null;
        Assert.False(unit.DeliverMessage(0xFEE0_0000 | (16 << 5) | (1 << 4), 0, EduDevice.SourceId));
        Assert.Null(sent);
    }
}
