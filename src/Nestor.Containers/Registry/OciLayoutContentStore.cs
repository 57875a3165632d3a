using Nestor.Containers.Images;
using Nestor.Host;

namespace Nestor.Containers.Registry;

/// <summary>An OCI image layout directory (the image store's <see cref="OciLayout"/>) as an
/// <see cref="IImageContentStore"/>: references are the index entries' <c>org.opencontainers.image.ref.name</c>
/// annotations, as written (skopeo's <c>oci:DIR:NAME</c>) or in full normalized form. Blobs being received wait in the
/// layout's <c>tmp/</c>, outside <c>blobs/</c>, so readers never see a half blob.</summary>
public class OciLayoutContentStore(OciLayout layout) : IImageContentStore
{
    /// <summary>Opens, or creates, the layout at <paramref name="directory"/>.</summary>
    public OciLayoutContentStore(string directory) : this(OciLayout.OpenOrCreate(directory))
    {
    }

    /// <summary>The layout.</summary>
    public OciLayout Layout { get; } = layout;

    public bool HasBlob(string digest) => Layout.HasBlob(digest);

    public Stream OpenBlob(string digest) => Layout.OpenBlob(digest);

    public string CreateIncomingBlobFile()
    {
        Directory.CreateDirectory(Layout.TemporaryDirectory);
        string file = Path.Combine(Layout.TemporaryDirectory, "incoming-" + Guid.NewGuid().ToString("N"));
        File.Create(file).Dispose();
        return file;
    }

    public void CommitBlob(string incomingFile, string digest)
    {
        string target = Layout.BlobPath(digest);
        // The download has flushed and verified the file; it is made durable before it becomes a blob, as the layout's
        // own writes are (a crash must not leave a named blob with lost content).
        using (var file = new FileStream(incomingFile, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Flush(flushToDisk: true);
        }
        File.Move(incomingFile, target, overwrite: true);
        FileSystemCalls.SyncDirectory(Path.GetDirectoryName(target)!);
    }

    public virtual void AddManifest(LocalManifest manifest, string reference)
    {
        Layout.WriteBlob(manifest.Bytes, manifest.MediaType);
        var index = Layout.ReadIndex();
        index.Manifests.RemoveAll(m => RefName(m) == reference);
        index.Manifests.Add(new OciDescriptor
        {
            MediaType = manifest.MediaType,
            Digest = manifest.Digest,
            Size = manifest.Bytes.Length,
            Annotations = new Dictionary<string, string> { [OciLayout.RefNameAnnotation] = reference },
        });
        Layout.WriteIndex(index);
    }

    public virtual LocalManifest? FindManifest(string reference)
    {
        var entries = Layout.ReadManifests();
        var entry = entries.FirstOrDefault(m => m.RefName == reference).Manifest
            ?? entries.FirstOrDefault(m => m.Manifest.Digest == reference).Manifest;
        if (entry is null && !reference.StartsWith(Images.Digest.Sha256Prefix, StringComparison.Ordinal)
            && ImageReference.TryParse(reference, out var wanted, out _))
        {
            entry = entries.FirstOrDefault(m => m.RefName is { } name
                && ImageReference.TryParse(name, out var named, out _) && named == wanted).Manifest;
        }
        return entry is null || !Layout.HasBlob(entry.Digest) ? null : Read(entry.Digest, entry.MediaType);
    }

    public IReadOnlyList<string> ReferencesOf(string digest) =>
        [.. Layout.ReadManifests().Where(m => m.Manifest.Digest == digest).Select(m => m.RefName).OfType<string>()];

    /// <summary>The stored manifest <paramref name="digest"/>, checked, with <paramref name="mediaType"/> or the one
    /// its bytes name.</summary>
    protected LocalManifest Read(string digest, string? mediaType)
    {
        byte[] bytes = Layout.ReadBlob(digest);
        return new LocalManifest(bytes, string.IsNullOrEmpty(mediaType) ? RegistryManifest.MediaTypeOf(bytes) : mediaType, digest);
    }

    private static string? RefName(OciDescriptor descriptor) =>
        descriptor.Annotations?.GetValueOrDefault(OciLayout.RefNameAnnotation);
}

/// <summary>The local <see cref="ImageStore"/> as an <see cref="IImageContentStore"/>: names go through the store's own
/// normalization (full references, unnamed entries replaced) under its write lock, so a pulled image is resolved,
/// listed and run like an imported one.</summary>
public sealed class ImageStoreContentStore(ImageStore store) : OciLayoutContentStore(store.Layout)
{
    /// <summary>The store.</summary>
    public ImageStore Store { get; } = store;

    public override void AddManifest(LocalManifest manifest, string reference)
    {
        using var _ = Store.Lock();
        // Blobs were written without the lock; a concurrent 'image rm' may have collected them as unreferenced.
        var document = RegistryManifest.Read(manifest.Bytes, OciJson.Default.OciManifest);
        foreach (var blob in document.Layers.Prepend(document.Config))
        {
            if (!Layout.HasBlob(blob.Digest))
            {
                throw new ImageStoreException($"blob {blob.Digest} of {reference} was removed while it was pulled (an 'image rm' ran at the same time): pull again");
            }
        }
        var descriptor = Layout.WriteBlob(manifest.Bytes, manifest.MediaType);
        // Each blob was checked against its digest as it streamed; the store also checks each layer's uncompressed tar
        // against the config's diff ids (and unpacks it) before the image gets a name, so a config that lies about
        // its layers is refused at pull, not at the first run.
        Store.VerifyImage(descriptor.Digest);
        Store.AddToIndex(descriptor, reference);
    }

    public override LocalManifest? FindManifest(string reference)
    {
        try
        {
            // The store's index records every manifest as OCI, so the media type is taken from the manifest's own
            // mediaType field (Docker schema 2 and OCI manifests both carry one).
            return Read(Store.Resolve(reference).ManifestDigest, null);
        }
        catch (ImageNotFoundException)
        {
            return null;
        }
    }
}
