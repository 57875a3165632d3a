using System.Text.Json;
using Nestor.Host;

namespace Nestor.Containers.Images;

/// <summary>An OCI image layout directory (image-spec image-layout.md): the <c>oci-layout</c> file, <c>index.json</c>
/// and content-addressed blobs under <c>blobs/sha256/&lt;hex&gt;</c>. Every blob written is hashed while it is copied
/// and refused if it does not match the digest it was announced with; blobs and the index are written to a temporary
/// file, fsynced and renamed into place, so a crash leaves either the old or the new file, never half of one. Not
/// thread-safe; the image store serializes writers with a lock file.</summary>
public sealed class OciLayout
{
    /// <summary>The annotation that names a manifest of <c>index.json</c> (image-spec annotations.md).</summary>
    public const string RefNameAnnotation = "org.opencontainers.image.ref.name";

    /// <summary>The layout version Nestor writes in <c>oci-layout</c>.</summary>
    public const string LayoutVersion = "1.0.0";

    private OciLayout(string root) => Root = root;

    /// <summary>The layout's directory.</summary>
    public string Root { get; }

    /// <summary>Where temporary files are written before they are renamed into place: inside the layout, so that the
    /// rename stays on one file system.</summary>
    public string TemporaryDirectory => Path.Combine(Root, "tmp");

    /// <summary>Opens an existing layout; <see cref="ImageStoreException"/> if <paramref name="root"/> has no
    /// <c>oci-layout</c> file or names a version other than 1.x.</summary>
    public static OciLayout Open(string root)
    {
        root = Path.GetFullPath(root);
        string layoutFile = Path.Combine(root, "oci-layout");
        if (!File.Exists(layoutFile))
        {
            throw new ImageStoreException($"{root} is not an OCI image layout: it has no oci-layout file (image-spec image-layout.md)");
        }
        OciLayoutFile? parsed;
        try
        {
            parsed = JsonSerializer.Deserialize(File.ReadAllText(layoutFile), OciJson.Default.OciLayoutFile);
        }
        catch (JsonException e)
        {
            throw new ImageStoreException($"{layoutFile} is not valid JSON: {e.Message}", e);
        }
        if (parsed?.ImageLayoutVersion is not { } version || !version.StartsWith("1.", StringComparison.Ordinal))
        {
            throw new ImageStoreException($"{layoutFile} names image layout version '{parsed?.ImageLayoutVersion}'; Nestor reads version 1.x");
        }
        return new OciLayout(root);
    }

    /// <summary>Opens the layout at <paramref name="root"/>, creating the directory, <c>oci-layout</c>, an empty
    /// <c>index.json</c> and <c>blobs/sha256</c> if it is not one yet.</summary>
    public static OciLayout OpenOrCreate(string root)
    {
        root = Path.GetFullPath(root);
        Directory.CreateDirectory(Path.Combine(root, "blobs", "sha256"));
        var layout = new OciLayout(root);
        Directory.CreateDirectory(layout.TemporaryDirectory);
        if (!File.Exists(Path.Combine(root, "index.json")))
        {
            layout.WriteIndex(new OciIndex());
        }
        if (!File.Exists(Path.Combine(root, "oci-layout")))
        {
            layout.WriteFileAtomically("oci-layout", JsonSerializer.SerializeToUtf8Bytes(new OciLayoutFile { ImageLayoutVersion = LayoutVersion }, OciJson.Writer.OciLayoutFile));
        }
        return Open(root);
    }

    /// <summary>The path of a blob (whether or not it exists).</summary>
    public string BlobPath(string digest) => Path.Combine(Root, "blobs", "sha256", Digest.Hex(digest));

    /// <summary>Whether the layout holds the blob.</summary>
    public bool HasBlob(string digest) => File.Exists(BlobPath(digest));

    /// <summary>Opens a blob for reading; <see cref="BlobException"/> naming it if it is missing. The content is not
    /// checked here: use <see cref="ReadBlob"/> or <see cref="VerifyBlob"/> for that.</summary>
    public Stream OpenBlob(string digest)
    {
        string path = BlobPath(digest);
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new BlobException(digest, $"blob {digest} is missing from {Root} (a layer or config the image needs was never written or was removed; load or pull the image again)");
        }
    }

    /// <summary>A whole blob, checked against its digest (and <paramref name="expectedSize"/> if given).</summary>
    public byte[] ReadBlob(string digest, long? expectedSize = null)
    {
        using var stream = OpenBlob(digest);
        using var buffer = new MemoryStream();
        stream.CopyTo(buffer);
        byte[] bytes = buffer.ToArray();
        CheckContent(digest, Digest.Of(bytes), bytes.LongLength, expectedSize);
        return bytes;
    }

    /// <summary>Hashes a stored blob and throws <see cref="BlobException"/> if it is missing or corrupt.</summary>
    public void VerifyBlob(string digest, long? expectedSize = null)
    {
        using var stream = OpenBlob(digest);
        using var hashing = new HashingStream(stream);
        hashing.CopyTo(Stream.Null);
        CheckContent(digest, hashing.FinishDigest(), hashing.ByteCount, expectedSize);
    }

    private void CheckContent(string digest, string actual, long size, long? expectedSize)
    {
        if (actual != digest)
        {
            throw new BlobException(digest, $"blob {digest} in {Root} is corrupt: its content hashes to {actual} (remove the image and load or pull it again)");
        }
        if (expectedSize is { } expected && expected != size)
        {
            throw new BlobException(digest, $"blob {digest} in {Root} has {size} bytes where its descriptor says {expected}");
        }
    }

    /// <summary>Writes a blob from <paramref name="content"/> and returns its descriptor. With
    /// <paramref name="expectedDigest"/> the content must hash to it (and have <paramref name="expectedSize"/> bytes),
    /// or nothing is stored and <see cref="BlobException"/> says which blob was wrong. A blob already present is kept
    /// (content addressing makes them equal).</summary>
    public OciDescriptor WriteBlob(Stream content, string mediaType, string? expectedDigest = null, long? expectedSize = null)
    {
        if (expectedDigest is not null)
        {
            Digest.Hex(expectedDigest);
        }
        Directory.CreateDirectory(TemporaryDirectory);
        string temporary = Path.Combine(TemporaryDirectory, "blob-" + Guid.NewGuid().ToString("N"));
        try
        {
            string digest;
            long size;
            using (var file = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                using (var hashing = new HashingStream(file, leaveOpen: true))
                {
                    content.CopyTo(hashing, 1 << 16);
                    digest = hashing.FinishDigest();
                    size = hashing.ByteCount;
                }
                file.Flush(flushToDisk: true);
            }
            if (expectedDigest is not null && digest != expectedDigest)
            {
                throw new BlobException(expectedDigest, $"blob {expectedDigest} is corrupt: its content hashes to {digest}; nothing was stored");
            }
            if (expectedSize is { } expected && expected != size)
            {
                throw new BlobException(digest, $"blob {digest} has {size} bytes where its descriptor says {expected}; nothing was stored");
            }
            string path = BlobPath(digest);
            if (!File.Exists(path))
            {
                File.Move(temporary, path);
                FileSystemCalls.SyncDirectory(Path.GetDirectoryName(path)!);
            }
            return new OciDescriptor { MediaType = mediaType, Digest = digest, Size = size };
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    /// <summary>Writes a blob held in memory.</summary>
    public OciDescriptor WriteBlob(ReadOnlySpan<byte> content, string mediaType)
    {
        using var stream = new MemoryStream(content.ToArray(), writable: false);
        return WriteBlob(stream, mediaType);
    }

    /// <summary>Removes a blob if present.</summary>
    public void DeleteBlob(string digest) => File.Delete(BlobPath(digest));

    /// <summary>The digests of every blob present.</summary>
    public IEnumerable<string> BlobDigests() =>
        Directory.EnumerateFiles(Path.Combine(Root, "blobs", "sha256"))
            .Select(path => Digest.Sha256Prefix + Path.GetFileName(path))
            .Where(Digest.IsValid);

    /// <summary>Reads <c>index.json</c>.</summary>
    public OciIndex ReadIndex()
    {
        string path = Path.Combine(Root, "index.json");
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(path), OciJson.Default.OciIndex)
                ?? throw new ImageStoreException($"{path} is null");
        }
        catch (FileNotFoundException)
        {
            throw new ImageStoreException($"{Root} is not a complete OCI image layout: it has no index.json");
        }
        catch (JsonException e)
        {
            throw new ImageStoreException($"{path} is not a valid image index: {e.Message}", e);
        }
    }

    /// <summary>Replaces <c>index.json</c> atomically (temporary file, fsync, rename). The index is what makes blobs
    /// part of an image, so callers write it last.</summary>
    public void WriteIndex(OciIndex index) =>
        WriteFileAtomically("index.json", JsonSerializer.SerializeToUtf8Bytes(index, OciJson.Writer.OciIndex));

    /// <summary>The manifests of <c>index.json</c> with their ref names (null for an unnamed manifest).</summary>
    public IReadOnlyList<(string? RefName, OciDescriptor Manifest)> ReadManifests() =>
        ReadIndex().Manifests
            .Select(m => (m.Annotations is { } a && a.TryGetValue(RefNameAnnotation, out var name) ? name : (string?)null, m))
            .ToList();

    private void WriteFileAtomically(string name, byte[] content)
    {
        Directory.CreateDirectory(TemporaryDirectory);
        string temporary = Path.Combine(TemporaryDirectory, name + "-" + Guid.NewGuid().ToString("N"));
        try
        {
            using (var file = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                file.Write(content);
                file.Flush(flushToDisk: true);
            }
            File.Move(temporary, Path.Combine(Root, name), overwrite: true);
            FileSystemCalls.SyncDirectory(Root);
        }
        finally
        {
            File.Delete(temporary);
        }
    }
}
