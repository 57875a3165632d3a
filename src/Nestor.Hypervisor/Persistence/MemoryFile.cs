using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Nestor.Hypervisor.Persistence;

/// <summary>Where a snapshot's RAM was written when it was not put in the snapshot file itself, and what that file
/// held: its length and a SHA-256 of its bytes, checked before a restore reads a page of it.</summary>
/// <param name="Path">The memory file's full path when the snapshot was taken.</param>
/// <param name="Bytes">Its length: the guest's RAM regions end to end.</param>
/// <param name="Sha256">The SHA-256 of its bytes (holes read as zeros), in hex.</param>
public sealed record MemoryFileReference(string Path, long Bytes, string Sha256);

/// <summary>A snapshot's RAM in a file of its own, as Firecracker keeps guest memory apart from the VM state
/// (its <c>mem_file_path</c>; docs/migration.md, "A separate memory file"): the guest's RAM regions laid end to end,
/// each page at its offset, so that the file is an image of guest-physical memory any tool can read. Only the pages
/// the guest touched (those with a non-zero byte) are written; the others are holes of a sparse file, which cost no
/// disk and read as zeros, so the file holds what the snapshot's <c>RAM </c> section would hold and no more.
/// <para>The state file keeps a <c>RAM </c> section with the regions' layout and no pages, and its header records
/// the memory file's path, length and SHA-256; restoring checks both before rebuilding the section's pages from the
/// file, so a missing, truncated or foreign memory file is refused, naming it, before any state is touched.</para></summary>
internal static class MemoryFile
{
    private const int PageSize = 4096;
    private const string RamTag = "RAM ";

    /// <summary>RAM split from a snapshot body: the body with the RAM section reduced to its layout, the regions, and
    /// the touched pages (their offsets in the image and where their bytes are in the original body).</summary>
    internal sealed record Split(byte[] StateBody, long ImageBytes, List<(long ImageOffset, int BodyOffset)> Pages, byte[] Body);

    /// <summary>Takes the RAM section's pages out of <paramref name="body"/> (<see cref="VmSnapshot"/>'s bytes).</summary>
    public static Split Take(byte[] body)
    {
        var (header, fieldsStart, fieldsLength) = FindRam(body);
        var r = SnapshotReader.OverFields(body.AsSpan(fieldsStart, fieldsLength).ToArray(), RamTag);
        int regions = r.ReadInt32();
        var layout = new SnapshotWriter.Fields();
        layout.WriteInt32(regions);
        var pages = new List<(long, int)>();
        long imageOffset = 0;
        int at = fieldsStart + 4;
        for (int i = 0; i < regions; i++)
        {
            ulong start = r.ReadUInt64(), length = r.ReadUInt64();
            int count = r.ReadInt32();
            at += 20;
            layout.WriteUInt64(start);
            layout.WriteUInt64(length);
            layout.WriteInt32(0); // the pages are in the memory file
            for (int p = 0; p < count; p++)
            {
                ulong address = r.ReadUInt64();
                r.ReadBytes(PageSize);
                pages.Add((imageOffset + (long)(address - start), at + 8));
                at += 8 + PageSize;
            }
            imageOffset += (long)length;
        }
        return new Split(Replace(body, header, fieldsStart + fieldsLength, layout.ToArray()), imageOffset, pages, body);
    }

    /// <summary>Writes the image of <paramref name="split"/> to <paramref name="temporary"/> (a new file): its length
    /// set first, then each touched page at its offset, the rest left as holes; synced.</summary>
    /// <returns>What the state file records of it (its final <paramref name="path"/>).</returns>
    public static MemoryFileReference Write(Split split, string temporary, string path)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var zeros = new byte[1 << 20];
        long hashed = 0;
        void HashZerosUpTo(long offset)
        {
            while (hashed < offset)
            {
                int n = (int)Math.Min(zeros.Length, offset - hashed);
                sha.AppendData(zeros, 0, n);
                hashed += n;
            }
        }
        using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
        {
            stream.SetLength(split.ImageBytes);
            foreach (var (offset, bodyOffset) in split.Pages)
            {
                HashZerosUpTo(offset);
                var page = split.Body.AsSpan(bodyOffset, PageSize);
                stream.Position = offset;
                stream.Write(page);
                sha.AppendData(page);
                hashed += PageSize;
            }
            HashZerosUpTo(split.ImageBytes);
            stream.Flush(flushToDisk: true);
        }
        return new MemoryFileReference(path, split.ImageBytes, Convert.ToHexStringLower(sha.GetHashAndReset()));
    }

    /// <summary>The body of a state file whose RAM is in <paramref name="path"/> with its pages put back: checks the
    /// file's existence, length and SHA-256 against <paramref name="reference"/> first.</summary>
    /// <exception cref="SnapshotFormatException">The memory file is missing, of another length, or of other bytes.</exception>
    public static byte[] Join(byte[] stateBody, MemoryFileReference reference, string path)
    {
        const string advice = "Give the memory file written with this snapshot (--mem-file MEM), unchanged since";
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new SnapshotFormatException($"the memory file '{path}' is missing: the snapshot keeps its RAM there", SnapshotRefusal.MemoryFileMismatch, advice);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SnapshotFormatException($"cannot read the memory file '{path}': {e.Message}", SnapshotRefusal.MemoryFileMismatch, advice);
        }
        using (stream)
        {
            if (stream.Length != reference.Bytes)
            {
                throw new SnapshotFormatException(
                    $"the memory file '{path}' has {stream.Length:N0} bytes, and the snapshot recorded {reference.Bytes:N0}{(stream.Length < reference.Bytes ? " (truncated)" : "")}",
                    SnapshotRefusal.MemoryFileMismatch, advice);
            }
            var (header, fieldsStart, fieldsLength) = FindRam(stateBody);
            var r = SnapshotReader.OverFields(stateBody.AsSpan(fieldsStart, fieldsLength).ToArray(), RamTag);
            int regions = r.ReadInt32();
            var layout = new List<(ulong Start, ulong Length)>();
            for (int i = 0; i < regions; i++)
            {
                layout.Add((r.ReadUInt64(), r.ReadUInt64()));
                if (r.ReadInt32() != 0)
                {
                    throw r.Invalid("pages in the state file of a snapshot whose RAM is in a memory file");
                }
            }
            if (layout.Aggregate(0UL, (sum, l) => sum + l.Length) != (ulong)reference.Bytes)
            {
                throw r.Invalid($"RAM regions of other than the memory file's {reference.Bytes:N0} bytes");
            }
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var fields = new SnapshotWriter.Fields();
            fields.WriteInt32(regions);
            var chunk = new byte[1 << 20];
            foreach (var (start, length) in layout)
            {
                fields.WriteUInt64(start);
                fields.WriteUInt64(length);
                int countAt = fields.Length;
                fields.WriteInt32(0);
                int count = 0;
                for (ulong done = 0; done < length;)
                {
                    int n = (int)Math.Min((ulong)chunk.Length, length - done);
                    stream.ReadExactly(chunk, 0, n);
                    sha.AppendData(chunk, 0, n);
                    for (int offset = 0; offset < n; offset += PageSize)
                    {
                        var page = chunk.AsSpan(offset, Math.Min(PageSize, n - offset));
                        if (page.ContainsAnyExcept((byte)0))
                        {
                            fields.WriteUInt64(start + done + (ulong)offset);
                            fields.WriteBytes(page);
                            count++;
                        }
                    }
                    done += (ulong)n;
                }
                fields.PatchInt32(countAt, count);
            }
            string hash = Convert.ToHexStringLower(sha.GetHashAndReset());
            if (hash != reference.Sha256)
            {
                throw new SnapshotFormatException(
                    $"the memory file '{path}' does not match the snapshot: its SHA-256 is {hash}, and the snapshot recorded {reference.Sha256}",
                    SnapshotRefusal.MemoryFileMismatch, advice);
            }
            return Replace(stateBody, header, fieldsStart + fieldsLength, fields.ToArray());
        }
    }

    // The RAM section of a body: where its header starts, where its fields start and how long they are.
    private static (int Header, int FieldsStart, int FieldsLength) FindRam(byte[] body)
    {
        int at = 6; // "NSNP" and the container version
        foreach (var (tag, _, length) in SnapshotReader.Sections(body))
        {
            if (tag == RamTag)
            {
                return (at, at + 10, (int)length);
            }
            at += 10 + (int)length;
        }
        throw new SnapshotFormatException("the snapshot has no RAM section");
    }

    // The body with the fields of the section whose header is at [header, end) replaced by fields (its header kept,
    // its length rewritten).
    private static byte[] Replace(byte[] body, int header, int end, byte[] fields)
    {
        var result = new byte[header + 10 + fields.Length + (body.Length - end)];
        body.AsSpan(0, header + 10).CopyTo(result);
        BinaryPrimitives.WriteUInt32LittleEndian(result.AsSpan(header + 6), (uint)fields.Length);
        fields.CopyTo(result, header + 10);
        body.AsSpan(end).CopyTo(result.AsSpan(header + 10 + fields.Length));
        return result;
    }
}
