using System.Runtime.InteropServices;
using Nestor.Machine.Memory;

namespace Nestor.Machine.Tests;

/// <summary>Physical memory over a pinned managed array, with helpers to build 4-level page tables by hand.</summary>
internal sealed class TestMemory
{
    public const ulong P = 1, W = 2, U = 4, A = 0x20, D = 0x40, PS = 0x80, G = 0x100, NX = 1UL << 63;

    private readonly byte[] bytes;
    private ulong nextTable;

    public TestMemory(int megabytes = 8)
    {
        bytes = GC.AllocateArray<byte>(megabytes << 20, pinned: true);
        Memory = new PhysicalMemory([(0UL, (ulong)bytes.Length, Marshal.UnsafeAddrOfPinnedArrayElement(bytes, 0))]);
        nextTable = 0x10000;
        Cr3 = NewTable();
    }

    public PhysicalMemory Memory { get; }

    /// <summary>Physical address of the PML4.</summary>
    public ulong Cr3 { get; }

    public ulong NewTable()
    {
        ulong t = nextTable;
        nextTable += 0x1000;
        return t;
    }

    public ulong Read(ulong physical) => BitConverter.ToUInt64(bytes, (int)physical);

    public void WriteByte(ulong physical, byte value) => bytes[physical] = value;

    public void Write(ulong physical, ulong value) => BitConverter.TryWriteBytes(bytes.AsSpan((int)physical), value);

    /// <summary>Maps <paramref name="linear"/> to <paramref name="physical"/> with a leaf at <paramref name="leafLevel"/>
    /// (3 = 4 KiB PTE, 2 = 2 MiB PDE, 1 = 1 GiB PDPTE); upper entries get <paramref name="upperFlags"/>.</summary>
    /// <returns>The physical addresses of the entries used, top first.</returns>
    public ulong[] Map(ulong linear, ulong physical, ulong leafFlags, ulong upperFlags = P | W | U, int leafLevel = 3)
    {
        var used = new List<ulong>();
        ulong table = Cr3;
        for (int level = 0; level <= leafLevel; level++)
        {
            ulong entryAddress = table + ((linear >> (39 - 9 * level)) & 511) * 8;
            used.Add(entryAddress);
            if (level == leafLevel)
            {
                Write(entryAddress, physical | leafFlags | (leafLevel < 3 ? PS : 0));
                break;
            }
            ulong entry = Read(entryAddress);
            if ((entry & P) == 0)
            {
                entry = NewTable() | upperFlags;
                Write(entryAddress, entry);
            }
            else
            {
                Write(entryAddress, (entry & ~0xFFFUL & ~NX) | upperFlags);
            }
            table = Read(entryAddress) & 0x000F_FFFF_FFFF_F000;
        }
        return used.ToArray();
    }
}
