using System.Runtime.CompilerServices;

namespace Nestor.Machine.Memory;

/// <summary>The machine's physical address space: RAM regions backed by host memory the caller owns (guest RAM
/// mapped by the hypervisor). Accesses outside RAM are not memory: the CPU model routes them to devices; page-table
/// walkers that read outside RAM see all ones (an open bus), which sets reserved bits and faults.</summary>
public sealed unsafe class PhysicalMemory
{
    private readonly Region[] regions;

    private readonly struct Region(ulong start, ulong length, byte* host)
    {
        public readonly ulong Start = start;
        public readonly ulong Length = length;
        public readonly byte* Host = host;
    }

    /// <summary>Creates the address space from (start, length, host pointer) triples; the pointers must stay valid and
    /// pinned for the life of this object.</summary>
    public PhysicalMemory(IEnumerable<(ulong Start, ulong Length, nint Host)> ram)
    {
        regions = ram.OrderBy(r => r.Start).Select(r => new Region(r.Start, r.Length, (byte*)r.Host)).ToArray();
        Size = regions.Aggregate(0UL, (total, r) => total + r.Length);
    }

    /// <summary>Total RAM in bytes.</summary>
    public ulong Size { get; }

    /// <summary>The host address of <paramref name="physical"/> when [physical, physical + length) is RAM, else null.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte* Pointer(ulong physical, int length)
    {
        for (int i = 0; i < regions.Length; i++)
        {
            ref readonly Region r = ref regions[i];
            ulong offset = physical - r.Start;
            if (physical >= r.Start && offset < r.Length && (ulong)length <= r.Length - offset)
            {
                return r.Host + offset;
            }
        }
        return null;
    }

    /// <summary>Reads an aligned 64-bit value; all ones outside RAM.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong ReadUInt64(ulong physical)
    {
        byte* p = Pointer(physical, 8);
        return p == null ? ulong.MaxValue : Unsafe.ReadUnaligned<ulong>(p);
    }

    /// <summary>Writes a 64-bit value; ignored outside RAM.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void WriteUInt64(ulong physical, ulong value)
    {
        byte* p = Pointer(physical, 8);
        if (p != null)
        {
            Unsafe.WriteUnaligned(p, value);
        }
    }
}
