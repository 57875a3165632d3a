using System.Runtime.InteropServices;
using Nestor.Containers.Images;

namespace Nestor.Containers.Registry;

/// <summary>What a pull brought in or a push sent.</summary>
/// <param name="Reference">The registry reference.</param>
/// <param name="ManifestDigest">The digest of the image manifest (not of an index it was chosen from).</param>
/// <param name="BlobsTransferred">Blobs whose bytes crossed the network.</param>
/// <param name="BlobsSkipped">Blobs already at the destination (or mounted there from another repository).</param>
/// <param name="BytesTransferred">Bytes of the blobs transferred.</param>
public sealed record TransferResult(ImageReference Reference, string ManifestDigest, int BlobsTransferred, int BlobsSkipped, long BytesTransferred);

/// <summary>Pulls images from registries into an <see cref="IImageContentStore"/> and pushes them back, writing one
/// plain progress line per blob (as <c>skopeo copy</c> does: "Copying blob …").</summary>
public sealed class ImageTransfer(RegistryClientOptions options, Action<string>? progress = null)
{
    /// <summary>The platform chosen from an index: this process's architecture, as image-spec names it (linux/amd64
    /// on x86-64).</summary>
    public static string HostArchitecture => RuntimeInformation.OSArchitecture switch
    {
        Architecture.Arm64 => "arm64",
        Architecture.Arm => "arm",
        Architecture.X86 => "386",
        Architecture.S390x => "s390x",
        Architecture.Ppc64le => "ppc64le",
        _ => "amd64",
    };

    /// <summary>Fetches <paramref name="reference"/>'s manifest (the linux/<see cref="HostArchitecture"/> one if it
    /// is an index), its config and layers, each verified while it streams, into <paramref name="store"/>, and names
    /// it <paramref name="reference"/>.</summary>
    public async Task<TransferResult> PullAsync(ImageReference reference, IImageContentStore store, CancellationToken cancellation = default)
    {
        using var client = new RegistryClient(reference.Registry, options);
        var manifest = await client.GetManifestAsync(reference.Repository, reference.ManifestReference, cancellation);
        if (OciMediaTypes.IsIndex(manifest.MediaType))
        {
            var index = manifest.ReadIndex();
            var chosen = index.Manifests.FirstOrDefault(m =>
                m.Platform is { Os: "linux" } p && p.Architecture == HostArchitecture)
                ?? throw new RegistryException(RegistryFailure.UnsupportedMediaType,
                    $"{reference} is a multi-platform index without a linux/{HostArchitecture} image (it has: {string.Join(", ", index.Manifests.Select(m => $"{m.Platform?.Os}/{m.Platform?.Architecture}"))})");
            progress?.Invoke($"Index {Short(manifest.Digest)}: using the linux/{HostArchitecture} manifest {Short(chosen.Digest)}");
            manifest = await client.GetManifestAsync(reference.Repository, chosen.Digest, cancellation);
        }
        CheckImageManifest(manifest.MediaType, reference.ToString());
        var document = manifest.ReadManifest();
        if (string.IsNullOrEmpty(document.Config.Digest))
        {
            throw new RegistryException(RegistryFailure.Protocol, $"the manifest of {reference} has no config descriptor");
        }
        int transferred = 0, skipped = 0;
        long bytes = 0;
        foreach (var blob in document.Layers.Prepend(document.Config))
        {
            string kind = blob == document.Config ? "config" : "blob";
            if (store.HasBlob(blob.Digest))
            {
                progress?.Invoke($"Copying {kind} {Short(blob.Digest)} skipped: already exists");
                skipped++;
                continue;
            }
            string incoming = store.CreateIncomingBlobFile();
            try
            {
                await using (var file = new FileStream(incoming, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true))
                {
                    await client.DownloadBlobAsync(reference.Repository, blob, file, null, cancellation);
                }
                store.CommitBlob(incoming, blob.Digest);
            }
            finally
            {
                // Only a verified blob is moved in; whatever is left here is half or wrong.
                File.Delete(incoming);
            }
            progress?.Invoke($"Copying {kind} {Short(blob.Digest)} done ({FormatSize(blob.Size)})");
            transferred++;
            bytes += blob.Size;
        }
        store.AddManifest(new LocalManifest(manifest.Bytes, manifest.MediaType, manifest.Digest), reference.ToString());
        progress?.Invoke($"Writing manifest {manifest.Digest} as {reference}");
        return new TransferResult(reference, manifest.Digest, transferred, skipped, bytes);
    }

    /// <summary>Sends the image <paramref name="localReference"/> of <paramref name="store"/> to
    /// <paramref name="destination"/>: each blob the repository lacks is mounted from another repository of the same
    /// registry that the store knows holds it, or uploaded; then the manifest is put under the destination's tag.</summary>
    public async Task<TransferResult> PushAsync(IImageContentStore store, string localReference, ImageReference destination,
        CancellationToken cancellation = default)
    {
        var manifest = store.FindManifest(localReference)
            ?? throw new RegistryException(RegistryFailure.ManifestUnknown,
                $"no image named '{localReference}' in the local store (see 'nestor image ls')");
        CheckImageManifest(manifest.MediaType, localReference);
        var document = RegistryManifest.Read(manifest.Bytes, OciJson.Default.OciManifest);
        // Repositories of the same registry this image came from or went to: candidates for a cross-repository mount.
        string[] mountSources = [.. store.ReferencesOf(manifest.Digest)
            .Select(r => ImageReference.TryParse(r, out var parsed, out _) ? parsed : null)
            .OfType<ImageReference>()
            .Where(r => r.Registry == destination.Registry && r.Repository != destination.Repository)
            .Select(r => r.Repository)
            .Distinct()];
        using var client = new RegistryClient(destination.Registry, options);
        int transferred = 0, skipped = 0;
        long bytes = 0;
        foreach (var blob in document.Layers.Prepend(document.Config))
        {
            string kind = blob == document.Config ? "config" : "blob";
            if (!store.HasBlob(blob.Digest))
            {
                throw new RegistryException(RegistryFailure.Protocol,
                    $"the local image {localReference} lacks its blob {blob.Digest} (the store is damaged: pull or load the image again)");
            }
            if (await client.BlobExistsAsync(destination.Repository, blob.Digest, cancellation))
            {
                progress?.Invoke($"Copying {kind} {Short(blob.Digest)} skipped: already exists");
                skipped++;
                continue;
            }
            string? mountedFrom = null;
            foreach (string source in mountSources)
            {
                if (await client.TryMountBlobAsync(destination.Repository, blob.Digest, source, cancellation))
                {
                    mountedFrom = source;
                    break;
                }
            }
            if (mountedFrom is not null)
            {
                progress?.Invoke($"Copying {kind} {Short(blob.Digest)} skipped: mounted from {mountedFrom}");
                skipped++;
                continue;
            }
            string digest = blob.Digest;
            await client.UploadBlobAsync(destination.Repository, blob, () => store.OpenBlob(digest), null, cancellation);
            progress?.Invoke($"Copying {kind} {Short(blob.Digest)} done ({FormatSize(blob.Size)})");
            transferred++;
            bytes += blob.Size;
        }
        string tag = destination.Tag ?? manifest.Digest;
        string stored = await client.PutManifestAsync(destination.Repository, tag, manifest.Bytes, manifest.MediaType, cancellation);
        if (destination.Digest is not null && destination.Digest != stored)
        {
            throw new RegistryException(RegistryFailure.DigestMismatch,
                $"{destination} names digest {destination.Digest} but the image's manifest is {stored}");
        }
        progress?.Invoke($"Writing manifest {stored} to {destination}");
        // The store remembers where the image now also lives, so a later push to a sibling repository can mount.
        if (destination.Tag is not null)
        {
            store.AddManifest(manifest, destination.WithTag(destination.Tag).ToString());
        }
        return new TransferResult(destination, stored, transferred, skipped, bytes);
    }

    private static void CheckImageManifest(string mediaType, string what)
    {
        if (mediaType is RegistryMediaTypes.DockerSchema1 or RegistryMediaTypes.DockerSchema1Signed)
        {
            throw new RegistryException(RegistryFailure.UnsupportedMediaType,
                $"{what} is a Docker schema 1 manifest ({mediaType}), deprecated and without a config: Nestor reads OCI and Docker schema 2 images only (push it again with a current tool)");
        }
        if (!OciMediaTypes.IsManifest(mediaType))
        {
            throw new RegistryException(RegistryFailure.UnsupportedMediaType,
                $"{what} has a manifest of unsupported media type '{mediaType}' (Nestor reads {string.Join(", ", RegistryMediaTypes.Accepted)})");
        }
    }

    private static string Short(string digest) => digest.Length > 19 ? digest[..19] : digest;

    private static string FormatSize(long size) => size switch
    {
        >= 1 << 20 => $"{size / (double)(1 << 20):0.0} MiB",
        >= 1 << 10 => $"{size / 1024.0:0.0} KiB",
        _ => $"{size} B",
    };
}
