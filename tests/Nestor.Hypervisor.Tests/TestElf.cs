using System.Buffers.Binary;

namespace Nestor.Hypervisor.Tests;

/// <summary>Writes minimal ELF files for loader tests: one program header per segment, each segment's bytes
/// following the headers.</summary>
internal static class TestElf
{
    public sealed record Segment(ulong PhysicalAddress, byte[] Bytes, ulong MemorySize, bool Executable = true, ulong? VirtualAddress = null);

    public static byte[] Build(ulong entry, params Segment[] segments) => Build(entry, 2, 62, 2, segments);

    public static byte[] Build(ulong entry, ushort type, ushort machine, byte elfClass, params Segment[] segments)
    {
        int headers = 64 + 56 * segments.Length;
        int size = headers + segments.Sum(s => s.Bytes.Length);
        var file = new byte[size];
        Span<byte> f = file;
        f[0] = 0x7F; f[1] = (byte)'E'; f[2] = (byte)'L'; f[3] = (byte)'F';
        f[4] = elfClass; f[5] = 1; f[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(f[16..], type);
        BinaryPrimitives.WriteUInt16LittleEndian(f[18..], machine);
        BinaryPrimitives.WriteUInt64LittleEndian(f[24..], entry);
        BinaryPrimitives.WriteUInt64LittleEndian(f[32..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(f[54..], 56);
        BinaryPrimitives.WriteUInt16LittleEndian(f[56..], (ushort)segments.Length);
        int offset = headers;
        for (int i = 0; i < segments.Length; i++)
        {
            var s = segments[i];
            var ph = f[(64 + 56 * i)..];
            BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], s.Executable ? 5u : 6u);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], (ulong)offset);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], s.VirtualAddress ?? s.PhysicalAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], s.PhysicalAddress);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], (ulong)s.Bytes.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], s.MemorySize);
            s.Bytes.CopyTo(f[offset..]);
            offset += s.Bytes.Length;
        }
        return file;
    }
}
