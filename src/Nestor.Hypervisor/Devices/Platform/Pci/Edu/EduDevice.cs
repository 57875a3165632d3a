using Nestor.Hypervisor.Devices.Platform.Iommu;
using Nestor.Hypervisor.Persistence;
using Nestor.Machine.Addresses;

namespace Nestor.Hypervisor.Devices.Platform.Pci.Edu;

/// <summary>QEMU's educational PCI device <c>edu</c> (QEMU docs/specs/edu.rst, its behaviour as fact) at 00:01.0,
/// where QEMU's q35 puts the first <c>-device edu</c>: BAR0's registers — identification 0x00 (0x010000ED), liveness
/// 0x04 (reads the inverse of what was written), factorial 0x08 with status 0x20 (bit 0 computing, bit 7 raise
/// interrupt 0x001 when done), interrupt status 0x24, raise 0x60 (ORed into the status), acknowledge 0x64 (cleared
/// from it), DMA source 0x80, destination 0x88, count 0x90, command 0x98 (bit 0 start, bit 1 direction 1 = from the
/// device to RAM, bit 2 raise interrupt 0x100 when done) — and its 4 KiB DMA buffer at device address 0x40000. The
/// interrupt is INTx (pin A, level, while the status is non-zero) or, with MSI enabled, one message per raise. DMA and
/// MSI go through the VT-d unit when the VM has one, and need the command register's bus master bit. Computation and
/// DMA complete within the register write that starts them (QEMU runs them on a thread and a timer; the guest polls
/// either way).</summary>
public sealed class EduDevice : IMmioDevice, ISnapshottable
{
    /// <summary>Where QEMU puts it: device 1, function 0.</summary>
    public const int Device = 1, Function = 0;

    /// <summary>Its requester ID (bus 0, device 1, function 0).</summary>
    public const ushort SourceId = (Device << 3) | Function;

    /// <summary>Identification register: version 1.0, 0xED.</summary>
    public const uint Identification = 0x0100_00ED;

    /// <summary>The DMA buffer's device address and size.</summary>
    public const ulong BufferAddress = 0x40000, BufferSize = 4096;

    private readonly Vm vm;
    private readonly DmaRemappingHardwareUnit? iommu;
    private readonly byte[] buffer = new byte[BufferSize];
    private uint liveness, factorial, status, interruptStatus;
    private ulong dmaSource, dmaDestination, dmaCount, dmaCommand;
    private bool lineAsserted;

    public EduDevice(Vm vm, DmaRemappingHardwareUnit? iommu)
    {
        this.vm = vm;
        this.iommu = iommu;
        Configuration.Changed = UpdateLine;
    }

    public string Name => "edu";

    /// <summary>Its configuration space.</summary>
    public EduConfiguration Configuration { get; } = new();

    /// <summary>MSIs sent and accepted, and INTx assertions.</summary>
    public long MessagesSent { get; private set; }

    /// <inheritdoc cref="MessagesSent"/>
    public long LineAssertions { get; private set; }

    /// <summary>DMA transfers completed, and those refused (blocked by the IOMMU, outside RAM or the buffer, bus
    /// mastering off).</summary>
    public long Transfers { get; private set; }

    /// <inheritdoc cref="Transfers"/>
    public long TransfersRefused { get; private set; }

    public ulong Read(ulong address, int size)
    {
        if (!Decodes(address, out int offset))
        {
            return size == 8 ? ulong.MaxValue : (1UL << (8 * size)) - 1;
        }
        ulong value = offset switch
        {
            0x00 => Identification,
            0x04 => ~liveness,
            0x08 => factorial,
            0x20 => status,
            0x24 => interruptStatus,
            0x80 => dmaSource,
            0x88 => dmaDestination,
            0x90 => dmaCount,
            0x98 => dmaCommand,
            >= 0x40000 and < 0x41000 => BufferBytes(offset - 0x40000, size),
            _ => 0xFFFF_FFFF_FFFF_FFFF, // QEMU's edu returns all ones for registers it does not have
        };
        return size == 8 ? value : value & ((1UL << (8 * size)) - 1);
    }

    private ulong BufferBytes(int at, int size)
    {
        ulong value = 0;
        for (int i = 0; i < size && at + i < buffer.Length; i++)
        {
            value |= (ulong)buffer[at + i] << (8 * i);
        }
        return value;
    }

    public void Write(ulong address, int size, ulong value)
    {
        if (!Decodes(address, out int offset))
        {
            return;
        }
        uint low = (uint)value;
        switch (offset)
        {
            case 0x04: liveness = low; break;
            case 0x08:
                factorial = Factorial(low);
                if ((status & 0x80) != 0)
                {
                    Raise(0x001);
                }
                break;
            case 0x20: status = (status & 1) | (low & 0x80); break;
            case 0x60: Raise(low); break;
            case 0x64:
                interruptStatus &= ~low;
                UpdateLine();
                break;
            case 0x80: dmaSource = size == 8 ? value : low; break;
            case 0x88: dmaDestination = size == 8 ? value : low; break;
            case 0x90: dmaCount = size == 8 ? value : low; break;
            case 0x98:
                dmaCommand = low & 7;
                if ((dmaCommand & 1) != 0)
                {
                    Transfer();
                }
                break;
            default:
                if (offset >= 0x40000 && offset + size <= 0x41000)
                {
                    BitConverter.GetBytes(value).AsSpan(0, size).CopyTo(buffer.AsSpan(offset - 0x40000));
                }
                break;
        }
    }

    private bool Decodes(ulong address, out int offset)
    {
        offset = (int)(address - EduConfiguration.BarAddress);
        // The bus claim is the BAR's reset place; the device answers there only while its memory space is enabled
        // and the BAR still points there.
        return Configuration.MemoryEnabled && Configuration.Bar0 == EduConfiguration.BarAddress;
    }

    private static uint Factorial(uint n)
    {
        uint result = 1;
        for (uint i = 2; i <= n; i++)
        {
            result *= i; // modulo 2^32, as the 32-bit register keeps it
        }
        return result;
    }

    // edu.rst: "raise interrupt" ORs the value into the interrupt status and raises the interrupt.
    private void Raise(uint bits)
    {
        interruptStatus |= bits;
        if (interruptStatus == 0)
        {
            return;
        }
        if (Configuration.MsiEnabled)
        {
            if (Configuration.BusMasterEnabled && SendMessage(Configuration.MsiAddress, Configuration.MsiData))
            {
                MessagesSent++;
            }
            return;
        }
        UpdateLine();
    }

    private bool SendMessage(ulong address, uint data) => iommu is not null
        ? iommu.DeliverMessage(address, data, SourceId)
        : Interrupts.MessageSignalledInterrupt.Deliver(vm.IoApic, address, data);

    // INTx is level: asserted while the interrupt status is non-zero, MSI is off and Command.ID is clear (PCI 3.0
    // §6.2.2). QEMU's PIIX and ICH9 deliver a PCI interrupt at the I/O APIC input of the ISA IRQ its PIRQ is routed to,
    // which SeaBIOS writes into the line register.
    private void UpdateLine()
    {
        bool level = interruptStatus != 0 && !Configuration.MsiEnabled && !Configuration.IntxDisabled;
        if (level == lineAsserted)
        {
            return;
        }
        lineAsserted = level;
        LineAssertions += level ? 1 : 0;
        vm.Interrupts.SetLine(Configuration.Line, level);
    }

    private void Transfer()
    {
        bool fromDevice = (dmaCommand & 2) != 0;
        ulong device = fromDevice ? dmaSource : dmaDestination, ram = fromDevice ? dmaDestination : dmaSource;
        bool done = false;
        if (Configuration.BusMasterEnabled && dmaCount <= BufferSize && device >= BufferAddress && device - BufferAddress + dmaCount <= BufferSize)
        {
            done = Copy(ram, buffer.AsSpan((int)(device - BufferAddress), (int)dmaCount), fromDevice);
        }
        if (done)
        {
            Transfers++;
        }
        else
        {
            TransfersRefused++;
        }
        dmaCommand &= ~1UL;
        if ((dmaCommand & 4) != 0)
        {
            Raise(0x100);
        }
    }

    // Page by page through the IOMMU (a page's translation holds for its 4 KiB), then guest memory through GuestDma.
    private bool Copy(ulong address, Span<byte> bytes, bool toRam)
    {
        while (bytes.Length > 0)
        {
            int chunk = (int)Math.Min((ulong)bytes.Length, 4096 - (address & 0xFFF));
            ulong target = address;
            if (iommu is not null)
            {
                var translation = iommu.Translate(SourceId, address, toRam);
                if (!translation.Translated)
                {
                    return false;
                }
                target = translation.Address;
            }
            bool ok = toRam ? vm.Dma.TryWrite(new GuestPhysical(target), bytes[..chunk]) : vm.Dma.TryRead(new GuestPhysical(target), bytes[..chunk]);
            if (!ok)
            {
                return false;
            }
            bytes = bytes[chunk..];
            address += (ulong)chunk;
        }
        return true;
    }

    public string SectionTag => "EDU0";

    public ushort SectionVersion => 1;

    public void Save(SnapshotWriter writer)
    {
        writer.WriteUInt32(liveness); writer.WriteUInt32(factorial); writer.WriteUInt32(status); writer.WriteUInt32(interruptStatus);
        writer.WriteUInt64(dmaSource); writer.WriteUInt64(dmaDestination); writer.WriteUInt64(dmaCount); writer.WriteUInt64(dmaCommand);
        writer.WriteBoolean(lineAsserted);
        writer.WriteBytes(buffer);
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        liveness = reader.ReadUInt32(); factorial = reader.ReadUInt32(); status = reader.ReadUInt32(); interruptStatus = reader.ReadUInt32();
        dmaSource = reader.ReadUInt64(); dmaDestination = reader.ReadUInt64(); dmaCount = reader.ReadUInt64(); dmaCommand = reader.ReadUInt64();
        lineAsserted = reader.ReadBoolean();
        reader.ReadBytes((int)BufferSize).CopyTo(buffer);
    }
}
