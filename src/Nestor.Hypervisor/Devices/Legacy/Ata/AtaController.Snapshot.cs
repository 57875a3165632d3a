using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Legacy.Ata;

// Snapshots: the channel's Device Control, the selected device and INTRQ's level; for each device its registers (both
// bytes of each 48-bit FIFO), status, error, pending interrupt, multiple-mode block size, and the transfer in progress:
// the command, the next sector, the sectors left, the DRQ block's length, the position in it and the block's bytes. A
// restore into a channel whose disks differ (present or not, or another size) is refused: the disks are the
// configuration, not the state. The disk contents are the image file's, not the snapshot's.
public sealed partial class AtaController : ISnapshottable
{
    /// <inheritdoc/>
    public string SectionTag => "ATA0";

    /// <inheritdoc/>
    public ushort SectionVersion => 1;

    /// <inheritdoc/>
    public void Save(SnapshotWriter writer)
    {
        writer.WriteByte(deviceControl);
        writer.WriteByte((byte)selected);
        writer.WriteBoolean(lineLevel);
        foreach (var d in drives)
        {
            writer.WriteInt64(d.Disk?.SectorCount ?? -1);
            foreach (byte register in (ReadOnlySpan<byte>)[d.Features, d.Count, d.LbaLow, d.LbaMid, d.LbaHigh, d.Device,
                         d.PreviousFeatures, d.PreviousCount, d.PreviousLbaLow, d.PreviousLbaMid, d.PreviousLbaHigh,
                         d.Status, d.Error, d.Command])
            {
                writer.WriteByte(register);
            }
            writer.WriteBoolean(d.Interrupt);
            writer.WriteByte((byte)d.Multiple);
            writer.WriteByte((byte)d.Transfer);
            writer.WriteInt64(d.NextSector);
            writer.WriteInt32(d.SectorsLeft);
            writer.WriteInt32(d.PerBlock);
            writer.WriteInt32(d.BlockLength);
            writer.WriteInt32(d.Position);
            writer.WriteBytes(d.Buffer.AsSpan(0, d.BlockLength));
        }
    }

    /// <inheritdoc/>
    public void Restore(SnapshotReader reader, ushort version)
    {
        byte control = reader.ReadByte();
        int select = reader.ReadByte();
        bool level = reader.ReadBoolean();
        if (select >= DeviceCount)
        {
            throw reader.Invalid($"device {select} selected on a channel of {DeviceCount}");
        }
        for (int index = 0; index < DeviceCount; index++)
        {
            var d = drives[index];
            long sectors = reader.ReadInt64();
            if (sectors != (d.Disk?.SectorCount ?? -1))
            {
                throw reader.Invalid($"ATA device {index} was {Describe(sectors)} when saved and is {Describe(d.Disk?.SectorCount ?? -1)} now");
            }
            d.Features = reader.ReadByte();
            d.Count = reader.ReadByte();
            d.LbaLow = reader.ReadByte();
            d.LbaMid = reader.ReadByte();
            d.LbaHigh = reader.ReadByte();
            d.Device = reader.ReadByte();
            d.PreviousFeatures = reader.ReadByte();
            d.PreviousCount = reader.ReadByte();
            d.PreviousLbaLow = reader.ReadByte();
            d.PreviousLbaMid = reader.ReadByte();
            d.PreviousLbaHigh = reader.ReadByte();
            d.Status = reader.ReadByte();
            d.Error = reader.ReadByte();
            d.Command = reader.ReadByte();
            d.Interrupt = reader.ReadBoolean();
            int multiple = reader.ReadByte();
            byte transfer = reader.ReadByte();
            long next = reader.ReadInt64();
            int left = reader.ReadInt32(), perBlock = reader.ReadInt32(), length = reader.ReadInt32(), position = reader.ReadInt32();
            if (multiple > AtaIdentify.MaximumMultiple || (multiple & (multiple - 1)) != 0)
            {
                throw reader.Invalid($"a multiple-mode block of {multiple} sectors");
            }
            if (transfer > (byte)Transfer.Out)
            {
                throw reader.Invalid($"transfer kind {transfer}");
            }
            var kind = (Transfer)transfer;
            bool active = kind != Transfer.None;
            // A transfer in progress has a block of whole sectors no larger than the buffer, a position inside it on a
            // word boundary, and sectors left that are on the disk (IDENTIFY: one block, no sector).
            bool valid = !active
                ? left == 0 && length == 0 && position == 0
                : length > 0 && length <= d.Buffer.Length && length % SectorSize == 0 && position >= 0 && position < length &&
                  position % 2 == 0 && perBlock is >= 1 and <= AtaIdentify.MaximumMultiple && left >= length / SectorSize &&
                  left <= 65536 && length / SectorSize <= perBlock &&
                  (kind == Transfer.Identify ? left == 1 : next >= 0 && next <= sectors - left);
            if (!valid)
            {
                throw reader.Invalid($"ATA device {index}: an inconsistent transfer (kind {kind}, next sector {next}, {left} sectors left, block of {length} bytes at {position})");
            }
            d.Multiple = multiple;
            d.Transfer = kind;
            d.NextSector = next;
            d.SectorsLeft = left;
            d.PerBlock = perBlock;
            d.BlockLength = length;
            d.Position = position;
            reader.ReadBytes(length).CopyTo(d.Buffer);
        }
        deviceControl = control;
        selected = select;
        lineLevel = level;
    }

    private static string Describe(long sectors) => sectors < 0 ? "absent" : $"a disk of {sectors} sectors";
}
