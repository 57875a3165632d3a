using System.Buffers.Binary;
using System.Text;

namespace Nestor.Hypervisor.Persistence;

/// <summary>Writes a snapshot: a header (the magic <c>"NSNP"</c> and the container version), then sections, each
/// self-describing: a four-byte ASCII tag, a 16-bit layout version, a 32-bit length of what follows, then the fields,
/// little-endian. A reader can thus say which part a section holds, refuse a layout it does not know, and find where
/// a section ends without understanding it.</summary>
public sealed class SnapshotWriter
{
    /// <summary>The first four bytes of every snapshot.</summary>
    public const uint Magic = 0x504E_534E; // "NSNP" little-endian

    /// <summary>The version of the container (header and section framing).</summary>
    public const ushort ContainerVersion = 1;

    private byte[] buffer = new byte[4096];
    private int length;
    private int sectionStart = -1;

    public SnapshotWriter()
    {
        WriteUInt32(Magic);
        WriteUInt16(ContainerVersion);
    }

    /// <summary>Writes one part's section: header, then its fields, then the length backpatched.</summary>
    public void WriteSection(ISnapshottable part)
    {
        if (sectionStart >= 0)
        {
            throw new InvalidOperationException("sections do not nest");
        }
        WriteUInt32(TagValue(part.SectionTag));
        WriteUInt16(part.SectionVersion);
        int lengthAt = length;
        WriteUInt32(0);
        sectionStart = length;
        part.Save(this);
        BinaryPrimitives.WriteUInt32LittleEndian(buffer.AsSpan(lengthAt), (uint)(length - sectionStart));
        sectionStart = -1;
    }

    /// <summary>The snapshot written so far.</summary>
    public byte[] ToArray() => buffer.AsSpan(0, length).ToArray();

    public void WriteByte(byte value) => Reserve(1)[0] = value;

    public void WriteBoolean(bool value) => WriteByte(value ? (byte)1 : (byte)0);

    public void WriteUInt16(ushort value) => BinaryPrimitives.WriteUInt16LittleEndian(Reserve(2), value);

    public void WriteUInt32(uint value) => BinaryPrimitives.WriteUInt32LittleEndian(Reserve(4), value);

    public void WriteInt32(int value) => BinaryPrimitives.WriteInt32LittleEndian(Reserve(4), value);

    public void WriteUInt64(ulong value) => BinaryPrimitives.WriteUInt64LittleEndian(Reserve(8), value);

    public void WriteInt64(long value) => BinaryPrimitives.WriteInt64LittleEndian(Reserve(8), value);

    /// <summary>Raw bytes, no length (the reader knows how many).</summary>
    public void WriteBytes(ReadOnlySpan<byte> bytes) => bytes.CopyTo(Reserve(bytes.Length));

    /// <summary>A tag as the 32-bit value stored: four ASCII characters, the first in the lowest byte.</summary>
    internal static uint TagValue(string tag)
    {
        if (tag.Length != 4 || tag.Any(c => c is < ' ' or > '~'))
        {
            throw new ArgumentException($"a section tag is four printable ASCII characters, not '{tag}'");
        }
        return BinaryPrimitives.ReadUInt32LittleEndian(Encoding.ASCII.GetBytes(tag));
    }

    private Span<byte> Reserve(int count)
    {
        if (length + count > buffer.Length)
        {
            Array.Resize(ref buffer, Math.Max(buffer.Length * 2, length + count));
        }
        var span = buffer.AsSpan(length, count);
        length += count;
        return span;
    }

    /// <summary>Little-endian fields outside any section: what a part's fields are rebuilt into (a RAM section
    /// whose pages come back from a memory file, <see cref="MemoryFile"/>).</summary>
    internal sealed class Fields
    {
        private byte[] buffer = new byte[4096];

        public int Length { get; private set; }

        public void WriteInt32(int value) => BinaryPrimitives.WriteInt32LittleEndian(Reserve(4), value);

        public void WriteUInt64(ulong value) => BinaryPrimitives.WriteUInt64LittleEndian(Reserve(8), value);

        public void WriteBytes(ReadOnlySpan<byte> bytes) => bytes.CopyTo(Reserve(bytes.Length));

        /// <summary>Rewrites a 32-bit field written earlier at <paramref name="at"/> (a count known only after).</summary>
        public void PatchInt32(int at, int value) => BinaryPrimitives.WriteInt32LittleEndian(buffer.AsSpan(at), value);

        public byte[] ToArray() => buffer.AsSpan(0, Length).ToArray();

        private Span<byte> Reserve(int count)
        {
            if (Length + count > buffer.Length)
            {
                Array.Resize(ref buffer, Math.Max(buffer.Length * 2, Length + count));
            }
            var span = buffer.AsSpan(Length, count);
            Length += count;
            return span;
        }
    }
}
