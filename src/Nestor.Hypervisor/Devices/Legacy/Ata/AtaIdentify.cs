using System.Buffers.Binary;
using Nestor.Hypervisor.Devices.Storage;

namespace Nestor.Hypervisor.Devices.Legacy.Ata;

/// <summary>The 256 words IDENTIFY DEVICE returns (ATA/ATAPI-6 §8.15, Table 27), for a fixed disk with LBA and 48-bit
/// addressing, PIO only (no DMA), READ/WRITE MULTIPLE of up to <see cref="MaximumMultiple"/> sectors, a volatile
/// write cache and FLUSH CACHE (EXT).</summary>
public static class AtaIdentify
{
    /// <summary>The most sectors per DRQ block READ/WRITE MULTIPLE accept (word 47), as QEMU's IDE offers.</summary>
    public const int MaximumMultiple = 16;

    /// <summary>The model number, words 27–46.</summary>
    public const string Model = "NESTOR ATA DISK";

    /// <summary>The firmware revision, words 23–26.</summary>
    public const string Firmware = "1.0";

    /// <summary>The default (and only) geometry of words 1, 3 and 6: the translation BIOSes use for disks past 528 MB.</summary>
    public const int Heads = 16, SectorsPerTrack = 63;

    /// <summary>Fills <paramref name="words"/> (512 bytes, little-endian words as the Data register delivers them).</summary>
    /// <param name="multiple">The current READ/WRITE MULTIPLE block size (SET MULTIPLE MODE), 0 when not set.</param>
    public static void Build(Span<byte> words, IBlockBackend disk, int multiple)
    {
        words[..512].Clear();
        long sectors = disk.SectorCount;
        // Word 0: bit 15 zero (an ATA device), bit 6 (obsolete "fixed device") set as fixed disks report it.
        Set(words, 0, 0x0040);
        // Words 1, 3, 6: the default CHS geometry (cylinders capped at 16,383 for disks past 8.4 GB, §6.2.1). Words
        // 54–58 are not valid (word 53 bit 0 clear): the device takes LBA addresses only.
        Set(words, 1, (ushort)Math.Min(sectors / (Heads * SectorsPerTrack), 16383));
        Set(words, 3, Heads);
        Set(words, 6, SectorsPerTrack);
        Text(words, 10, 20, disk.Serial);
        Text(words, 23, 8, Firmware);
        Text(words, 27, 40, Model);
        // Word 47: bits 15–8 are 80h, bits 7–0 the most sectors per DRQ block of READ/WRITE MULTIPLE.
        Set(words, 47, 0x8000 | MaximumMultiple);
        // Word 49: bit 9 LBA supported (bit 8, DMA, clear: PIO only); bit 11 IORDY supported.
        Set(words, 49, (1 << 11) | (1 << 9));
        Set(words, 50, 1 << 14); // bit 14 shall be one
        Set(words, 51, 0x0200);  // obsolete PIO timing mode 2, as drives still report it
        Set(words, 53, 1 << 1);  // words 64–70 are valid
        // Word 59: bit 8 "multiple sector setting is valid", bits 7–0 the current setting.
        Set(words, 59, (ushort)(multiple > 0 ? 0x0100 | multiple : 0));
        // Words 60–61: user-addressable sectors for 28-bit commands, at most 0FFFFFFFh (§6.16).
        uint lba28 = (uint)Math.Min(sectors, 0x0FFF_FFFF);
        Set(words, 60, (ushort)lba28);
        Set(words, 61, (ushort)(lba28 >> 16));
        Set(words, 64, 0x0003); // PIO modes 3 and 4
        Set(words, 67, 120);    // minimum PIO cycle time without and with IORDY (ns): PIO mode 4's; no DMA (65–66)
        Set(words, 68, 120);
        Set(words, 80, 0x0070); // major version: ATA/ATAPI-4, -5 and -6
        // Words 82–84 (supported) and 85–87 (enabled): 82 bit 5 write cache; 83 bit 14 one, bit 13 FLUSH CACHE EXT,
        // bit 12 FLUSH CACHE, bit 10 48-bit Address feature set; 84 bit 14 one.
        Set(words, 82, 1 << 5);
        Set(words, 83, (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10));
        Set(words, 84, 1 << 14);
        Set(words, 85, 1 << 5);
        Set(words, 86, (1 << 13) | (1 << 12) | (1 << 10));
        Set(words, 87, 1 << 14);
        // Words 100–103: the highest LBA + 1 for 48-bit commands.
        for (int i = 0; i < 4; i++)
        {
            Set(words, 100 + i, (ushort)(sectors >> (16 * i)));
        }
        // Word 255, the integrity word (§8.15.61): signature A5h in bits 7–0, and in bits 15–8 the two's complement of
        // the sum of bytes 0–510, so that all 512 bytes sum to zero modulo 256.
        words[510] = 0xA5;
        byte sum = 0;
        for (int i = 0; i < 511; i++)
        {
            sum += words[i];
        }
        words[511] = (byte)-sum;
    }

    /// <summary>Word <paramref name="index"/> of IDENTIFY data.</summary>
    public static ushort Word(ReadOnlySpan<byte> words, int index) => BinaryPrimitives.ReadUInt16LittleEndian(words[(2 * index)..]);

    /// <summary>An ATA string field: two ASCII characters a word, the first in bits 15–8 (§8.15.10), padded with
    /// spaces.</summary>
    public static string ReadText(ReadOnlySpan<byte> words, int firstWord, int characters)
    {
        var text = new char[characters];
        for (int i = 0; i < characters; i++)
        {
            text[i] = (char)words[2 * firstWord + (i ^ 1)];
        }
        return new string(text).TrimEnd(' ');
    }

    private static void Set(Span<byte> words, int index, ushort value) => BinaryPrimitives.WriteUInt16LittleEndian(words[(2 * index)..], value);

    private static void Text(Span<byte> words, int firstWord, int characters, string text)
    {
        for (int i = 0; i < characters; i++)
        {
            char c = i < text.Length && text[i] is >= ' ' and <= '~' ? text[i] : ' ';
            words[2 * firstWord + (i ^ 1)] = (byte)c;
        }
    }
}
