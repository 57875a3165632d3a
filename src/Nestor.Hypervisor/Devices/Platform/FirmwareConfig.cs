using System.Buffers.Binary;
using System.Text;
using Nestor.Hypervisor.Persistence;

namespace Nestor.Hypervisor.Devices.Platform;

/// <summary>QEMU's firmware configuration interface, fw_cfg (QEMU docs/specs/fw_cfg.rst), as on the x86 PC: a
/// 16-bit selector register written at port 0x510 chooses an item and rewinds it, the 8-bit data register at 0x511
/// reads it a byte at a time. Nestor offers the traditional interface only (no DMA: the ID item's bit 1 is clear,
/// port 0x514 is not claimed). Items: the signature "QEMU" (0x0000), the ID (0x0001), the UUID (0x0002, zero), the
/// RAM size (0x0003), the number of CPUs (0x0005) and the most CPUs (0x000f), the kernel command line's size and
/// bytes (0x0014, 0x0015), and the file directory (0x0019) with its files from 0x0020 on, among them
/// <c>etc/e820</c>, the memory map. Integers are little-endian, except in the file directory, which is big-endian
/// (fw_cfg.rst, "File Directory").</summary>
public sealed class FirmwareConfig : IPortDevice, ISnapshottable
{
    /// <summary>The selector register (16-bit writes).</summary>
    public const ushort SelectorPort = 0x510;

    /// <summary>The data register (8-bit reads).</summary>
    public const ushort DataPort = 0x511;

    /// <summary>Selector keys (fw_cfg.rst, "Selector (Control) Register" and the well-known items).</summary>
    public const ushort Signature = 0x00, Id = 0x01, Uuid = 0x02, RamSize = 0x03, NoGraphic = 0x04, CpuCount = 0x05,
        MaximumCpus = 0x0f, CommandLineSize = 0x14, CommandLineData = 0x15, FileDirectory = 0x19, FirstFile = 0x20;

    /// <summary>Bit 14 of a selector marks a write (ignored: no item is writable); the key is the low 14 bits
    /// with bit 15 (arch-local items, none here).</summary>
    private const ushort WriteFlag = 0x4000;

    private const int FileNameLength = 56;

    private readonly Dictionary<ushort, byte[]> items = [];
    private readonly List<(string Name, ushort Key)> files = [];
    private ushort selector;
    private int offset;

    /// <param name="ramBytes">Guest RAM, FW_CFG_RAM_SIZE.</param>
    /// <param name="cpus">vCPUs present and the most there can be (FW_CFG_NB_CPUS, FW_CFG_MAX_CPUS).</param>
    /// <param name="commandLine">The kernel command line (FW_CFG_CMDLINE_*; the size counts the NUL).</param>
    public FirmwareConfig(ulong ramBytes, int cpus, string commandLine)
    {
        items[Signature] = "QEMU"u8.ToArray();
        items[Id] = Little32(1); // bit 0: the traditional interface; bit 1 (DMA) clear
        items[Uuid] = new byte[16];
        items[RamSize] = Little64(ramBytes);
        items[NoGraphic] = Little16(1);
        items[CpuCount] = Little16((ushort)cpus);
        items[MaximumCpus] = Little16((ushort)cpus);
        byte[] line = Encoding.UTF8.GetBytes(commandLine + "\0");
        items[CommandLineSize] = Little32((uint)line.Length);
        items[CommandLineData] = line;
        items[FileDirectory] = Directory();
    }

    public string Name => "fw_cfg";

    /// <summary>The item chosen by the last selector write.</summary>
    public ushort Selector => selector;

    /// <summary>Adds a file (fw_cfg.rst, "File Directory"): the next key from 0x0020, listed in the directory,
    /// which stays sorted by name as QEMU keeps it. Names are at most 55 bytes.</summary>
    /// <exception cref="ArgumentException">The name is too long or already there.</exception>
    public ushort AddFile(string name, byte[] contents)
    {
        if (Encoding.UTF8.GetByteCount(name) >= FileNameLength || files.Any(f => f.Name == name))
        {
            throw new ArgumentException($"fw_cfg file name '{name}' is too long or taken", nameof(name));
        }
        ushort key = (ushort)(FirstFile + files.Count);
        files.Add((name, key));
        items[key] = contents;
        items[FileDirectory] = Directory();
        return key;
    }

    /// <summary>The bytes of item <paramref name="key"/>, or null when there is none.</summary>
    public byte[]? Item(ushort key) => items.GetValueOrDefault(key);

    public uint Read(ushort port, int size)
    {
        if (port != DataPort)
        {
            return size switch { 1 => 0xFF, 2 => 0xFFFF, _ => 0xFFFF_FFFF }; // the selector is write-only
        }
        // An item reads as its bytes, then zeros past its end (fw_cfg.rst, "Data Register"); a wider read takes
        // the next bytes, lowest first.
        uint value = 0;
        byte[]? item = items.GetValueOrDefault((ushort)(selector & ~WriteFlag));
        for (int i = 0; i < size; i++)
        {
            uint b = item is not null && offset < item.Length ? item[offset] : 0u;
            if (item is not null && offset < item.Length)
            {
                offset++;
            }
            value |= b << (8 * i);
        }
        return value;
    }

    public void Write(ushort port, int size, uint value)
    {
        if (port == SelectorPort)
        {
            selector = (ushort)value;
            offset = 0;
        }
        // Writes to the data register are ignored, as QEMU has done since 2.4 (fw_cfg.rst).
    }

    public string SectionTag => "FWCF";

    public ushort SectionVersion => 1;

    /// <summary>The selector and the read position; the items follow from the VM's configuration.</summary>
    public void Save(SnapshotWriter writer)
    {
        writer.WriteUInt16(selector);
        writer.WriteInt32(offset);
    }

    public void Restore(SnapshotReader reader, ushort version)
    {
        ushort s = reader.ReadUInt16();
        int o = reader.ReadInt32();
        if (o < 0)
        {
            throw reader.Invalid($"fw_cfg read position {o} is negative");
        }
        selector = s;
        offset = o;
    }

    /// <summary>fw_cfg.rst: a big-endian count, then per file a big-endian size, a big-endian key, two reserved
    /// bytes and a NUL-padded 56-byte name, sorted by name.</summary>
    private byte[] Directory()
    {
        var sorted = files.OrderBy(f => f.Name, StringComparer.Ordinal).ToList();
        var directory = new byte[4 + 64 * sorted.Count];
        BinaryPrimitives.WriteUInt32BigEndian(directory, (uint)sorted.Count);
        for (int i = 0; i < sorted.Count; i++)
        {
            var entry = directory.AsSpan(4 + 64 * i, 64);
            BinaryPrimitives.WriteUInt32BigEndian(entry, (uint)items[sorted[i].Key].Length);
            BinaryPrimitives.WriteUInt16BigEndian(entry[4..], sorted[i].Key);
            Encoding.UTF8.GetBytes(sorted[i].Name).CopyTo(entry[8..]);
        }
        return directory;
    }

    private static byte[] Little16(ushort v)
    {
        var b = new byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, v);
        return b;
    }

    private static byte[] Little32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        return b;
    }

    private static byte[] Little64(ulong v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        return b;
    }
}
