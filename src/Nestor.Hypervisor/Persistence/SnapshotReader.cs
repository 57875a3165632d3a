using System.Buffers.Binary;
using System.Text;

namespace Nestor.Hypervisor.Persistence;

/// <summary>Reads a snapshot written by <see cref="SnapshotWriter"/>, section by section, refusing with a
/// <see cref="SnapshotFormatException"/> what it cannot restore: data that is not a snapshot or of a newer container,
/// a section other than the one expected (an unknown tag), a layout newer than the part reads, a section longer than
/// the data left, or fields that run past the end of their section.</summary>
public sealed class SnapshotReader
{
    private readonly byte[] data;
    private int position;
    private int sectionEnd;
    private string sectionTag = "header";

    public SnapshotReader(byte[] data)
    {
        this.data = data;
        sectionEnd = data.Length;
        if (data.Length < 6 || ReadUInt32() != SnapshotWriter.Magic)
        {
            throw new SnapshotFormatException("not a Nestor snapshot (it does not start with \"NSNP\")");
        }
        ushort container = ReadUInt16();
        if (container > SnapshotWriter.ContainerVersion)
        {
            throw new SnapshotFormatException(
                $"the snapshot's container version is {container}, newer than this Nestor reads ({SnapshotWriter.ContainerVersion})", SnapshotRefusal.NewerVersion);
        }
    }

    // Over the fields of one section saved apart (SectionRemainder), to be read later by the part that owns them.
    private SnapshotReader(byte[] fields, string tag)
    {
        data = fields;
        sectionEnd = fields.Length;
        sectionTag = tag;
    }

    /// <summary>A reader over fields kept from a section by <see cref="SectionRemainder"/>, for a part that restores
    /// them later than the section was read (an engine, when its next run builds the objects they belong to).</summary>
    public static SnapshotReader OverFields(byte[] fields, string sectionTag) => new(fields, sectionTag);

    /// <summary>The rest of the current section's bytes, consumed.</summary>
    public byte[] SectionRemainder() => Take(sectionEnd - position).ToArray();

    /// <summary>Fields of the current section not yet read.</summary>
    public int SectionRemaining => sectionEnd - position;

    /// <summary>True when every section has been read.</summary>
    public bool AtEnd => position == data.Length;

    /// <summary>Reads the next section into <paramref name="part"/>, which must be the part it was written from.</summary>
    public void ReadSection(ISnapshottable part)
    {
        if (data.Length - position < 10)
        {
            throw new SnapshotFormatException(
                $"the snapshot ends before section '{part.SectionTag}' ({data.Length - position} bytes left, a section header takes 10)");
        }
        sectionEnd = data.Length;
        uint tag = ReadUInt32();
        ushort version = ReadUInt16();
        uint declared = ReadUInt32();
        string found = TagText(tag);
        if (tag != SnapshotWriter.TagValue(part.SectionTag))
        {
            throw new SnapshotFormatException($"expected section '{part.SectionTag}', found an unknown section '{found}'");
        }
        if (version > part.SectionVersion)
        {
            throw new SnapshotFormatException(
                $"section '{found}' has layout version {version}, newer than this Nestor reads ({part.SectionVersion})", SnapshotRefusal.NewerVersion);
        }
        if (declared > (uint)(data.Length - position))
        {
            throw new SnapshotFormatException(
                $"section '{found}' is truncated: it declares {declared} bytes and {data.Length - position} remain", SnapshotRefusal.Truncated);
        }
        sectionEnd = position + (int)declared;
        sectionTag = found;
        part.Restore(this, version);
        if (position != sectionEnd)
        {
            throw new SnapshotFormatException(
                $"section '{found}' holds {sectionEnd - position} bytes more than its fields (a corrupt length)");
        }
        sectionEnd = data.Length;
    }

    /// <summary>The sections of a snapshot as their headers describe them (tag, layout version, length of the fields),
    /// without reading the fields: what <c>nestor snapshot info</c> lists.</summary>
    public static IReadOnlyList<(string Tag, ushort Version, uint Length)> Sections(byte[] data)
    {
        var reader = new SnapshotReader(data);
        var sections = new List<(string, ushort, uint)>();
        while (!reader.AtEnd)
        {
            if (data.Length - reader.position < 10)
            {
                throw new SnapshotFormatException($"the snapshot ends inside a section header ({data.Length - reader.position} bytes left, a header takes 10)",
                    SnapshotRefusal.Truncated);
            }
            string tag = TagText(reader.ReadUInt32());
            ushort version = reader.ReadUInt16();
            uint length = reader.ReadUInt32();
            if (length > (uint)(data.Length - reader.position))
            {
                throw new SnapshotFormatException($"section '{tag}' is truncated: it declares {length} bytes and {data.Length - reader.position} remain",
                    SnapshotRefusal.Truncated);
            }
            reader.position += (int)length;
            sections.Add((tag, version, length));
        }
        return sections;
    }

    public byte ReadByte() => Take(1)[0];

    public bool ReadBoolean() => ReadByte() switch
    {
        0 => false,
        1 => true,
        var b => throw new SnapshotFormatException($"section '{sectionTag}': {b} is not a boolean"),
    };

    public ushort ReadUInt16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));

    public uint ReadUInt32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));

    public int ReadInt32() => BinaryPrimitives.ReadInt32LittleEndian(Take(4));

    public ulong ReadUInt64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));

    public long ReadInt64() => BinaryPrimitives.ReadInt64LittleEndian(Take(8));

    /// <summary><paramref name="count"/> raw bytes of the current section.</summary>
    public ReadOnlySpan<byte> ReadBytes(int count) => Take(count);

    /// <summary>Refuses a value that does not fit the part restored into.</summary>
    public SnapshotFormatException Invalid(string what) => new($"section '{sectionTag}': {what}");

    private ReadOnlySpan<byte> Take(int count)
    {
        if (count < 0 || sectionEnd - position < count)
        {
            throw new SnapshotFormatException(sectionTag == "header"
                ? "the snapshot is truncated inside its header"
                : $"section '{sectionTag}' is too short: a field needs {count} bytes and {sectionEnd - position} remain");
        }
        var span = data.AsSpan(position, count);
        position += count;
        return span;
    }

    private static string TagText(uint tag)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, tag);
        foreach (ref byte b in bytes)
        {
            if (b is < (byte)' ' or > (byte)'~')
            {
                b = (byte)'?';
            }
        }
        return Encoding.ASCII.GetString(bytes);
    }
}
