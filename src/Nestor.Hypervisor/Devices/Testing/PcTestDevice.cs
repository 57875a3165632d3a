using System.Buffers.Binary;
using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Testing;

/// <summary>QEMU's ISA test device <c>pc-testdev</c> (QEMU hw/misc/pc-testdev.c), which kvm-unit-tests' x86 harness
/// always adds (<c>-device pc-testdev</c>) and its tests drive: a 32-bit scratch register at ports 0xE0–0xE3 (any
/// access size, byte lanes by port &amp; 3) and again at 0xE8–0xEB (split into byte accesses); a "flush page" port at
/// 0xE4 (32-bit writes: QEMU re-protects the host mapping of the guest page named by the value so that an
/// accelerator must fault it in again; the software machine has no such host state, so the write is counted and
/// has no other effect); 24 interrupt-line ports from 0x2000 (byte writes: port 0x2000 + n sets ISA IRQ n to the
/// value's truth, as <c>qemu_set_irq</c>, so each write of 1 is an assertion the I/O APIC sees); and 64 KiB of
/// scratch MMIO at 0xFF000000 (<c>IORAM_BASE_PHYS</c> of the tests). ISA IRQ n is GSI n except IRQ 0, which is GSI 2
/// (QEMU's <c>ioapic_set_irq</c> and the MADT's interrupt source override); lines 16–23, which QEMU's ISA bus does
/// not have (it asserts), drive GSIs 16–23. Nestor attaches it to every VM booted the PC way (Multiboot), as the
/// suite's harness does; it is not on the Nestor boot protocol's machine.</summary>
public sealed class PcTestDevice : IPortDevice, IMmioDevice, ISnapshottable
{
    public const ushort DataPort = 0xE0, FlushPort = 0xE4, ByteDataPort = 0xE8, PortCount = 12;
    public const ushort IrqLinePort = 0x2000;
    public const int IrqLines = 24;
    public const ulong IoMemoryBase = 0xFF00_0000, IoMemoryLength = 0x1_0000;

    private readonly InterruptController interrupts;
    private readonly byte[] ioMemory = new byte[IoMemoryLength];
    private uint data;

    public PcTestDevice(InterruptController interrupts)
    {
        this.interrupts = interrupts;
        IrqLinePorts = new LinePorts(this);
    }

    public string Name => "pc-testdev";

    /// <summary>Page flushes the guest asked for (port 0xE4).</summary>
    public long PageFlushes { get; private set; }

    /// <summary>The 32-bit scratch register of ports 0xE0 and 0xE8.</summary>
    public uint Data => data;

    /// <summary>The GSI that ISA IRQ <paramref name="line"/> drives.</summary>
    public static int GsiOf(int line) => line == 0 ? 2 : line;

    /// <summary>The interrupt-line ports as their own device (they are far from 0xE0 on the port bus).</summary>
    public IPortDevice IrqLinePorts { get; }

    public uint Read(ushort port, int size)
    {
        if (port >= FlushPort && port < ByteDataPort)
        {
            return 0xFFFF_FFFF >> (32 - 8 * size); // write-only (QEMU's region has no read: an open bus)
        }
        uint value = 0;
        for (int i = 0; i < size; i++)
        {
            int p = port + i;
            if (p < DataPort + PortCount && !(p >= FlushPort && p < ByteDataPort))
            {
                value |= ((data >> (8 * (p & 3))) & 0xFF) << (8 * i);
            }
            else
            {
                value |= 0xFFu << (8 * i);
            }
        }
        return value;
    }

    public void Write(ushort port, int size, uint value)
    {
        if (port >= FlushPort && port < ByteDataPort)
        {
            if (port == FlushPort && size == 4)
            {
                PageFlushes++;
            }
            return;
        }
        for (int i = 0; i < size; i++)
        {
            int p = port + i;
            if (p < DataPort + PortCount && !(p >= FlushPort && p < ByteDataPort))
            {
                int shift = 8 * (p & 3);
                data = (data & ~(0xFFu << shift)) | (((value >> (8 * i)) & 0xFF) << shift);
            }
        }
    }

    /// <summary>Sets ISA IRQ <paramref name="line"/> to <paramref name="level"/>. A write of 1 to a line that is
    /// already high is still an assertion (QEMU's <c>qemu_set_irq</c> does not compare levels): an edge-triggered
    /// I/O APIC pin takes it as a new edge, a level-triggered one as the level it already had.</summary>
    public void SetLine(int line, bool level)
    {
        int gsi = GsiOf(line);
        if (level && interrupts[gsi].Asserted)
        {
            interrupts.SetLine(gsi, false);
        }
        interrupts.SetLine(gsi, level);
    }

    public ulong Read(ulong address, int size)
    {
        ulong offset = address - IoMemoryBase;
        Span<byte> bytes = stackalloc byte[8];
        bytes.Clear();
        for (int i = 0; i < size && offset + (ulong)i < IoMemoryLength; i++)
        {
            bytes[i] = ioMemory[offset + (ulong)i];
        }
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    public void Write(ulong address, int size, ulong value)
    {
        ulong offset = address - IoMemoryBase;
        for (int i = 0; i < size && offset + (ulong)i < IoMemoryLength; i++)
        {
            ioMemory[offset + (ulong)i] = (byte)(value >> (8 * i));
        }
    }

    public string SectionTag => "TDEV";

    public ushort SectionVersion => 1;

    /// <summary>The scratch register, the flush count and the MMIO scratch memory.</summary>
    public void Save(SnapshotWriter writer)
    {
        writer.WriteUInt32(data);
        writer.WriteInt64(PageFlushes);
        writer.WriteBytes(ioMemory);
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        data = reader.ReadUInt32();
        PageFlushes = reader.ReadInt64();
        reader.ReadBytes(ioMemory.Length).CopyTo(ioMemory);
    }

    private sealed class LinePorts(PcTestDevice device) : IPortDevice
    {
        public string Name => "pc-testdev-irq";

        public uint Read(ushort port, int size) => 0xFFFF_FFFF >> (32 - 8 * size); // write-only

        public void Write(ushort port, int size, uint value)
        {
            // QEMU's region takes byte accesses only (valid.min/max_access_size = 1); wider ones are dropped.
            if (size == 1)
            {
                device.SetLine(port - IrqLinePort, value != 0);
            }
        }
    }
}
