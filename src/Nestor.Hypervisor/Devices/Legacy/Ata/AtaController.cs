using Nestor.Hypervisor.Devices.Interrupts;
using Nestor.Hypervisor.Devices.Storage;

namespace Nestor.Hypervisor.Devices.Legacy.Ata;

/// <summary>The primary ATA (IDE) channel of a PC with up to two disks, master (device 0) and slave (device 1),
/// programmed through the ATA/ATAPI-6 (ANSI INCITS 361-2002) register protocol: the command block at 0x1F0–0x1F7, the
/// control block's Alternate Status / Device Control at 0x3F6, data by PIO through the 16-bit Data register, so that
/// every word the guest moves is one port access and, under a VMM, one exit: the course's emulated device, whose
/// "commands and data are filtered and translated" at a considerable cost.</summary>
/// <remarks>
/// <para>Both devices latch every write to the command block (§5.2.1), each keeping its own copy, and the DEV bit of
/// the Device register selects which one answers reads and executes commands. With device 1 absent, device 0 answers
/// for it with Status 00h and the values last written in the other registers (§9.16.1), as QEMU's IDE does.</para>
/// <para>Commands complete at once: BSY is never seen except while SRST is held. PIO data-in (IDENTIFY, READ) raises
/// the interrupt when each DRQ block is ready; PIO data-out (WRITE) shows DRQ for the first block without one, then
/// raises it after each block is written, the last time at completion; non-data commands raise it at completion
/// (§9.5–§9.7). INTRQ is negated by a read of the Status register (not Alternate Status) or a write of the Command
/// register. The PC wires IDE's INTRQ to an ISA, edge-triggered IRQ 14: a rising INTRQ of the selected device, with
/// nIEN clear, is one edge on GSI 14 (the line is raised and lowered again).</para>
/// <para>Addresses are LBA only (the Device register's LBA bit set): LBA28 for READ/WRITE SECTORS and MULTIPLE, LBA48
/// for their EXT forms, from the previous ("high order", HOB) bytes of the registers written twice (§6.16). A
/// command with the LBA bit clear (CHS addressing) or one this model does not execute (SET FEATURES, NOP, DMA
/// commands, …) ends with ABRT; a range beyond the disk with IDNF; a write to a read-only disk with ABRT.</para>
/// </remarks>
public sealed partial class AtaController : IPortDevice
{
    /// <summary>The primary channel's command block: Data, Error/Features, Sector Count, LBA Low, LBA Mid, LBA High,
    /// Device, Status/Command.</summary>
    public const ushort CommandBlock = 0x1F0;

    /// <summary>Ports of the command block.</summary>
    public const int CommandBlockPorts = 8;

    /// <summary>The primary channel's Alternate Status (read) and Device Control (write) register.</summary>
    public const ushort ControlBlock = 0x3F6;

    /// <summary>Ports of the control block this model claims (0x3F7 is the floppy controller's).</summary>
    public const int ControlBlockPorts = 1;

    /// <summary>The primary channel's interrupt: IRQ 14, I/O APIC pin 14.</summary>
    public const int Gsi = 14;

    /// <summary>Devices on a channel: master and slave.</summary>
    public const int DeviceCount = 2;

    private const byte DeviceSelect = 0x10, DeviceLba = 0x40;
    private const int SectorSize = IBlockBackend.SectorSize;

    private readonly IInterruptLine line;
    private readonly Drive[] drives = [new(), new()];
    private byte deviceControl;
    private int selected;
    private bool lineLevel;

    /// <summary>A channel with no disks yet, whose interrupt goes to <paramref name="line"/> (GSI 14).</summary>
    public AtaController(IInterruptLine line)
    {
        this.line = line;
        foreach (var drive in drives)
        {
            drive.Signature();
        }
    }

    /// <summary>"ata0": the primary channel.</summary>
    public string Name => "ata0";

    /// <summary>Data-register accesses with no DRQ block to move (a guest out of step with the protocol): reads
    /// return 0 and writes are dropped, as on QEMU.</summary>
    public long StrayDataAccesses { get; private set; }

    /// <summary>Commands written to an absent device or to one busy with a transfer, which it does not execute.</summary>
    public long IgnoredCommands { get; private set; }

    /// <summary>Edges sent on GSI 14.</summary>
    public long InterruptEdges { get; private set; }

    /// <summary>Puts <paramref name="disk"/> on the channel as device <paramref name="index"/> (0 master, 1 slave),
    /// counting its requests in <paramref name="statistics"/>.</summary>
    public void Attach(int index, IBlockBackend disk, DiskStatistics statistics)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(index, DeviceCount);
        if (drives[index].Disk is not null)
        {
            throw new InvalidOperationException($"ATA device {index} is already attached");
        }
        drives[index].Disk = disk;
        drives[index].Statistics = statistics;
        drives[index].Signature();
    }

    /// <summary>The disk of device <paramref name="index"/>, or null when absent.</summary>
    public IBlockBackend? Disk(int index) => drives[index].Disk;

    /// <summary>The counters of device <paramref name="index"/>.</summary>
    public DiskStatistics Statistics(int index) => drives[index].Statistics;

    /// <inheritdoc/>
    public uint Read(ushort port, int size)
    {
        if (port == CommandBlock)
        {
            return size switch
            {
                2 => ReadData(),
                4 => ReadData() | (uint)ReadData() << 16, // 32-bit PIO: two words, the first in the low half
                _ => 0xFF,                                 // no byte-wide data path (QEMU reads FFh)
            };
        }
        // A wider access to the byte registers is that many byte accesses, as the ISA bus splits it.
        uint value = 0;
        for (int i = 0; i < size; i++)
        {
            value |= (uint)ReadRegister((ushort)(port + i)) << (8 * i);
        }
        return value;
    }

    /// <inheritdoc/>
    public void Write(ushort port, int size, uint value)
    {
        if (port == CommandBlock)
        {
            switch (size)
            {
                case 2:
                    WriteData((ushort)value);
                    break;
                case 4:
                    WriteData((ushort)value);
                    WriteData((ushort)(value >> 16));
                    break;
                default:
                    StrayDataAccesses++;
                    break;
            }
            return;
        }
        for (int i = 0; i < size; i++)
        {
            WriteRegister((ushort)(port + i), (byte)(value >> (8 * i)));
        }
    }

    private byte ReadRegister(ushort port)
    {
        var drive = drives[selected];
        bool absent = drive.Disk is null;
        bool high = (deviceControl & AtaDeviceControl.HighOrderByte) != 0;
        switch (port)
        {
            case ControlBlock:
                return absent ? (byte)0 : drive.Status; // Alternate Status: INTRQ stays as it is
            case CommandBlock + 1:
                return absent ? (byte)0 : drive.Error;
            case CommandBlock + 2:
                return high ? drive.PreviousCount : drive.Count;
            case CommandBlock + 3:
                return high ? drive.PreviousLbaLow : drive.LbaLow;
            case CommandBlock + 4:
                return high ? drive.PreviousLbaMid : drive.LbaMid;
            case CommandBlock + 5:
                return high ? drive.PreviousLbaHigh : drive.LbaHigh;
            case CommandBlock + 6:
                return drive.Device;
            case CommandBlock + 7:
                if (absent)
                {
                    return 0;
                }
                drive.Interrupt = false; // reading Status negates INTRQ (§7.15)
                UpdateLine();
                return drive.Status;
            default:
                return 0xFF; // not ours (a wide access running past the block)
        }
    }

    private void WriteRegister(ushort port, byte value)
    {
        if (port == ControlBlock)
        {
            WriteDeviceControl(value);
            return;
        }
        if (port is <= CommandBlock or > CommandBlock + 7)
        {
            return;
        }
        // Any write to the command block clears HOB (§7.8).
        deviceControl &= unchecked((byte)~AtaDeviceControl.HighOrderByte);
        if (port == CommandBlock + 7)
        {
            Execute(value);
            return;
        }
        foreach (var drive in drives)
        {
            // 48-bit addressing: each register is a two-byte FIFO, the byte written before is the "previous" one.
            switch (port - CommandBlock)
            {
                case 1:
                    (drive.PreviousFeatures, drive.Features) = (drive.Features, value);
                    break;
                case 2:
                    (drive.PreviousCount, drive.Count) = (drive.Count, value);
                    break;
                case 3:
                    (drive.PreviousLbaLow, drive.LbaLow) = (drive.LbaLow, value);
                    break;
                case 4:
                    (drive.PreviousLbaMid, drive.LbaMid) = (drive.LbaMid, value);
                    break;
                case 5:
                    (drive.PreviousLbaHigh, drive.LbaHigh) = (drive.LbaHigh, value);
                    break;
                case 6:
                    drive.Device = value;
                    break;
            }
        }
        if (port == CommandBlock + 6)
        {
            selected = (value & DeviceSelect) != 0 ? 1 : 0;
            UpdateLine();
        }
    }

    /// <summary>Device Control: nIEN, and SRST, which holds both devices in reset (BSY) while set and on its
    /// clearing leaves them idle with their signature, device 0 selected, no interrupt (§9.2).</summary>
    private void WriteDeviceControl(byte value)
    {
        bool wasReset = (deviceControl & AtaDeviceControl.SoftwareReset) != 0;
        deviceControl = value;
        bool reset = (value & AtaDeviceControl.SoftwareReset) != 0;
        if (reset && !wasReset)
        {
            foreach (var drive in drives)
            {
                drive.Cancel();
                drive.Interrupt = false;
                drive.Status = AtaStatus.Busy;
            }
        }
        else if (!reset && wasReset)
        {
            foreach (var drive in drives)
            {
                drive.Signature();
            }
            selected = 0;
        }
        UpdateLine();
    }

    private void Execute(byte command)
    {
        if (command == AtaCommand.ExecuteDeviceDiagnostic)
        {
            // Executed by both devices whichever is selected; device 0 reports and interrupts (§8.11).
            foreach (var d in drives)
            {
                d.Signature();
            }
            selected = 0;
            drives[0].Statistics.Other++;
            Interrupt(drives[0]);
            return;
        }
        var drive = drives[selected];
        if (drive.Disk is null || (drive.Status & (AtaStatus.Busy | AtaStatus.DataRequest)) != 0)
        {
            IgnoredCommands++;
            return;
        }
        drive.Interrupt = false; // writing the Command register negates INTRQ, so the completion is a new edge
        UpdateLine();
        drive.Error = 0;
        drive.Command = command;
        switch (command)
        {
            case AtaCommand.IdentifyDevice:
                AtaIdentify.Build(drive.Buffer, drive.Disk, drive.Multiple);
                drive.StartTransfer(Transfer.Identify, -1, 1, 1);
                Interrupt(drive);
                break;
            case AtaCommand.ReadSectors or AtaCommand.ReadSectorsExt or AtaCommand.ReadMultiple or AtaCommand.ReadMultipleExt:
                if (Addressed(drive, command, out long first, out int count, out int perBlock))
                {
                    drive.StartTransfer(Transfer.In, first, count, perBlock);
                    LoadBlock(drive);
                }
                break;
            case AtaCommand.WriteSectors or AtaCommand.WriteSectorsExt or AtaCommand.WriteMultiple or AtaCommand.WriteMultipleExt:
                if (drive.Disk.ReadOnly)
                {
                    Fail(drive, AtaError.Aborted); // write-protected medium
                }
                else if (Addressed(drive, command, out long start, out int sectors, out int block))
                {
                    // The first block is asked for without an interrupt (PIO data-out, §9.7).
                    drive.StartTransfer(Transfer.Out, start, sectors, block);
                }
                break;
            case AtaCommand.FlushCache or AtaCommand.FlushCacheExt:
                try
                {
                    drive.Disk.Flush();
                }
                catch (IOException)
                {
                    Fail(drive, AtaError.Aborted, AtaStatus.DeviceFault);
                    break;
                }
                drive.Statistics.Flushes++;
                Complete(drive);
                break;
            case AtaCommand.SetMultipleMode:
                // The block size in Sector Count: 0 turns multiple mode off, else a power of two up to word 47's.
                int size = drive.Count;
                if (size > AtaIdentify.MaximumMultiple || (size & (size - 1)) != 0)
                {
                    Fail(drive, AtaError.Aborted);
                    break;
                }
                drive.Multiple = size;
                drive.Statistics.Other++;
                Complete(drive);
                break;
            default:
                Fail(drive, AtaError.Aborted);
                break;
        }
    }

    /// <summary>The first sector and count of a READ or WRITE, and its DRQ block size; false (and the command failed)
    /// when it cannot run: CHS addressing, MULTIPLE without SET MULTIPLE MODE, or a range beyond the disk.</summary>
    private bool Addressed(Drive drive, byte command, out long first, out int count, out int perBlock)
    {
        bool extended = command is AtaCommand.ReadSectorsExt or AtaCommand.WriteSectorsExt
            or AtaCommand.ReadMultipleExt or AtaCommand.WriteMultipleExt;
        bool multiple = command is AtaCommand.ReadMultiple or AtaCommand.WriteMultiple
            or AtaCommand.ReadMultipleExt or AtaCommand.WriteMultipleExt;
        first = 0;
        count = 0;
        perBlock = multiple ? drive.Multiple : 1;
        if ((drive.Device & DeviceLba) == 0 || perBlock == 0)
        {
            Fail(drive, AtaError.Aborted);
            return false;
        }
        if (extended)
        {
            // LBA47:24 from the previous bytes, LBA23:0 from the current; a count of 0 means 65,536 (§6.16.2).
            first = (long)drive.PreviousLbaHigh << 40 | (long)drive.PreviousLbaMid << 32 | (long)drive.PreviousLbaLow << 24 |
                    (long)drive.LbaHigh << 16 | (long)drive.LbaMid << 8 | drive.LbaLow;
            count = drive.PreviousCount << 8 | drive.Count;
            count = count == 0 ? 65536 : count;
        }
        else
        {
            // LBA27:24 in the Device register's low nibble; a count of 0 means 256.
            first = (long)(drive.Device & 0x0F) << 24 | (long)drive.LbaHigh << 16 | (long)drive.LbaMid << 8 | drive.LbaLow;
            count = drive.Count == 0 ? 256 : drive.Count;
        }
        if (first + count > drive.Disk!.SectorCount)
        {
            Fail(drive, AtaError.IdNotFound);
            return false;
        }
        return true;
    }

    private ushort ReadData()
    {
        var drive = drives[selected];
        if (drive.Transfer is not (Transfer.In or Transfer.Identify) || (drive.Status & AtaStatus.DataRequest) == 0)
        {
            StrayDataAccesses++;
            return 0;
        }
        ushort word = (ushort)(drive.Buffer[drive.Position] | drive.Buffer[drive.Position + 1] << 8);
        drive.Position += 2;
        if (drive.Position == drive.BlockLength)
        {
            // The block is read: the next one, or the end of the command (no interrupt at the end of data-in).
            if (drive.Transfer == Transfer.Identify)
            {
                drive.Statistics.Other++;
                drive.Finish();
            }
            else
            {
                drive.Statistics.BytesRead += drive.BlockLength;
                if (drive.Advance())
                {
                    LoadBlock(drive);
                }
                else
                {
                    drive.Statistics.Reads++;
                    drive.Finish();
                }
            }
        }
        return word;
    }

    private void WriteData(ushort word)
    {
        var drive = drives[selected];
        if (drive.Transfer != Transfer.Out || (drive.Status & AtaStatus.DataRequest) == 0)
        {
            StrayDataAccesses++;
            return;
        }
        drive.Buffer[drive.Position] = (byte)word;
        drive.Buffer[drive.Position + 1] = (byte)(word >> 8);
        drive.Position += 2;
        if (drive.Position < drive.BlockLength)
        {
            return;
        }
        try
        {
            drive.Disk!.Write(drive.NextSector, drive.Buffer.AsSpan(0, drive.BlockLength));
        }
        catch (IOException)
        {
            Fail(drive, AtaError.Aborted, AtaStatus.DeviceFault);
            return;
        }
        drive.Statistics.BytesWritten += drive.BlockLength;
        if (drive.Advance())
        {
            drive.NextBlock();
            drive.Status = AtaStatus.Ready | AtaStatus.DataRequest;
            Interrupt(drive);
        }
        else
        {
            drive.Statistics.Writes++;
            Complete(drive);
        }
    }

    /// <summary>Reads the next DRQ block of a READ from the disk and offers it to the guest, interrupting.</summary>
    private void LoadBlock(Drive drive)
    {
        drive.NextBlock();
        try
        {
            drive.Disk!.Read(drive.NextSector, drive.Buffer.AsSpan(0, drive.BlockLength));
        }
        catch (IOException)
        {
            Fail(drive, AtaError.Uncorrectable);
            return;
        }
        drive.Status = AtaStatus.Ready | AtaStatus.DataRequest;
        Interrupt(drive);
    }

    private void Complete(Drive drive)
    {
        drive.Finish();
        Interrupt(drive);
    }

    /// <summary>Ends the command with ERR and <paramref name="error"/>, interrupting (§9.5 to §9.7: errors end every
    /// protocol with an interrupt).</summary>
    private void Fail(Drive drive, byte error, byte extraStatus = 0)
    {
        drive.Finish();
        drive.Error = error;
        drive.Status = (byte)(AtaStatus.Ready | AtaStatus.Error | extraStatus);
        drive.Statistics.Errors++;
        Interrupt(drive);
    }

    private void Interrupt(Drive drive)
    {
        drive.Interrupt = true;
        drive.Statistics.Interrupts++;
        UpdateLine();
    }

    /// <summary>INTRQ is the selected device's, unless nIEN; its rising edge is the ISA interrupt.</summary>
    private void UpdateLine()
    {
        var drive = drives[selected];
        bool level = drive.Interrupt && drive.Disk is not null && (deviceControl & AtaDeviceControl.InterruptDisable) == 0;
        if (level && !lineLevel)
        {
            line.Raise();
            line.Lower();
            InterruptEdges++;
        }
        lineLevel = level;
    }

    private enum Transfer : byte
    {
        None,
        Identify,
        In,
        Out,
    }

    /// <summary>One device's registers and the transfer in progress.</summary>
    private sealed class Drive
    {
        public IBlockBackend? Disk;
        public DiskStatistics Statistics = new();
        public byte Features, Count, LbaLow, LbaMid, LbaHigh, Device;
        public byte PreviousFeatures, PreviousCount, PreviousLbaLow, PreviousLbaMid, PreviousLbaHigh;
        public byte Status, Error, Command;
        public bool Interrupt;
        public int Multiple;
        public Transfer Transfer;
        public long NextSector;
        public int SectorsLeft, PerBlock, BlockLength, Position;
        public readonly byte[] Buffer = new byte[AtaIdentify.MaximumMultiple * SectorSize];

        /// <summary>The state after a reset or a diagnostic: an ATA device's signature in the registers (§9.12:
        /// Sector Count 01h, LBA Low 01h, LBA Mid 00h, LBA High 00h, Device 00h), diagnostics passed, ready.</summary>
        public void Signature()
        {
            Cancel();
            Interrupt = false;
            Count = LbaLow = 1;
            LbaMid = LbaHigh = Device = 0;
            PreviousCount = PreviousLbaLow = PreviousLbaMid = PreviousLbaHigh = 0;
            Error = AtaError.DiagnosticsPassed;
            Status = AtaStatus.Ready;
        }

        public void StartTransfer(Transfer kind, long first, int count, int perBlock)
        {
            Transfer = kind;
            NextSector = first;
            SectorsLeft = count;
            PerBlock = perBlock;
            NextBlock();
            Status = AtaStatus.Ready | AtaStatus.DataRequest;
        }

        /// <summary>Sizes the next DRQ block: the block size, or what is left of the command.</summary>
        public void NextBlock()
        {
            BlockLength = Math.Min(SectorsLeft, PerBlock) * SectorSize;
            Position = 0;
        }

        /// <summary>Moves past the block just transferred; true while sectors are left.</summary>
        public bool Advance()
        {
            int sectors = BlockLength / SectorSize;
            NextSector += sectors;
            SectorsLeft -= sectors;
            return SectorsLeft > 0;
        }

        public void Finish()
        {
            Cancel();
            Status = AtaStatus.Ready;
        }

        public void Cancel()
        {
            Transfer = Transfer.None;
            SectorsLeft = BlockLength = Position = 0;
        }
    }
}
