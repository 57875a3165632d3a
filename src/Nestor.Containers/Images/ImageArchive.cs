using System.Formats.Tar;
using System.IO.Compression;
using System.Text.Json;

namespace Nestor.Containers.Images;

/// <summary>The tarball formats images travel in.</summary>
public enum ImageArchiveFormat
{
    /// <summary><c>docker save</c>'s: <c>manifest.json</c>, <c>repositories</c>, <c>&lt;config hex&gt;.json</c>,
    /// <c>&lt;diff-id hex&gt;/layer.tar</c> (uncompressed layers).</summary>
    DockerArchive,

    /// <summary>An OCI image layout in a tar (image-spec image-layout.md), as skopeo's and podman's oci-archive.</summary>
    OciArchive,
}

/// <summary>Saves images of a store into docker-archive and oci-archive tarballs and loads either (and Docker 25's
/// archives, which are both at once) into a store. Blobs are copied byte for byte, so an image's id (its config's
/// digest), layers and, for oci-archive, its manifest digest survive a save and load. Every blob loaded is checked
/// against its digest and every layer against the config's diff ids before the index names the image.</summary>
public static class ImageArchive
{
    /// <summary>The annotation containerd (and Docker 25's save) uses for an image's full name in an OCI index.</summary>
    public const string ContainerdImageNameAnnotation = "io.containerd.image.name";

    /// <summary>Writes <paramref name="references"/> (names or ids) to <paramref name="output"/> in
    /// <paramref name="format"/>.</summary>
    public static void Save(ImageStore store, IReadOnlyList<string> references, Stream output, ImageArchiveFormat format)
    {
        var images = references.Select(r => (Reference: r, Image: store.Resolve(r))).ToList();
        using var writer = new TarWriter(output, TarEntryFormat.Pax, leaveOpen: true);
        if (format == ImageArchiveFormat.OciArchive)
        {
            SaveOci(store, images, writer);
        }
        else
        {
            SaveDocker(store, images, writer);
        }
    }

    /// <summary>The name an archive gives an image saved by <paramref name="reference"/>: the reference as it names a
    /// tag, or none when it was an id.</summary>
    private static ImageReference? NameOf(ImageStore store, string reference, StoredImage image)
    {
        if (ImageReference.TryParse(reference, out var parsed, out _) && parsed.Digest is null
            && image.References.Contains(parsed.FamiliarName))
        {
            return parsed;
        }
        return null;
    }

    private static void SaveOci(ImageStore store, List<(string Reference, StoredImage Image)> images, TarWriter writer)
    {
        var index = new OciIndex();
        var blobs = new SortedSet<string>(StringComparer.Ordinal);
        foreach (var (reference, image) in images)
        {
            var manifest = store.ReadManifest(image.ManifestDigest);
            blobs.Add(image.ManifestDigest);
            blobs.Add(manifest.Config.Digest);
            foreach (var layer in manifest.Layers)
            {
                blobs.Add(layer.Digest);
            }
            var stored = store.Layout.ReadManifests().First(m => m.Manifest.Digest == image.ManifestDigest).Manifest;
            var name = NameOf(store, reference, image);
            index.Manifests.Add(new OciDescriptor
            {
                MediaType = stored.MediaType,
                Digest = stored.Digest,
                Size = stored.Size,
                // The full name under both annotations: podman and skopeo read ref.name, containerd its own.
                Annotations = name is null ? null : new()
                {
                    [OciLayout.RefNameAnnotation] = name.ToString(),
                    [ContainerdImageNameAnnotation] = name.ToString(),
                },
            });
        }
        WriteBytes(writer, "oci-layout", JsonSerializer.SerializeToUtf8Bytes(new OciLayoutFile(), OciJson.Writer.OciLayoutFile));
        WriteBytes(writer, "index.json", JsonSerializer.SerializeToUtf8Bytes(index, OciJson.Writer.OciIndex));
        WriteDirectory(writer, "blobs/");
        WriteDirectory(writer, "blobs/sha256/");
        foreach (var digest in blobs)
        {
            store.Layout.VerifyBlob(digest);
            using var blob = store.Layout.OpenBlob(digest);
            WriteStream(writer, "blobs/sha256/" + Digest.Hex(digest), blob);
        }
    }

    private static void SaveDocker(ImageStore store, List<(string Reference, StoredImage Image)> images, TarWriter writer)
    {
        var entries = new List<DockerArchiveManifestEntry>();
        var repositories = new Dictionary<string, Dictionary<string, string>>();
        var written = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (reference, image) in images)
        {
            var manifest = store.ReadManifest(image.ManifestDigest);
            string configName = Digest.Hex(image.Id) + ".json";
            if (written.Add(configName))
            {
                WriteBytes(writer, configName, store.Layout.ReadBlob(image.Id));
            }
            var layerNames = new List<string>();
            for (int i = 0; i < manifest.Layers.Count; i++)
            {
                string diffId = image.LayerDiffIds[i];
                string layerName = Digest.Hex(diffId) + "/layer.tar";
                layerNames.Add(layerName);
                if (written.Add(layerName))
                {
                    WriteDirectory(writer, Digest.Hex(diffId) + "/");
                    WriteLayerUncompressed(store, manifest.Layers[i], diffId, writer, layerName);
                }
            }
            var name = NameOf(store, reference, image);
            entries.Add(new DockerArchiveManifestEntry
            {
                Config = configName,
                // The full name: docker load normalizes it back to the short one, while podman would put a short
                // name under localhost/.
                RepoTags = name is null ? null : [name.ToString()],
                Layers = layerNames,
            });
            if (name is not null && layerNames.Count > 0)
            {
                if (!repositories.TryGetValue(name.FamiliarRepository, out var tags))
                {
                    repositories[name.FamiliarRepository] = tags = [];
                }
                tags[name.Tag!] = Digest.Hex(image.LayerDiffIds[^1]);
            }
        }
        WriteBytes(writer, "manifest.json", JsonSerializer.SerializeToUtf8Bytes(entries, OciJson.Writer.ListDockerArchiveManifestEntry));
        WriteBytes(writer, "repositories", JsonSerializer.SerializeToUtf8Bytes(repositories, OciJson.Writer.DictionaryStringDictionaryStringString));
    }

    /// <summary>docker-archive layers are the uncompressed tars (their file's digest is the diff id); a gzip blob is
    /// decompressed into a temporary file first (a tar entry needs its size before its data).</summary>
    private static void WriteLayerUncompressed(ImageStore store, OciDescriptor layer, string diffId, TarWriter writer, string name)
    {
        if (OciMediaTypes.LayerCompressionOf(layer.MediaType) == LayerCompression.None)
        {
            store.Layout.VerifyBlob(layer.Digest, layer.Size);
            using var blob = store.Layout.OpenBlob(layer.Digest);
            WriteStream(writer, name, blob);
            return;
        }
        string temporary = Path.Combine(store.Layout.TemporaryDirectory, "save-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var file = new FileStream(temporary, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16, FileOptions.DeleteOnClose);
            using (var blob = store.Layout.OpenBlob(layer.Digest))
            using (var gzip = new GZipStream(blob, CompressionMode.Decompress))
            {
                gzip.CopyTo(file);
            }
            file.Position = 0;
            string actual = Digest.Of(file);
            if (actual != diffId)
            {
                throw new BlobException(layer.Digest, $"layer {layer.Digest} decompresses to {actual}, not to its diff id {diffId}");
            }
            file.Position = 0;
            WriteStream(writer, name, file);
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    private static readonly DateTimeOffset ArchiveTime = DateTimeOffset.UnixEpoch;

    private static void WriteBytes(TarWriter writer, string name, byte[] content)
    {
        using var stream = new MemoryStream(content, writable: false);
        WriteStream(writer, name, stream);
    }

    private static void WriteStream(TarWriter writer, string name, Stream content)
    {
        // Fixed owner, mode and time: the archive's bytes then depend on the images only.
        var entry = new PaxTarEntry(TarEntryType.RegularFile, name) { Mode = (UnixFileMode)0x1a4, ModificationTime = ArchiveTime, DataStream = content };
        writer.WriteEntry(entry);
    }

    private static void WriteDirectory(TarWriter writer, string name) =>
        writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, name) { Mode = (UnixFileMode)0x1ed, ModificationTime = ArchiveTime });

    /// <summary>Loads every image of a docker-archive or oci-archive tarball (uncompressed or gzip) into
    /// <paramref name="store"/>; returns the images with the names they were loaded under (Docker's
    /// "Loaded image: NAME" / "Loaded image ID: sha256:…").</summary>
    public static IReadOnlyList<(StoredImage Image, string? Name)> Load(ImageStore store, Stream input)
    {
        string directory = Path.Combine(store.Layout.TemporaryDirectory, "load-" + Guid.NewGuid().ToString("N"));
        try
        {
            Extract(input, directory);
            using var storeLock = store.Lock();
            bool oci = File.Exists(Path.Combine(directory, "oci-layout")) && File.Exists(Path.Combine(directory, "index.json"));
            bool docker = File.Exists(Path.Combine(directory, "manifest.json"));
            if (!oci && !docker)
            {
                throw new ImageStoreException("the archive is neither a docker-archive (no manifest.json) nor an OCI layout (no oci-layout and index.json)");
            }
            return oci ? LoadOci(store, directory, docker) : LoadDocker(store, directory);
        }
        finally
        {
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
    }

    /// <summary>Extracts the archive's regular files, refusing names that leave the directory.</summary>
    private static void Extract(Stream input, string directory)
    {
        Directory.CreateDirectory(directory);
        var buffered = new BufferedStream(input, 1 << 16);
        Stream tar = buffered;
        // gzip's magic, peeked through a one-byte-at-a-time read that can be replayed
        var head = new byte[2];
        int n = buffered.ReadAtLeast(head, 2, throwOnEndOfStream: false);
        Stream replay = new ConcatenatedStream(new MemoryStream(head, 0, n), buffered);
        tar = n == 2 && head[0] == 0x1f && head[1] == 0x8b ? new GZipStream(replay, CompressionMode.Decompress) : replay;
        using var reader = new TarReader(tar);
        while (reader.GetNextEntry() is { } entry)
        {
            if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile))
            {
                continue;
            }
            string[] parts = entry.Name.Split('/', StringSplitOptions.RemoveEmptyEntries).Where(p => p != ".").ToArray();
            if (parts.Length == 0 || parts.Contains(".."))
            {
                throw new ImageStoreException($"the archive entry '{entry.Name}' climbs out of the archive (path traversal): refused");
            }
            string path = Path.Combine([directory, .. parts]);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            using var file = new FileStream(path, FileMode.Create, FileAccess.Write);
            entry.DataStream?.CopyTo(file);
        }
    }

    private static IReadOnlyList<(StoredImage, string?)> LoadOci(ImageStore store, string directory, bool hasDockerManifest)
    {
        var source = OciLayout.Open(directory);
        var loaded = new List<(StoredImage, string?)>();
        // Docker 25's archives are both: its manifest.json's RepoTags name images whose index.json ref names are tags.
        var dockerNames = new Dictionary<string, List<string>>();
        if (hasDockerManifest)
        {
            foreach (var entry in ReadDockerManifest(directory))
            {
                string configDigest = Digest.Sha256Prefix + Path.GetFileName(entry.Config).Replace(".json", "", StringComparison.Ordinal);
                dockerNames[configDigest] = entry.RepoTags ?? [];
            }
        }
        foreach (var descriptor in source.ReadIndex().Manifests)
        {
            var manifestDescriptor = SelectManifest(source, descriptor);
            var manifest = CopyImageBlobs(store, source, manifestDescriptor);
            var names = new List<string>();
            if (descriptor.Annotations?.GetValueOrDefault(ContainerdImageNameAnnotation) is { } containerdName)
            {
                names.Add(containerdName);
            }
            else if (descriptor.Annotations?.GetValueOrDefault(OciLayout.RefNameAnnotation) is { } refName
                && (refName.Contains('/') || refName.Contains(':')) && ImageReference.TryParse(refName, out _, out _))
            {
                // A bare tag ("latest") names no repository: skopeo writes those, and they cannot be shown as names.
                names.Add(refName);
            }
            else if (dockerNames.TryGetValue(manifest.Config.Digest, out var tags))
            {
                names.AddRange(tags);
            }
            if (names.Count == 0)
            {
                store.AddToIndex(manifestDescriptor, null);
            }
            foreach (var name in names)
            {
                store.AddToIndex(manifestDescriptor, name);
            }
            var image = store.Resolve(manifestDescriptor.Digest);
            loaded.Add((image, names.Count > 0 ? ImageReference.Parse(names[0]).FamiliarName : null));
        }
        return loaded;
    }

    /// <summary>The image manifest an index entry names: itself, or linux/amd64's from a nested index.</summary>
    private static OciDescriptor SelectManifest(OciLayout source, OciDescriptor descriptor)
    {
        if (!OciMediaTypes.IsIndex(descriptor.MediaType))
        {
            return OciMediaTypes.IsManifest(descriptor.MediaType) ? descriptor
                : throw new UnsupportedMediaTypeException($"index entry {descriptor.Digest} has media type '{descriptor.MediaType}', not an image manifest or index");
        }
        var nested = JsonSerializer.Deserialize(source.ReadBlob(descriptor.Digest, descriptor.Size), OciJson.Default.OciIndex)!;
        var chosen = nested.Manifests.FirstOrDefault(m => m.Platform is { Os: "linux", Architecture: "amd64" })
            ?? throw new ImageStoreException($"index {descriptor.Digest} has no linux/amd64 image (this host runs amd64)");
        return SelectManifest(source, chosen);
    }

    /// <summary>Copies a manifest, its config and layers into the store, checking each blob's digest and size, and
    /// each layer's diff id (by unpacking it).</summary>
    private static OciManifest CopyImageBlobs(ImageStore store, OciLayout source, OciDescriptor manifestDescriptor)
    {
        var manifestBytes = source.ReadBlob(manifestDescriptor.Digest, manifestDescriptor.Size);
        var manifest = JsonSerializer.Deserialize(manifestBytes, OciJson.Default.OciManifest)
            ?? throw new ImageStoreException($"manifest {manifestDescriptor.Digest} is null");
        byte[] configBytes = source.ReadBlob(manifest.Config.Digest, manifest.Config.Size);
        var configuration = JsonSerializer.Deserialize(configBytes, OciJson.Default.OciImageConfiguration)!;
        if (configuration.RootFileSystem.DiffIds.Count != manifest.Layers.Count)
        {
            throw new ImageStoreException($"image config {manifest.Config.Digest} lists {configuration.RootFileSystem.DiffIds.Count} diff ids but manifest {manifestDescriptor.Digest} has {manifest.Layers.Count} layers");
        }
        for (int i = 0; i < manifest.Layers.Count; i++)
        {
            var layer = manifest.Layers[i];
            OciMediaTypes.LayerCompressionOf(layer.MediaType);
            if (!store.Layout.HasBlob(layer.Digest))
            {
                using var blob = source.OpenBlob(layer.Digest);
                store.Layout.WriteBlob(blob, layer.MediaType, layer.Digest, layer.Size);
            }
            store.EnsureLayerUnpacked(configuration.RootFileSystem.DiffIds[i], layer);
        }
        using (var config = new MemoryStream(configBytes))
        {
            store.Layout.WriteBlob(config, manifest.Config.MediaType, manifest.Config.Digest, manifest.Config.Size);
        }
        using (var bytes = new MemoryStream(manifestBytes))
        {
            store.Layout.WriteBlob(bytes, manifestDescriptor.MediaType, manifestDescriptor.Digest, manifestDescriptor.Size);
        }
        return manifest;
    }

    private static List<DockerArchiveManifestEntry> ReadDockerManifest(string directory)
    {
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(Path.Combine(directory, "manifest.json")), OciJson.Default.ListDockerArchiveManifestEntry) ?? [];
        }
        catch (JsonException e)
        {
            throw new ImageStoreException($"the archive's manifest.json is not valid: {e.Message}", e);
        }
    }

    private static string ArchivePath(string directory, string name)
    {
        var parts = name.Split('/', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Contains(".."))
        {
            throw new ImageStoreException($"the archive's manifest.json names '{name}', outside the archive: refused");
        }
        string path = Path.Combine([directory, .. parts]);
        return File.Exists(path) ? path : throw new ImageStoreException($"the archive's manifest.json names '{name}', which the archive does not contain");
    }

    private static IReadOnlyList<(StoredImage, string?)> LoadDocker(ImageStore store, string directory)
    {
        var loaded = new List<(StoredImage, string?)>();
        foreach (var entry in ReadDockerManifest(directory))
        {
            byte[] configBytes = File.ReadAllBytes(ArchivePath(directory, entry.Config));
            var configuration = JsonSerializer.Deserialize(configBytes, OciJson.Default.OciImageConfiguration)
                ?? throw new ImageStoreException($"the archive's config {entry.Config} is null");
            if (configuration.RootFileSystem.DiffIds.Count != entry.Layers.Count)
            {
                throw new ImageStoreException($"the archive's config {entry.Config} lists {configuration.RootFileSystem.DiffIds.Count} diff ids but manifest.json {entry.Layers.Count} layers");
            }
            var layers = new List<OciDescriptor>();
            for (int i = 0; i < entry.Layers.Count; i++)
            {
                using var file = File.OpenRead(ArchivePath(directory, entry.Layers[i]));
                var (descriptor, diffId) = store.WriteUncompressedLayer(file);
                if (diffId != configuration.RootFileSystem.DiffIds[i])
                {
                    throw new BlobException(diffId, $"layer {entry.Layers[i]} of the archive is a tar whose digest is {diffId}, but the image config's rootfs.diff_ids says {configuration.RootFileSystem.DiffIds[i]}: the image is refused (image-spec config.md)");
                }
                layers.Add(descriptor);
            }
            var configDescriptor = store.Layout.WriteBlob(configBytes, OciMediaTypes.Config);
            var manifest = new OciManifest { Config = configDescriptor, Layers = layers };
            var manifestDescriptor = store.Layout.WriteBlob(JsonSerializer.SerializeToUtf8Bytes(manifest, OciJson.Writer.OciManifest), OciMediaTypes.Manifest);
            var names = entry.RepoTags ?? [];
            if (names.Count == 0)
            {
                store.AddToIndex(manifestDescriptor, null);
            }
            foreach (var name in names)
            {
                store.AddToIndex(manifestDescriptor, name);
            }
            loaded.Add((store.Resolve(manifestDescriptor.Digest), names.Count > 0 ? ImageReference.Parse(names[0]).FamiliarName : null));
        }
        return loaded;
    }
}

/// <summary>Reads one stream, then another: replays bytes already read to look at a header.</summary>
internal sealed class ConcatenatedStream(Stream first, Stream second) : Stream
{
    private bool firstDone;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (!firstDone)
        {
            int n = first.Read(buffer);
            if (n > 0)
            {
                return n;
            }
            firstDone = true;
        }
        return second.Read(buffer);
    }
}
