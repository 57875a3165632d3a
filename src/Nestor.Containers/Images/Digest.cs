using System.Security.Cryptography;

namespace Nestor.Containers.Images;

/// <summary>Content digests as the image-spec writes them (descriptor.md, "Digests"): <c>sha256:</c> and 64 lower-case
/// hex digits. Only sha256 is accepted, the one algorithm every OCI implementation must support.</summary>
public static class Digest
{
    /// <summary>The prefix of every digest Nestor writes.</summary>
    public const string Sha256Prefix = "sha256:";

    /// <summary>The digest of <paramref name="bytes"/>.</summary>
    public static string Of(ReadOnlySpan<byte> bytes) => Sha256Prefix + Convert.ToHexStringLower(SHA256.HashData(bytes));

    /// <summary>The digest of what remains of <paramref name="stream"/>.</summary>
    public static string Of(Stream stream) => Sha256Prefix + Convert.ToHexStringLower(SHA256.HashData(stream));

    /// <summary>Whether <paramref name="digest"/> is a well-formed sha256 digest.</summary>
    public static bool IsValid(string? digest) =>
        digest is { Length: 71 } && digest.StartsWith(Sha256Prefix, StringComparison.Ordinal)
        && digest.AsSpan(7).ContainsAnyExcept("0123456789abcdef") == false;

    /// <summary>The hex part of a digest, checked; <see cref="ImageStoreException"/> naming it otherwise (a path
    /// built from an unchecked digest could leave the blobs directory).</summary>
    public static string Hex(string digest) => IsValid(digest)
        ? digest[7..]
        : throw new ImageStoreException($"'{digest}' is not a sha256 digest (expected sha256: and 64 lower-case hex digits; image-spec descriptor.md)");
}

/// <summary>A write-through stream that hashes what passes and counts it, for digests computed while copying.</summary>
internal sealed class HashingStream(Stream inner, bool leaveOpen = false) : Stream
{
    private readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

    public long ByteCount { get; private set; }

    /// <summary>The digest of everything read or written so far (call once, at the end).</summary>
    public string FinishDigest() => Digest.Sha256Prefix + Convert.ToHexStringLower(hash.GetHashAndReset());

    public override bool CanRead => inner.CanRead;
    public override bool CanSeek => false;
    public override bool CanWrite => inner.CanWrite;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => ByteCount; set => throw new NotSupportedException(); }
    public override void Flush() => inner.Flush();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = inner.Read(buffer);
        hash.AppendData(buffer[..n]);
        ByteCount += n;
        return n;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        inner.Write(buffer);
        hash.AppendData(buffer);
        ByteCount += buffer.Length;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            hash.Dispose();
            if (!leaveOpen)
            {
                inner.Dispose();
            }
        }
        base.Dispose(disposing);
    }
}
