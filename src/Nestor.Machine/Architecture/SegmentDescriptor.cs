namespace Nestor.Machine.Architecture;

/// <summary>Encodes GDT entries (Intel SDM Vol. 3A §3.4.5 for code/data descriptors, §8.2.3 for the 64-bit TSS
/// descriptor, which takes two 8-byte slots).</summary>
public static class SegmentDescriptor
{
    /// <summary>A flat code or data descriptor with base 0 and limit 4 GiB (granularity 4 KiB).</summary>
    /// <param name="type">Type field: 0xA/0xB execute/read code, 0x2/0x3 read/write data.</param>
    /// <param name="privilegeLevel">Descriptor privilege level 0–3.</param>
    /// <param name="longMode">L bit: 64-bit code segment (D must then be 0).</param>
    public static ulong Flat(byte type, int privilegeLevel, bool longMode)
    {
        ulong access = (ulong)(type & 0xF) | 0x10 /* S: code/data */ | ((ulong)(privilegeLevel & 3) << 5) | 0x80 /* P */;
        ulong flags = 0x8 /* G */ | (longMode ? 0x2UL /* L */ : 0x4UL /* D/B */);
        return 0xFFFFUL | (access << 40) | (0xFUL << 48) | (flags << 52);
    }

    /// <summary>The two 8-byte halves of a 64-bit available TSS descriptor (type 9).</summary>
    public static (ulong Low, ulong High) TaskState(ulong baseAddress, uint limit)
    {
        ulong low = (limit & 0xFFFFUL)
                    | ((baseAddress & 0xFFFFFFUL) << 16)
                    | (0x89UL << 40) /* P, DPL 0, type 9 */
                    | (((ulong)limit >> 16 & 0xF) << 48)
                    | (((baseAddress >> 24) & 0xFF) << 56);
        return (low, baseAddress >> 32);
    }
}
