using System.IO.Compression;
using System.Text.Json;
using Nestor.Containers.Storage;
using Nestor.Host;

namespace Nestor.Containers.Images;

/// <summary>The local image store. Its root is an OCI image layout (<see cref="Layout"/>: <c>oci-layout</c>,
/// <c>index.json</c> whose manifests carry <c>org.opencontainers.image.ref.name</c> = the full reference, e.g.
/// <c>docker.io/library/busybox:latest</c>, and <c>blobs/sha256</c>), so skopeo, umoci and podman read it as it is.
/// Beside the layout, Nestor keeps <c>overlay/&lt;diff-id hex&gt;/diff</c> (each layer unpacked once, in overlayfs form,
/// shared by every container's root as a lower directory), <c>tmp/</c> and <c>lock</c>. Writers take flock(2) on
/// <c>lock</c>; readers need no lock because the index is replaced atomically and written last: an image is in the
/// store exactly when the index names it, and every blob it names was written (and checked) before.</summary>
public sealed class ImageStore : IImageStore
{
    private ImageStore(string root, OciLayout layout, LayerUnpackOptions unpackOptions)
    {
        Root = root;
        Layout = layout;
        UnpackOptions = unpackOptions;
    }

    /// <summary>The store's directory.</summary>
    public string Root { get; }

    /// <summary>The OCI image layout the store is.</summary>
    public OciLayout Layout { get; }

    /// <summary>How layers are unpacked (rootless or not).</summary>
    public LayerUnpackOptions UnpackOptions { get; }

    /// <summary>Where unpacked layers live.</summary>
    public string OverlayDirectory => Path.Combine(Root, "overlay");

    /// <summary>The default root: <c>/var/lib/nestor/images</c> for root, <c>$XDG_DATA_HOME/nestor/images</c> (default
    /// <c>~/.local/share/nestor/images</c>) for other users (XDG Base Directory Specification).</summary>
    public static string DefaultRoot()
    {
        if (Environment.IsPrivilegedProcess)
        {
            return "/var/lib/nestor/images";
        }
        string? data = Environment.GetEnvironmentVariable("XDG_DATA_HOME");
        if (string.IsNullOrEmpty(data))
        {
            data = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share");
        }
        return Path.Combine(data, "nestor", "images");
    }

    /// <summary>Opens the store at <paramref name="root"/> (default <see cref="DefaultRoot"/>), creating it if needed.</summary>
    public static ImageStore Open(string? root = null, LayerUnpackOptions? unpackOptions = null)
    {
        root = Path.GetFullPath(root ?? DefaultRoot());
        var layout = OciLayout.OpenOrCreate(root);
        Directory.CreateDirectory(Path.Combine(root, "overlay"));
        return new ImageStore(root, layout, unpackOptions ?? LayerUnpackOptions.ForCurrentUser());
    }

    /// <summary>Takes the store's write lock (flock(2) on <c>lock</c>) until disposed.</summary>
    public IDisposable Lock() => FileSystemCalls.OpenLocked(Path.Combine(Root, "lock"));

    // ---- reading ----

    /// <inheritdoc/>
    public StoredImage Resolve(string reference)
    {
        var manifests = Layout.ReadManifests();
        string? manifestDigest = FindManifest(manifests, reference);
        return manifestDigest is null ? throw new ImageNotFoundException(reference) : Load(manifestDigest, manifests);
    }

    /// <summary>Whether <paramref name="reference"/> names an image.</summary>
    public bool Contains(string reference) => FindManifest(Layout.ReadManifests(), reference) is not null;

    private string? FindManifest(IReadOnlyList<(string? RefName, OciDescriptor Manifest)> manifests, string reference)
    {
        bool isDigest = reference.StartsWith(Digest.Sha256Prefix, StringComparison.Ordinal);
        if (!isDigest && ImageReference.TryParse(reference, out var parsed, out _))
        {
            if (parsed.Digest is { } wanted)
            {
                return manifests.Any(m => m.Manifest.Digest == wanted && m.RefName is { } n && ImageReference.Parse(n).Name == parsed.Name)
                    ? wanted : null;
            }
            string full = parsed.ToString();
            if (manifests.FirstOrDefault(m => m.RefName == full).Manifest?.Digest is { } named)
            {
                return named;
            }
        }
        // As docker: an image id (the config digest, with or without sha256:) or a unique prefix of it; a manifest
        // digest too.
        string hex = isDigest ? reference[7..] : reference;
        if (hex.Length == 0 || !hex.All(char.IsAsciiHexDigitLower))
        {
            return null;
        }
        var matches = manifests.Select(m => m.Manifest.Digest).Distinct()
            .Where(d => d[7..].StartsWith(hex, StringComparison.Ordinal) || ConfigDigestOf(d)[7..].StartsWith(hex, StringComparison.Ordinal))
            .ToList();
        var ids = matches.Select(ConfigDigestOf).Distinct().ToList();
        if (ids.Count > 1)
        {
            throw new ImageStoreException($"'{reference}' is the beginning of {ids.Count} image ids ({string.Join(", ", ids.Select(i => i[7..19]))}): give more of it");
        }
        return matches.FirstOrDefault();
    }

    /// <inheritdoc/>
    public IReadOnlyList<StoredImage> List()
    {
        var manifests = Layout.ReadManifests();
        return manifests.Select(m => m.Manifest.Digest).Distinct().Select(d => Load(d, manifests))
            .OrderByDescending(i => i.Created).ToList();
    }

    /// <summary>The parsed manifest stored under <paramref name="manifestDigest"/>, checked against its digest.</summary>
    public OciManifest ReadManifest(string manifestDigest) =>
        JsonSerializer.Deserialize(Layout.ReadBlob(manifestDigest), OciJson.Default.OciManifest)
            ?? throw new ImageStoreException($"manifest {manifestDigest} is null");

    /// <summary>The parsed image configuration of <paramref name="image"/>.</summary>
    public OciImageConfiguration ReadConfiguration(StoredImage image) => ParseConfiguration(Layout.ReadBlob(image.Id), image.Id);

    private static OciImageConfiguration ParseConfiguration(byte[] bytes, string digest)
    {
        try
        {
            return JsonSerializer.Deserialize(bytes, OciJson.Default.OciImageConfiguration)
                ?? throw new ImageStoreException($"image config {digest} is null");
        }
        catch (JsonException e)
        {
            throw new ImageStoreException($"image config {digest} is not a valid image configuration: {e.Message}", e);
        }
    }

    private string ConfigDigestOf(string manifestDigest) => ReadManifest(manifestDigest).Config.Digest;

    private StoredImage Load(string manifestDigest, IReadOnlyList<(string? RefName, OciDescriptor Manifest)> manifests)
    {
        var manifest = ReadManifest(manifestDigest);
        var configuration = ParseConfiguration(Layout.ReadBlob(manifest.Config.Digest, manifest.Config.Size), manifest.Config.Digest);
        var references = manifests.Where(m => m.Manifest.Digest == manifestDigest && m.RefName is not null)
            .Select(m => ImageReference.Parse(m.RefName!).FamiliarName).Order(StringComparer.Ordinal).ToList();
        return new StoredImage(manifest.Config.Digest, manifestDigest, references, configuration.RootFileSystem.DiffIds,
            configuration.Config ?? new ImageConfig(), configuration.Created ?? DateTimeOffset.UnixEpoch,
            manifest.Layers.Sum(l => l.Size));
    }

    // ---- writing ----

    /// <summary>A new image from a root file system, as <c>docker import</c>: a tar (uncompressed or gzip) or a
    /// directory becomes the single layer; the config has <paramref name="config"/> (none by default, as docker import)
    /// and one history entry.</summary>
    public StoredImage ImportRootFileSystem(string tarOrDirectory, string? reference, ImageConfig? config = null, string? comment = null,
        string? createdBy = null)
    {
        if (Directory.Exists(tarOrDirectory))
        {
            using var _ = Lock();
            var layer = WriteLayerFromDirectory(tarOrDirectory);
            return AddImage([layer.Descriptor], [layer.DiffId], null, config, reference, createdBy ?? "nestor image import " + tarOrDirectory, comment);
        }
        if (!File.Exists(tarOrDirectory))
        {
            throw new ImageStoreException($"{tarOrDirectory}: no such file or directory to import");
        }
        using var file = File.OpenRead(tarOrDirectory);
        return ImportRootFileSystem(file, reference, config, comment, createdBy ?? "nestor image import " + Path.GetFileName(tarOrDirectory));
    }

    /// <summary>A new image from a root file-system tar read from <paramref name="tar"/> (uncompressed or gzip).</summary>
    public StoredImage ImportRootFileSystem(Stream tar, string? reference, ImageConfig? config = null, string? comment = null, string createdBy = "nestor image import -")
    {
        using var _ = Lock();
        var layer = WriteUncompressedLayer(tar);
        return AddImage([layer.Descriptor], [layer.DiffId], null, config, reference, createdBy, comment);
    }

    /// <summary>A layer written from a directory (its tar by <see cref="LayerDiff"/>), unpacked and checked.</summary>
    internal (OciDescriptor Descriptor, string DiffId) WriteLayerFromDirectory(string directory)
    {
        string temporary = Path.Combine(Layout.TemporaryDirectory, "layer-" + Guid.NewGuid().ToString("N"));
        try
        {
            using (var output = new FileStream(temporary, FileMode.CreateNew, FileAccess.ReadWrite))
            {
                // A rootless store's files are owned by the user and its subordinate ids: written as the container's.
                LayerDiff.Write(directory, output, UnpackOptions.Rootless ? IdMapping.ForCurrentUser() : null);
                output.Position = 0;
                return WriteUncompressedLayer(output);
            }
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    /// <summary>Stores a layer as an uncompressed tar blob (whose digest is then its diff id), decompressing gzip
    /// input, and unpacks it (which refuses an unsafe tar before the image exists).</summary>
    internal (OciDescriptor Descriptor, string DiffId) WriteUncompressedLayer(Stream content)
    {
        if (!content.CanSeek)
        {
            // Standard input: spooled to a file so that its first bytes can be looked at (gzip's magic 1f 8b).
            string spool = Path.Combine(Layout.TemporaryDirectory, "spool-" + Guid.NewGuid().ToString("N"));
            try
            {
                using var file = new FileStream(spool, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16, FileOptions.DeleteOnClose);
                content.CopyTo(file);
                file.Position = 0;
                return WriteUncompressedLayer(file);
            }
            finally
            {
                File.Delete(spool);
            }
        }
        long start = content.Position;
        Span<byte> magic = stackalloc byte[2];
        int peeked = content.ReadAtLeast(magic, 2, throwOnEndOfStream: false);
        content.Position = start;
        using Stream input = peeked == 2 && magic[0] == 0x1f && magic[1] == 0x8b
            ? new GZipStream(content, CompressionMode.Decompress, leaveOpen: true)
            : new BufferedStream(content, 1 << 16);
        var descriptor = Layout.WriteBlob(input, OciMediaTypes.LayerTar);
        EnsureLayerUnpacked(descriptor.Digest, descriptor);
        return (descriptor, descriptor.Digest);
    }

    /// <summary>Where <c>nestor build</c> keeps its cache: one file per cache key naming the manifest of the state
    /// after that step (<see cref="Build.BuildCache"/>). Those manifests are roots of <see cref="CollectGarbage"/>.</summary>
    public string BuildCacheDirectory => Path.Combine(Root, "build-cache");

    /// <summary>Writes <paramref name="configuration"/> and a manifest of <paramref name="layers"/> as blobs without
    /// naming them in the index (a build's intermediate state), and returns that image. The layer blobs must be
    /// stored already.</summary>
    internal StoredImage WriteUnindexedImage(OciImageConfiguration configuration, IReadOnlyList<OciDescriptor> layers)
    {
        var configDescriptor = Layout.WriteBlob(JsonSerializer.SerializeToUtf8Bytes(configuration, OciJson.Writer.OciImageConfiguration), OciMediaTypes.Config);
        var manifest = new OciManifest { Config = configDescriptor, Layers = [.. layers] };
        var manifestDescriptor = Layout.WriteBlob(JsonSerializer.SerializeToUtf8Bytes(manifest, OciJson.Writer.OciManifest), OciMediaTypes.Manifest);
        return LoadManifest(manifestDescriptor.Digest);
    }

    /// <summary>The image whose manifest blob is <paramref name="manifestDigest"/>, named in the index or not.</summary>
    internal StoredImage LoadManifest(string manifestDigest) => Load(manifestDigest, Layout.ReadManifests());

    /// <summary>Names the stored manifest <paramref name="manifestDigest"/> <paramref name="reference"/> in the index
    /// (moving the name from any image it named), as a build's last step does.</summary>
    internal StoredImage NameManifest(string manifestDigest, string reference)
    {
        using var _ = Lock();
        var bytes = Layout.ReadBlob(manifestDigest);
        AddToIndex(new OciDescriptor { MediaType = OciMediaTypes.Manifest, Digest = manifestDigest, Size = bytes.LongLength }, reference);
        return Resolve(manifestDigest);
    }

    /// <summary>Adds an image from stored layer blobs: writes its config (from <paramref name="parent"/>
    /// when given, plus the new layers and a history entry), its manifest and then the index. Callers hold
    /// <see cref="Lock"/>.</summary>
    internal StoredImage AddImage(IReadOnlyList<OciDescriptor> newLayers, IReadOnlyList<string> newDiffIds, StoredImage? parent,
        ImageConfig? config, string? reference, string createdBy, string? comment, string? author = null)
    {
        var now = DateTimeOffset.UtcNow;
        now = new DateTimeOffset(now.Ticks - now.Ticks % TimeSpan.TicksPerMillisecond, TimeSpan.Zero);
        OciImageConfiguration configuration;
        List<OciDescriptor> layers;
        if (parent is not null)
        {
            configuration = ReadConfiguration(parent);
            layers = [.. ReadManifest(parent.ManifestDigest).Layers];
        }
        else
        {
            configuration = new OciImageConfiguration();
            layers = [];
        }
        configuration.Created = now;
        configuration.Config = config ?? configuration.Config;
        configuration.Author = author ?? configuration.Author;
        configuration.RootFileSystem.DiffIds.AddRange(newDiffIds);
        (configuration.History ??= []).Add(new OciHistory { Created = now, CreatedBy = createdBy, Author = author, Comment = comment, EmptyLayer = newLayers.Count == 0 ? true : null });
        layers.AddRange(newLayers);
        var configDescriptor = Layout.WriteBlob(JsonSerializer.SerializeToUtf8Bytes(configuration, OciJson.Writer.OciImageConfiguration), OciMediaTypes.Config);
        var manifest = new OciManifest { Config = configDescriptor, Layers = layers };
        var manifestDescriptor = Layout.WriteBlob(JsonSerializer.SerializeToUtf8Bytes(manifest, OciJson.Writer.OciManifest), OciMediaTypes.Manifest);
        AddToIndex(manifestDescriptor, reference);
        return Resolve(manifestDescriptor.Digest);
    }

    /// <summary>Names a stored manifest in the index: under <paramref name="reference"/> (moving the name from any image
    /// it named), or unnamed if null and the manifest is not named yet. Callers hold <see cref="Lock"/>.</summary>
    internal void AddToIndex(OciDescriptor manifest, string? reference)
    {
        var index = Layout.ReadIndex();
        string? refName = reference is null ? null : NormalizeTagReference(reference);
        if (refName is not null)
        {
            // A name moved away from another image that has no other name leaves that image dangling (docker's
            // <none>:<none>), unless it is the same image (same config) under another manifest.
            foreach (var previous in index.Manifests.Where(m => RefNameOf(m) == refName && m.Digest != manifest.Digest).ToList())
            {
                bool otherwiseNamed = index.Manifests.Any(m => m.Digest == previous.Digest && RefNameOf(m) != refName);
                if (!otherwiseNamed && ConfigDigestOf(previous.Digest) != ConfigDigestOf(manifest.Digest))
                {
                    index.Manifests.Add(new OciDescriptor { MediaType = previous.MediaType, Digest = previous.Digest, Size = previous.Size });
                }
            }
            index.Manifests.RemoveAll(m => RefNameOf(m) == refName);
            // the manifest's unnamed entry is replaced by the named one
            index.Manifests.RemoveAll(m => m.Digest == manifest.Digest && RefNameOf(m) is null);
        }
        else if (index.Manifests.Any(m => m.Digest == manifest.Digest))
        {
            return;
        }
        index.Manifests.Add(new OciDescriptor
        {
            MediaType = string.IsNullOrEmpty(manifest.MediaType) ? OciMediaTypes.Manifest : manifest.MediaType,
            Digest = manifest.Digest,
            Size = manifest.Size,
            Annotations = refName is null ? null : new() { [OciLayout.RefNameAnnotation] = refName },
        });
        Layout.WriteIndex(index);
    }

    private static string? RefNameOf(OciDescriptor descriptor) =>
        descriptor.Annotations is { } a && a.TryGetValue(OciLayout.RefNameAnnotation, out var name) ? name : null;

    /// <summary>The ref name a tag is stored under: the full normalized reference; a digest is not a tag.</summary>
    internal static string NormalizeTagReference(string reference)
    {
        var parsed = ImageReference.Parse(reference);
        if (parsed.Digest is not null)
        {
            throw new ImageStoreException($"'{reference}' names a digest; a tag names a repository and a tag (e.g. busybox:latest)");
        }
        return parsed.ToString();
    }

    /// <summary>The unpacked directory of a layer, unpacking it if needed.</summary>
    public string LayerDirectory(string diffId) => Path.Combine(OverlayDirectory, Digest.Hex(diffId), "diff");

    /// <summary>Unpacks the layer whose diff id is <paramref name="diffId"/> from <paramref name="blob"/> (its stored
    /// blob, uncompressed or gzip) unless it is unpacked already, checking that the uncompressed tar hashes to the diff
    /// id. A layer is unpacked into a temporary directory and renamed, so a half-unpacked layer is never used.</summary>
    internal string EnsureLayerUnpacked(string diffId, OciDescriptor blob)
    {
        string final = Path.Combine(OverlayDirectory, Digest.Hex(diffId));
        if (Directory.Exists(final))
        {
            return Path.Combine(final, "diff");
        }
        var compression = OciMediaTypes.LayerCompressionOf(blob.MediaType);
        string temporary = Path.Combine(OverlayDirectory, "tmp-" + Guid.NewGuid().ToString("N"));
        try
        {
            string actual;
            using (var stored = Layout.OpenBlob(blob.Digest))
            using (var blobHash = new HashingStream(stored, leaveOpen: true))
            {
                Stream uncompressed = compression == LayerCompression.Gzip
                    ? new GZipStream(blobHash, CompressionMode.Decompress, leaveOpen: true) : blobHash;
                using (var tarHash = new HashingStream(uncompressed, leaveOpen: true))
                {
                    try
                    {
                        LayerUnpacker.Unpack(tarHash, Path.Combine(temporary, "diff"), UnpackOptions);
                    }
                    catch (Exception e) when (e is InvalidDataException or FormatException or EndOfStreamException)
                    {
                        throw new ImageStoreException($"layer {blob.Digest} is not a valid tar{(compression == LayerCompression.Gzip ? " (gzip)" : "")}: {e.Message}", e);
                    }
                    actual = tarHash.FinishDigest();
                }
                blobHash.CopyTo(Stream.Null);
                string blobDigest = blobHash.FinishDigest();
                if (blobDigest != blob.Digest)
                {
                    throw new BlobException(blob.Digest, $"blob {blob.Digest} in {Root} is corrupt: its content hashes to {blobDigest} (remove the image and load or pull it again)");
                }
            }
            if (actual != diffId)
            {
                throw new BlobException(blob.Digest, $"layer {blob.Digest} unpacks to a tar whose digest is {actual}, but the image config's rootfs.diff_ids says {diffId}: the image is refused (image-spec config.md)");
            }
            Directory.Move(temporary, final);
            return Path.Combine(final, "diff");
        }
        finally
        {
            if (Directory.Exists(temporary))
            {
                Directory.Delete(temporary, recursive: true);
            }
        }
    }

    /// <summary>Checks a stored image whole: its manifest, config and every layer blob against their digests, and
    /// every layer's uncompressed tar against the config's diff ids (unpacking the layers not unpacked yet). For
    /// images whose blobs arrived by another way than <see cref="ImportRootFileSystem(string, string?, ImageConfig?, string?, string?)"/>
    /// or <see cref="ImageArchive.Load"/> (which check as they add), e.g. a registry pull.</summary>
    public void VerifyImage(string manifestDigest)
    {
        var manifest = ReadManifest(manifestDigest);
        var configuration = ParseConfiguration(Layout.ReadBlob(manifest.Config.Digest, manifest.Config.Size), manifest.Config.Digest);
        if (configuration.RootFileSystem.DiffIds.Count != manifest.Layers.Count)
        {
            throw new ImageStoreException($"image config {manifest.Config.Digest} lists {configuration.RootFileSystem.DiffIds.Count} diff ids but manifest {manifestDigest} has {manifest.Layers.Count} layers");
        }
        for (int i = 0; i < manifest.Layers.Count; i++)
        {
            Layout.VerifyBlob(manifest.Layers[i].Digest, manifest.Layers[i].Size);
            EnsureLayerUnpacked(configuration.RootFileSystem.DiffIds[i], manifest.Layers[i]);
        }
    }

    /// <inheritdoc/>
    public ContainerRootFileSystem CreateRootFileSystem(StoredImage image, string containerDirectory)
    {
        var manifest = ReadManifest(image.ManifestDigest);
        if (manifest.Layers.Count != image.LayerDiffIds.Count)
        {
            throw new ImageStoreException($"image {image.Id} has {manifest.Layers.Count} layers in its manifest but {image.LayerDiffIds.Count} diff ids in its config");
        }
        var lowers = new List<string>();
        using (Lock())
        {
            for (int i = 0; i < manifest.Layers.Count; i++)
            {
                lowers.Add(EnsureLayerUnpacked(image.LayerDiffIds[i], manifest.Layers[i]));
            }
        }
        string upper = Path.Combine(containerDirectory, "upper");
        string work = Path.Combine(containerDirectory, "work");
        string merged = Path.Combine(containerDirectory, "merged");
        foreach (var directory in new[] { upper, work, merged })
        {
            Directory.CreateDirectory(directory);
        }
        var root = new ContainerRootFileSystem(lowers, upper, work, merged);
        bool rootless = UnpackOptions.Rootless;
        return root with { Mount = () => OverlayMount.Mount(root, rootless) };
    }

    /// <inheritdoc/>
    public StoredImage Commit(StoredImage parent, string upperDirectory, ImageConfig config, string? reference, string createdBy,
        string? comment = null, string? author = null)
    {
        using var _ = Lock();
        var layer = WriteLayerFromDirectory(upperDirectory);
        return AddImage([layer.Descriptor], [layer.DiffId], parent, config, reference, createdBy, comment, author);
    }

    /// <inheritdoc/>
    public StoredImage CommitLayer(StoredImage parent, Stream layer, ImageConfig config, string? reference, string createdBy,
        string? comment = null, string? author = null)
    {
        using var _ = Lock();
        var written = WriteUncompressedLayer(layer);
        return AddImage([written.Descriptor], [written.DiffId], parent, config, reference, createdBy, comment, author);
    }

    /// <summary>Gives the image <paramref name="source"/> names the name <paramref name="target"/> too (docker tag).</summary>
    public StoredImage Tag(string source, string target)
    {
        using var _ = Lock();
        var image = Resolve(source);
        var manifest = Layout.ReadManifests().First(m => m.Manifest.Digest == image.ManifestDigest).Manifest;
        AddToIndex(manifest, target);
        return Resolve(image.ManifestDigest);
    }

    /// <summary>Removes a name, or an image (docker rmi): a name is untagged, and the image goes when it has no name
    /// left; by id, an image with several names is refused unless <paramref name="force"/>. Blobs and unpacked layers
    /// no other image uses are deleted. Returns what was untagged and deleted, in Docker's words.</summary>
    public IReadOnlyList<string> Remove(string reference, bool force) => Remove(reference, force, imageIdsInUse: null);

    /// <summary>As <see cref="Remove(string, bool)"/>, knowing which images containers use
    /// (<paramref name="imageIdsInUse"/>, image ids): an image in use is never deleted, since its unpacked layers are
    /// a container's lower directories. Without <paramref name="force"/> that is refused, as docker refuses; with it the
    /// names are removed and the image stays, unnamed (docker's &lt;none&gt;).</summary>
    public IReadOnlyList<string> Remove(string reference, bool force, IReadOnlySet<string>? imageIdsInUse)
    {
        using var storeLock = Lock();
        var image = Resolve(reference);
        var index = Layout.ReadIndex();
        var report = new List<string>();
        bool byName = ImageReference.TryParse(reference, out var parsed, out _) && index.Manifests.Any(m => RefNameOf(m) == parsed.ToString());
        if (byName)
        {
            index.Manifests.RemoveAll(m => RefNameOf(m) == parsed.ToString());
            report.Add("Untagged: " + parsed.FamiliarName);
        }
        else
        {
            if (image.References.Count > 1 && !force)
            {
                throw new ImageStoreException($"unable to delete {image.Id[7..19]} (must be forced): the image is named by {image.References.Count} references ({string.Join(", ", image.References)}); remove them by name or use -f");
            }
            foreach (var name in image.References)
            {
                report.Add("Untagged: " + name);
            }
            index.Manifests.RemoveAll(m => m.Digest == image.ManifestDigest);
        }
        if (!index.Manifests.Any(m => m.Digest == image.ManifestDigest) && imageIdsInUse?.Contains(image.Id) == true)
        {
            if (!force)
            {
                throw new ImageStoreException($"unable to delete {image.Id[7..19]}: the image is used by a container (remove the container first, or use -f to remove its names only)");
            }
            index.Manifests.Add(new OciDescriptor { MediaType = OciMediaTypes.Manifest, Digest = image.ManifestDigest, Size = Layout.ReadBlob(image.ManifestDigest).LongLength });
            Layout.WriteIndex(index);
        }
        else if (!index.Manifests.Any(m => m.Digest == image.ManifestDigest))
        {
            Layout.WriteIndex(index);
            report.Add("Deleted: " + image.Id);
            CollectGarbage();
        }
        else
        {
            Layout.WriteIndex(index);
        }
        return report;
    }

    /// <summary>Deletes blobs and unpacked layers that no manifest of the index reaches. Callers hold <see cref="Lock"/>.</summary>
    internal void CollectGarbage()
    {
        var reachable = new HashSet<string>();
        var diffIds = new HashSet<string>();
        // The build cache's states are roots too: a cached step must still find its layers (BuildKit's cache holds
        // its records the same way until pruned).
        var roots = Layout.ReadManifests().Select(m => m.Manifest.Digest).ToList();
        if (Directory.Exists(BuildCacheDirectory))
        {
            foreach (string entry in Directory.EnumerateFiles(BuildCacheDirectory))
            {
                string digest = File.ReadAllText(entry).Trim();
                if (Digest.IsValid(digest) && Layout.HasBlob(digest))
                {
                    roots.Add(digest);
                }
            }
        }
        foreach (string root in roots.Distinct())
        {
            var descriptor = new OciDescriptor { Digest = root };
            reachable.Add(descriptor.Digest);
            var manifest = ReadManifest(descriptor.Digest);
            reachable.Add(manifest.Config.Digest);
            foreach (var layer in manifest.Layers)
            {
                reachable.Add(layer.Digest);
            }
            var configuration = ParseConfiguration(Layout.ReadBlob(manifest.Config.Digest), manifest.Config.Digest);
            diffIds.UnionWith(configuration.RootFileSystem.DiffIds);
        }
        foreach (var digest in Layout.BlobDigests().ToList())
        {
            if (!reachable.Contains(digest))
            {
                Layout.DeleteBlob(digest);
            }
        }
        foreach (var directory in Directory.EnumerateDirectories(OverlayDirectory).ToList())
        {
            string name = Path.GetFileName(directory);
            if (name.Length == 64 && !diffIds.Contains(Digest.Sha256Prefix + name))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
    }
}
