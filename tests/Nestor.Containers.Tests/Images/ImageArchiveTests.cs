using System.Formats.Tar;
using System.Text;
using System.Text.Json;
using Nestor.Containers.Images;
using Nestor.Containers.Storage;

namespace Nestor.Containers.Tests.Images;

public class ImageArchiveTests
{
    private static (TemporaryDirectory Directory, ImageStore Store, StoredImage Image) StoreWithBusybox(string purpose, string reference = "busybox:archive")
    {
        var directory = new TemporaryDirectory(purpose);
        var store = ImageStore.Open(directory.Combine("store"));
        var image = ImageBootstrap.Busybox(store, reference);
        return (directory, store, image);
    }

    /// <summary>docker-archive and oci-archive save then load into another store keep the image id, the layers' diff
    /// ids, the manifest digest and the name.</summary>
    [Theory]
    [InlineData(ImageArchiveFormat.DockerArchive)]
    [InlineData(ImageArchiveFormat.OciArchive)]
    public void SaveAndLoadRoundTripDigests(ImageArchiveFormat format)
    {
        var (directory, store, image) = StoreWithBusybox("roundtrip-" + format);
        using var _ = directory;
        string archive = directory.Combine("image.tar");
        using (var file = File.Create(archive))
        {
            ImageArchive.Save(store, ["busybox:archive"], file, format);
        }
        var other = ImageStore.Open(directory.Combine("other"));
        using (var file = File.OpenRead(archive))
        {
            var (loaded, name) = Assert.Single(ImageArchive.Load(other, file));
            Assert.Equal("busybox:archive", name);
            Assert.Equal(image.Id, loaded.Id);
            Assert.Equal(image.ManifestDigest, loaded.ManifestDigest);
            Assert.Equal(image.LayerDiffIds, loaded.LayerDiffIds);
        }
        Assert.Equal(image.Id, other.Resolve("busybox:archive").Id);
        Assert.True(File.Exists(Path.Combine(other.LayerDirectory(image.LayerDiffIds[0]), "bin", "busybox")));
    }

    /// <summary>A blob whose content no longer matches its digest is reported by digest, on save and in a loaded
    /// archive, and the archive's image is not added.</summary>
    [Fact]
    public void CorruptBlobIsRefusedByName()
    {
        var (directory, store, image) = StoreWithBusybox("corrupt");
        using var _ = directory;
        string layerBlob = store.ReadManifest(image.ManifestDigest).Layers[0].Digest;
        string oci = directory.Combine("oci");
        using (var file = File.Create(directory.Combine("image.tar")))
        {
            ImageArchive.Save(store, ["busybox:archive"], file, ImageArchiveFormat.OciArchive);
        }
        // corrupt the stored layer: one byte changed in the middle
        using (var blob = new FileStream(store.Layout.BlobPath(layerBlob), FileMode.Open, FileAccess.ReadWrite))
        {
            blob.Position = blob.Length / 2;
            int b = blob.ReadByte();
            blob.Position--;
            blob.WriteByte((byte)(b ^ 0xff));
        }
        var onSave = Assert.Throws<BlobException>(() => ImageArchive.Save(store, ["busybox:archive"], Stream.Null, ImageArchiveFormat.OciArchive));
        Assert.Equal(layerBlob, onSave.Digest);
        Assert.Contains(layerBlob + " in " + store.Root + " is corrupt", onSave.Message);
        // an archive made from the corrupted store (files copied as they are) is refused on load
        string corruptArchive = directory.Combine("corrupt.tar");
        Directory.CreateDirectory(oci);
        TarFile.ExtractToDirectory(directory.Combine("image.tar"), oci, overwriteFiles: false);
        File.Copy(store.Layout.BlobPath(layerBlob), Path.Combine(oci, "blobs", "sha256", layerBlob[7..]), overwrite: true);
        TarFile.CreateFromDirectory(oci, corruptArchive, includeBaseDirectory: false);
        var other = ImageStore.Open(directory.Combine("other"));
        using (var file = File.OpenRead(corruptArchive))
        {
            var onLoad = Assert.Throws<BlobException>(() => ImageArchive.Load(other, file));
            Assert.Equal(layerBlob, onLoad.Digest);
            Assert.Contains("corrupt", onLoad.Message);
        }
        Assert.Empty(other.List());
        Assert.False(other.Layout.HasBlob(layerBlob));
    }

    /// <summary>A docker-archive whose config's diff id does not match its layer is refused with the diff ids named.</summary>
    [Fact]
    public void WrongDiffIdIsRefused()
    {
        var (directory, store, image) = StoreWithBusybox("diffid");
        using var _ = directory;
        string extracted = directory.Combine("docker");
        Directory.CreateDirectory(extracted);
        using (var archive = new MemoryStream())
        {
            ImageArchive.Save(store, ["busybox:archive"], archive, ImageArchiveFormat.DockerArchive);
            archive.Position = 0;
            TarFile.ExtractToDirectory(archive, extracted, overwriteFiles: false);
        }
        string wrong = "sha256:" + new string('0', 64);
        string configFile = Path.Combine(extracted, image.Id[7..] + ".json");
        File.WriteAllText(configFile, File.ReadAllText(configFile).Replace(image.LayerDiffIds[0], wrong));
        var other = ImageStore.Open(directory.Combine("other"));
        using var tampered = new MemoryStream();
        TarFile.CreateFromDirectory(extracted, tampered, includeBaseDirectory: false);
        tampered.Position = 0;
        var error = Assert.Throws<BlobException>(() => ImageArchive.Load(other, tampered));
        Assert.Contains("rootfs.diff_ids says " + wrong, error.Message);
        Assert.Contains(image.LayerDiffIds[0], error.Message);
        Assert.Empty(other.List());
    }

    /// <summary>A root file-system tar with a ../ entry is refused on import and leaves no image behind.</summary>
    [Fact]
    public void TraversalTarIsRefusedOnImport()
    {
        using var directory = new TemporaryDirectory("import-traversal");
        var store = ImageStore.Open(directory.Combine("store"));
        using var tar = new MemoryStream();
        using (var writer = new TarWriter(tar, leaveOpen: true))
        {
            writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "../../outside") { DataStream = new MemoryStream([1]) });
        }
        tar.Position = 0;
        var error = Assert.Throws<LayerException>(() => store.ImportRootFileSystem(tar, "evil:latest"));
        Assert.Contains("'../../outside'", error.Message);
        Assert.Empty(store.List());
        Assert.Empty(Directory.EnumerateDirectories(store.OverlayDirectory));
    }

    /// <summary>zstd layers are refused with what to do; unknown media types are named.</summary>
    [Fact]
    public void ZstdLayersAreRefusedClearly()
    {
        var zstd = Assert.Throws<UnsupportedMediaTypeException>(() => OciMediaTypes.LayerCompressionOf(OciMediaTypes.LayerTarZstd));
        Assert.Contains("zstd", zstd.Message);
        Assert.Contains("gzip", zstd.Message);
        Assert.Equal(LayerCompression.Gzip, OciMediaTypes.LayerCompressionOf(OciMediaTypes.LayerTarGzip));
        Assert.Equal(LayerCompression.None, OciMediaTypes.LayerCompressionOf(OciMediaTypes.LayerTar));
    }

    /// <summary>A blob written with an announced digest that its content does not match is not stored.</summary>
    [Fact]
    public void WriteBlobChecksTheAnnouncedDigest()
    {
        using var directory = new TemporaryDirectory("blob");
        var layout = OciLayout.OpenOrCreate(directory.Combine("layout"));
        string announced = Digest.Of("something else"u8);
        var error = Assert.Throws<BlobException>(() => layout.WriteBlob(new MemoryStream("content"u8.ToArray()), OciMediaTypes.Config, announced));
        Assert.Equal(announced, error.Digest);
        Assert.False(layout.HasBlob(announced));
        Assert.False(layout.HasBlob(Digest.Of("content"u8)));
        var descriptor = layout.WriteBlob("content"u8, OciMediaTypes.Config);
        Assert.Equal(Digest.Of("content"u8), descriptor.Digest);
        Assert.Equal("content", Encoding.UTF8.GetString(layout.ReadBlob(descriptor.Digest, 7)));
        var missing = Assert.Throws<BlobException>(() => layout.OpenBlob(announced));
        Assert.Contains(announced + " is missing", missing.Message);
        Assert.Equal("1.0.0", JsonDocument.Parse(File.ReadAllText(Path.Combine(layout.Root, "oci-layout"))).RootElement.GetProperty("imageLayoutVersion").GetString());
    }
}
