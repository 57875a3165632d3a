using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary>Images made for the tests from Debian's static busybox: one gzip layer (bin/busybox, bin/sh → busybox,
/// etc/nestor-test holding <c>marker</c>), an OCI config whose diff_id is the uncompressed layer's digest, and an
/// OCI manifest, stored in an <see cref="OciLayoutContentStore"/> under a reference.</summary>
public static class TestImages
{
    public const string Busybox = "/bin/busybox";

    public sealed record Made(string ManifestDigest, string ConfigDigest, string LayerDigest, string DiffId, byte[] Manifest);

    /// <summary>Temporary directory removed on Dispose.</summary>
    public sealed class TemporaryDirectory : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("nestor-registry-test-").FullName;

        public void Dispose()
        {
            if (Directory.Exists(Path))
            {
                Directory.Delete(Path, recursive: true);
            }
        }
    }

    public static Made AddBusybox(OciLayoutContentStore store, string reference, string marker)
    {
        byte[] layerTar = LayerTar(marker);
        string diffId = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(layerTar));
        var gzipped = new MemoryStream();
        using (var gzip = new GZipStream(gzipped, CompressionLevel.Optimal, leaveOpen: true))
        {
            gzip.Write(layerTar);
        }
        byte[] layer = gzipped.ToArray();
        string layerDigest = store.Layout.WriteBlob(layer, OciMediaTypes.LayerTarGzip).Digest;
        byte[] config = Encoding.UTF8.GetBytes($$"""
            {"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["{{diffId}}"]},"history":[{"created_by":"nestor registry test {{marker}}"}]}
            """.Trim());
        string configDigest = store.Layout.WriteBlob(config, OciMediaTypes.Config).Digest;
        byte[] manifest = Encoding.UTF8.GetBytes($$"""
            {"schemaVersion":2,"mediaType":"{{OciMediaTypes.Manifest}}","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{{configDigest}}","size":{{config.Length}}},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{{layerDigest}}","size":{{layer.Length}}}]}
            """.Trim());
        string manifestDigest = Digest.Of(manifest);
        store.AddManifest(new LocalManifest(manifest, OciMediaTypes.Manifest, manifestDigest), reference);
        return new Made(manifestDigest, configDigest, layerDigest, diffId, manifest);
    }

    /// <summary>The files of a gzip layer blob: path → content (symlinks as "→target").</summary>
    public static Dictionary<string, byte[]> LayerFiles(Stream gzipLayer)
    {
        var files = new Dictionary<string, byte[]>();
        using var gzip = new GZipStream(gzipLayer, CompressionMode.Decompress);
        using var reader = new TarReader(gzip);
        while (reader.GetNextEntry() is { } entry)
        {
            if (entry.EntryType == TarEntryType.SymbolicLink)
            {
                files[entry.Name] = Encoding.UTF8.GetBytes("→" + entry.LinkName);
            }
            else if (entry.DataStream is { } data)
            {
                var copy = new MemoryStream();
                data.CopyTo(copy);
                files[entry.Name] = copy.ToArray();
            }
        }
        return files;
    }

    private static byte[] LayerTar(string marker)
    {
        var tar = new MemoryStream();
        var when = new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero);
        using (var writer = new TarWriter(tar, TarEntryFormat.Pax, leaveOpen: true))
        {
            writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "bin/") { ModificationTime = when, Mode = (UnixFileMode)0b111_101_101 });
            writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "bin/busybox")
            {
                ModificationTime = when,
                Mode = (UnixFileMode)0b111_101_101,
                DataStream = new MemoryStream(File.ReadAllBytes(Busybox)),
            });
            writer.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, "bin/sh") { ModificationTime = when, LinkName = "busybox" });
            writer.WriteEntry(new PaxTarEntry(TarEntryType.Directory, "etc/") { ModificationTime = when, Mode = (UnixFileMode)0b111_101_101 });
            writer.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, "etc/nestor-test")
            {
                ModificationTime = when,
                Mode = (UnixFileMode)0b110_100_100,
                DataStream = new MemoryStream(Encoding.UTF8.GetBytes(marker + "\n")),
            });
        }
        return tar.ToArray();
    }
}
