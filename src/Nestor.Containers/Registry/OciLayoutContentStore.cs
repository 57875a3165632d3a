using System.Text.Json;

namespace Nestor.Containers.Registry;

/// <summary>An OCI image layout directory (image-spec image-layout.md: <c>oci-layout</c>, <c>index.json</c>,
/// <c>blobs/sha256/HEX</c>) as an <see cref="IImageContentStore"/>: references are the index entries'
/// <c>org.opencontainers.image.ref.name</c> annotations. Blobs being received wait in <c>.incoming/</c> (outside
/// <c>blobs/</c>, so readers of the layout never see a half blob).</summary>
public sealed class OciLayoutContentStore : IImageContentStore
{
    /// <summary>The annotation an OCI layout names its images by (image-spec annotations.md).</summary>
    public const string ReferenceAnnotation = "org.opencontainers.image.ref.name";

    /// <summary>Opens, or creates, the layout at <paramref name="directory"/>.</summary>
    public OciLayoutContentStore(string directory)
    {
        Directory = Path.GetFullPath(directory);
        System.IO.Directory.CreateDirectory(Path.Combine(Directory, "blobs", "sha256"));
        string marker = Path.Combine(Directory, "oci-layout");
        if (!File.Exists(marker))
        {
            File.WriteAllBytes(marker, JsonSerializer.SerializeToUtf8Bytes(new LayoutMarker(), RegistryJson.Default.LayoutMarker));
        }
        if (!File.Exists(IndexPath))
        {
            WriteIndex(new LayoutIndex());
        }
    }

    /// <summary>The layout's directory.</summary>
    public string Directory { get; }

    private string IndexPath => Path.Combine(Directory, "index.json");

    /// <summary>The file that holds blob <paramref name="digest"/>.</summary>
    public string BlobPath(string digest)
    {
        int colon = digest.IndexOf(':');
        if (colon <= 0 || digest.AsSpan(colon + 1).ContainsAny("/\\.") )
        {
            throw new ArgumentException($"'{digest}' is not a digest", nameof(digest));
        }
        return Path.Combine(Directory, "blobs", digest[..colon], digest[(colon + 1)..]);
    }

    public bool HasBlob(string digest) => File.Exists(BlobPath(digest));

    public Stream OpenBlob(string digest) => File.OpenRead(BlobPath(digest));

    public string CreateIncomingBlobFile()
    {
        string incoming = Path.Combine(Directory, ".incoming");
        System.IO.Directory.CreateDirectory(incoming);
        string file = Path.Combine(incoming, Guid.NewGuid().ToString("N"));
        File.Create(file).Dispose();
        return file;
    }

    public void CommitBlob(string incomingFile, string digest)
    {
        string target = BlobPath(digest);
        System.IO.Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        File.Move(incomingFile, target, overwrite: true);
    }

    /// <summary>Stores <paramref name="bytes"/> as a blob (if not there yet) and returns its digest.</summary>
    public string AddBlob(ReadOnlySpan<byte> bytes)
    {
        string digest = RegistryClient.Sha256Digest(bytes);
        if (!HasBlob(digest))
        {
            string incoming = CreateIncomingBlobFile();
            File.WriteAllBytes(incoming, bytes.ToArray());
            CommitBlob(incoming, digest);
        }
        return digest;
    }

    public void AddManifest(LocalManifest manifest, string reference)
    {
        AddBlob(manifest.Bytes);
        var index = ReadIndex();
        index.Manifests.RemoveAll(m => m.Annotations?.GetValueOrDefault(ReferenceAnnotation) == reference);
        index.Manifests.Add(new ContentDescriptor
        {
            MediaType = manifest.MediaType,
            Digest = manifest.Digest,
            Size = manifest.Bytes.Length,
            Annotations = new Dictionary<string, string> { [ReferenceAnnotation] = reference },
        });
        WriteIndex(index);
    }

    public LocalManifest? FindManifest(string reference)
    {
        var entries = ReadIndex().Manifests;
        var entry = entries.FirstOrDefault(m => m.Annotations?.GetValueOrDefault(ReferenceAnnotation) == reference)
            ?? entries.FirstOrDefault(m => m.Digest == reference);
        if (entry is null && ImageReference.TryParse(reference, out var wanted, out _))
        {
            entry = entries.FirstOrDefault(m => m.Annotations?.GetValueOrDefault(ReferenceAnnotation) is { } name
                && ImageReference.TryParse(name, out var named, out _) && named == wanted);
        }
        string digest = entry?.Digest ?? reference;
        if (!digest.StartsWith("sha256:", StringComparison.Ordinal) || !HasBlob(digest))
        {
            return null;
        }
        byte[] bytes = File.ReadAllBytes(BlobPath(digest));
        string mediaType = entry?.MediaType ?? ManifestDocument.Read(bytes).MediaType ?? RegistryMediaTypes.OciManifest;
        return new LocalManifest(bytes, mediaType, digest);
    }

    public IReadOnlyList<string> ReferencesOf(string digest) =>
        [.. ReadIndex().Manifests.Where(m => m.Digest == digest)
            .Select(m => m.Annotations?.GetValueOrDefault(ReferenceAnnotation)).OfType<string>()];

    private LayoutIndex ReadIndex() =>
        JsonSerializer.Deserialize(File.ReadAllBytes(IndexPath), RegistryJson.Default.LayoutIndex) ?? new LayoutIndex();

    private void WriteIndex(LayoutIndex index)
    {
        // Written beside and renamed over, so a reader (or a crash) never sees a half-written index.
        string temporary = IndexPath + "." + Guid.NewGuid().ToString("N");
        File.WriteAllBytes(temporary, JsonSerializer.SerializeToUtf8Bytes(index, RegistryJson.Default.LayoutIndex));
        File.Move(temporary, IndexPath, overwrite: true);
    }
}
