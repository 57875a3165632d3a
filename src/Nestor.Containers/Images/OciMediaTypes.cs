namespace Nestor.Containers.Images;

/// <summary>The media types of the OCI image specification (image-spec media-types.md) and the Docker v2 schema 2
/// types that docker-archive tarballs and registries still carry.</summary>
public static class OciMediaTypes
{
    /// <summary>An image manifest (image-spec manifest.md).</summary>
    public const string Manifest = "application/vnd.oci.image.manifest.v1+json";

    /// <summary>An image index (image-spec image-index.md); also the type of <c>index.json</c>.</summary>
    public const string Index = "application/vnd.oci.image.index.v1+json";

    /// <summary>An image configuration (image-spec config.md).</summary>
    public const string Config = "application/vnd.oci.image.config.v1+json";

    /// <summary>An uncompressed layer tar: its digest is its diff id.</summary>
    public const string LayerTar = "application/vnd.oci.image.layer.v1.tar";

    /// <summary>A gzip-compressed layer tar.</summary>
    public const string LayerTarGzip = "application/vnd.oci.image.layer.v1.tar+gzip";

    /// <summary>A zstd-compressed layer tar; Nestor refuses it (.NET has no zstd decoder).</summary>
    public const string LayerTarZstd = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// <summary>Docker's manifest (schema 2).</summary>
    public const string DockerManifest = "application/vnd.docker.distribution.manifest.v2+json";

    /// <summary>Docker's manifest list.</summary>
    public const string DockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json";

    /// <summary>Docker's image configuration.</summary>
    public const string DockerConfig = "application/vnd.docker.container.image.v1+json";

    /// <summary>Docker's gzip-compressed layer.</summary>
    public const string DockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// <summary>The compression a layer media type names; <see cref="UnsupportedMediaTypeException"/> for zstd and
    /// for a type that is not a layer.</summary>
    public static LayerCompression LayerCompressionOf(string mediaType) => mediaType switch
    {
        LayerTar or "application/vnd.docker.image.rootfs.diff.tar" => LayerCompression.None,
        LayerTarGzip or DockerLayerGzip => LayerCompression.Gzip,
        LayerTarZstd or "application/vnd.docker.image.rootfs.diff.tar.zstd" => throw new UnsupportedMediaTypeException(
            $"the layer media type '{mediaType}' (zstd compression) is not supported: Nestor reads uncompressed and gzip layers; recompress the image with gzip (e.g. 'skopeo copy --dest-compress-format gzip …')"),
        _ => throw new UnsupportedMediaTypeException($"'{mediaType}' is not a layer media type Nestor knows (image-spec media-types.md)"),
    };

    /// <summary>Whether <paramref name="mediaType"/> is an image manifest (OCI or Docker schema 2).</summary>
    public static bool IsManifest(string? mediaType) => mediaType is Manifest or DockerManifest;

    /// <summary>Whether <paramref name="mediaType"/> is an index (OCI or Docker manifest list).</summary>
    public static bool IsIndex(string? mediaType) => mediaType is Index or DockerManifestList;
}

/// <summary>How a layer blob is compressed.</summary>
public enum LayerCompression
{
    None,
    Gzip,
}

/// <summary>A blob's media type is one Nestor cannot use.</summary>
public sealed class UnsupportedMediaTypeException(string message) : ImageStoreException(message);

/// <summary>The image store or a layout failed; the message says what and what to do.</summary>
public class ImageStoreException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A blob is absent from a layout, or its content does not match its digest.</summary>
public sealed class BlobException(string digest, string message) : ImageStoreException(message)
{
    /// <summary>The digest of the blob at fault.</summary>
    public string Digest { get; } = digest;
}
