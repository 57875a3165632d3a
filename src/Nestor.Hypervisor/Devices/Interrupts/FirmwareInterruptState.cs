using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Interrupts;

/// <summary>The interrupt state SeaBIOS leaves for a kernel QEMU boots with <c>-kernel</c> (Multiboot), measured on
/// QEMU 7.2 with a probe kernel (docs/boot-protocol.md, "Firmware state"): both 8259s initialized (edge, ICW4 8086
/// mode, master base 0x08 with the slave on IR2, slave base 0x70), IMR 0xB8/0x8E (IRQs 0, 1, 2, 6, 8, 12, 13, 14
/// unmasked), ELCR 0x00/0x0C (IRQs 10 and 11 level, for PCI), PIT counter 0 in mode 2 with count 65536 (18.2 Hz), the
/// bootstrap processor's local APIC software-enabled (SVR 0x1FF) with LINT0 = ExtINT and LINT1 = NMI, and a real-mode
/// interrupt vector table whose IRQ entries end the interrupt at the 8259s and return.</summary>
public static class FirmwareInterruptState
{
    /// <summary>Where the IVT's handlers are placed: F000:FF00, in the BIOS area below the reset vector.</summary>
    public const ulong HandlerBase = 0xFFF00;

    /// <summary>Measured on QEMU 7.2 (SeaBIOS 1.16): the IMRs, the ELCR and the vector bases.</summary>
    public const byte MasterMask = 0xB8, SlaveMask = 0x8E, MasterElcr = 0x00, SlaveElcr = 0x0C, MasterBase = 0x08, SlaveBase = 0x70;

    /// <summary>The measured LVT LINT0 (ExtINT, unmasked), LINT1 (NMI) and spurious-vector register (enabled, 0xFF).</summary>
    public const uint Lint0 = 0x700, Lint1 = 0x400, SpuriousVector = 0x1FF;

    // 16-bit handlers: EOI the master (IRQs 0-7) or the slave then the master (IRQs 8-15), then IRET; and a bare IRET
    // for the other vectors (SeaBIOS points unused vectors at an IRET).
    private static readonly byte[] MasterHandler = [0x50, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0xCF]; // push ax; mov al,20h; out 20h,al; pop ax; iret
    private static readonly byte[] SlaveHandler = [0x50, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF];
    private static readonly byte[] ReturnHandler = [0xCF];

    /// <summary>Puts <paramref name="vm"/>'s 8259s, ELCR, PIT counter 0, IVT and BSP local APIC in the measured state.</summary>
    internal static void Apply(Vm vm, Platform.Timers.Pit8254 pit)
    {
        var pic = vm.Pic;
        // ICW1 edge, cascade, ICW4; ICW2 base; ICW3 (master: slave on IR2; slave: identity 2); ICW4 8086 mode.
        pic.Write(Pic8259Pair.MasterCommand, 1, 0x11);
        pic.Write(Pic8259Pair.MasterData, 1, MasterBase);
        pic.Write(Pic8259Pair.MasterData, 1, 1 << Pic8259Pair.CascadeLine);
        pic.Write(Pic8259Pair.MasterData, 1, 0x01);
        pic.Write(Pic8259Pair.SlaveCommand, 1, 0x11);
        pic.Write(Pic8259Pair.SlaveData, 1, SlaveBase);
        pic.Write(Pic8259Pair.SlaveData, 1, Pic8259Pair.CascadeLine);
        pic.Write(Pic8259Pair.SlaveData, 1, 0x01);
        pic.Write(Pic8259Pair.MasterData, 1, MasterMask);
        pic.Write(Pic8259Pair.SlaveData, 1, SlaveMask);
        pic.ElcrPorts.Write(Pic8259Pair.ElcrMaster, 1, MasterElcr);
        pic.ElcrPorts.Write(Pic8259Pair.ElcrSlave, 1, SlaveElcr);
        // PIT counter 0: control 0x34 (LSB then MSB, mode 2, binary), count 0 = 65536 (read back on QEMU: status 0x34).
        pit.Write(Platform.Timers.Pit8254.ControlPort, 1, 0x34);
        pit.Write(Platform.Timers.Pit8254.FirstPort, 1, 0);
        pit.Write(Platform.Timers.Pit8254.FirstPort, 1, 0);
        // The IVT: 256 far pointers F000:offset.
        ulong master = HandlerBase, slave = master + (ulong)MasterHandler.Length, bare = slave + (ulong)SlaveHandler.Length;
        vm.Memory.Write(new GuestPhysical(master), MasterHandler);
        vm.Memory.Write(new GuestPhysical(slave), SlaveHandler);
        vm.Memory.Write(new GuestPhysical(bare), ReturnHandler);
        for (int vector = 0; vector < 256; vector++)
        {
            ulong handler = vector is >= MasterBase and < MasterBase + 8 ? master : vector is >= SlaveBase and < SlaveBase + 8 ? slave : bare;
            vm.Memory.WriteUInt32(new GuestPhysical((ulong)vector * 4), 0xF000_0000u | (uint)(handler - 0xF0000));
        }
        ref var apic = ref vm.Vcpus[0].State.Apic;
        apic.SpuriousVector = SpuriousVector;
        apic.LvtLint0 = Lint0;
        apic.LvtLint1 = Lint1;
    }
}
