using System.Buffers.Binary;

namespace Nestor.Hypervisor.Migration;

/// <summary>The bytes of page <paramref name="index"/> of a VM's RAM as they are now, and its guest frame.</summary>
public delegate ReadOnlySpan<byte> MigrationPageSource(long index, out ulong guestFrame);

/// <summary>What one round put on the link.</summary>
/// <param name="Pages">Pages sent.</param>
/// <param name="FilledPages">Of those, pages of one repeated byte, sent as that byte alone.</param>
/// <param name="Bytes">Bytes the round took on the link, its end section included.</param>
public readonly record struct PageRoundSent(long Pages, long FilledPages, long Bytes);

/// <summary>One pre-copy round in the stream's form (docs/migration.md, "The stream"): the pages marked pending, in
/// frame order, as <see cref="MigrationStream.Page"/> sections of at most <see cref="MigrationStream.PagesPerSection"/>
/// entries (frame, kind, then the page or its one byte), then a <see cref="MigrationStream.RoundEnd"/> with the
/// round's number, page count and bytes. The one writer of rounds for both engines' sources: sim's reads pages from its
/// RAM image, KVM's from the slots behind its dirty log.</summary>
public static class PageRoundWriter
{
    /// <summary>Sends the pages of <paramref name="pending"/> (cleared as each goes) and the round's end.</summary>
    public static PageRoundSent Send(RateLimitedWriter link, int round, bool[] pending, long pageCount, MigrationPageSource source)
    {
        long before = link.Written;
        long pages = 0, filled = 0;
        var payload = new MemoryStream();
        var entry = new byte[9];
        int inSection = 0;
        void Flush()
        {
            var bytes = payload.GetBuffer();
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(0), round);
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(4), inSection);
            link.WriteSection(MigrationStream.Page, bytes.AsSpan(0, (int)payload.Length));
            payload.SetLength(0);
            inSection = 0;
        }
        for (long i = 0; i < pageCount; i++)
        {
            if (!pending[i])
            {
                continue;
            }
            pending[i] = false;
            if (inSection == 0)
            {
                payload.Write(new byte[8]); // round, count: filled in at the flush
            }
            var page = source(i, out ulong frame);
            BinaryPrimitives.WriteUInt64LittleEndian(entry, frame);
            if (MigrationStream.IsFilled(page, out byte value))
            {
                entry[8] = MigrationStream.FilledPage;
                payload.Write(entry);
                payload.WriteByte(value);
                filled++;
            }
            else
            {
                entry[8] = MigrationStream.RawPage;
                payload.Write(entry);
                payload.Write(page);
            }
            pages++;
            if (++inSection == MigrationStream.PagesPerSection)
            {
                Flush();
            }
        }
        if (inSection > 0)
        {
            Flush();
        }
        var end = new byte[20];
        BinaryPrimitives.WriteInt32LittleEndian(end, round);
        BinaryPrimitives.WriteInt64LittleEndian(end.AsSpan(4), pages);
        BinaryPrimitives.WriteInt64LittleEndian(end.AsSpan(12), link.Written - before);
        link.WriteSection(MigrationStream.RoundEnd, end);
        return new PageRoundSent(pages, filled, link.Written - before);
    }
}
