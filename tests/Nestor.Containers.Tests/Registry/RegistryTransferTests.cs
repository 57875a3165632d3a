using System.Text;
using System.Text.Json;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Containers.Tests.Registry;

/// <summary>Pull and push against Debian's docker-registry on loopback.</summary>
public class RegistryTransferTests(OpenRegistryFixture fixture) : IClassFixture<OpenRegistryFixture>
{
    private readonly RegistryServer server = fixture.Server;

    private static string Unique(string name) => $"{name}-{Guid.NewGuid():N}"[..(name.Length + 13)];

    /// <summary>An image made in one store, pushed and pulled into a fresh store, arrives with the same manifest
    /// digest and the same files (busybox's bytes, the symlink, the marker).</summary>
    [Fact]
    public async Task PushedImagePullsBackIdentical()
    {
        using var source = new TestImages.TemporaryDirectory();
        using var target = new TestImages.TemporaryDirectory();
        var sourceStore = new OciLayoutContentStore(source.Path);
        string marker = Unique("roundtrip");
        var made = TestImages.AddBusybox(sourceStore, "local/busybox:latest", marker);
        var destination = ImageReference.Parse($"{server.Address}/{marker}/busybox:v1");
        var lines = new List<string>();
        var transfer = new ImageTransfer(new RegistryClientOptions(), lines.Add);

        var pushed = await transfer.PushAsync(sourceStore, "local/busybox:latest", destination);
        Assert.Equal(made.ManifestDigest, pushed.ManifestDigest);
        Assert.Equal(2, pushed.BlobsTransferred);
        Assert.Contains(lines, l => l.StartsWith("Copying blob " + made.LayerDigest[..19], StringComparison.Ordinal) && l.Contains("done"));

        var targetStore = new OciLayoutContentStore(target.Path);
        var pulled = await transfer.PullAsync(destination, targetStore);
        Assert.Equal(made.ManifestDigest, pulled.ManifestDigest);
        var local = targetStore.FindManifest(destination.ToString());
        Assert.NotNull(local);
        Assert.Equal(made.Manifest, local.Bytes);
        Assert.Equal(OciMediaTypes.Manifest, local.MediaType);
        Assert.True(targetStore.HasBlob(made.ConfigDigest));
        using var layer = targetStore.OpenBlob(made.LayerDigest);
        var files = TestImages.LayerFiles(layer);
        Assert.Equal(File.ReadAllBytes(TestImages.Busybox), files["bin/busybox"]);
        Assert.Equal("→busybox", Encoding.UTF8.GetString(files["bin/sh"]));
        Assert.Equal(marker + "\n", Encoding.UTF8.GetString(files["etc/nestor-test"]));
        Assert.Empty(Directory.EnumerateFiles(targetStore.Layout.TemporaryDirectory, "incoming-*"));

        // Pulling again transfers nothing: every blob is already in the store.
        var again = await transfer.PullAsync(destination, targetStore);
        Assert.Equal((0, 2), (again.BlobsTransferred, again.BlobsSkipped));
    }

    /// <summary>Blobs larger than the chunk size go up as POST, several PATCHes and PUT ?digest=; the registry
    /// checks the digest of what it assembled, so a wrong range or order fails the push.</summary>
    [Fact]
    public async Task ChunkedUploadAssemblesTheBlob()
    {
        using var source = new TestImages.TemporaryDirectory();
        using var target = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        string marker = Unique("chunked");
        var made = TestImages.AddBusybox(store, "local/chunked", marker);
        long layerSize = new FileInfo(store.Layout.BlobPath(made.LayerDigest)).Length;
        long chunk = layerSize / 5 + 1;
        var destination = ImageReference.Parse($"{server.Address}/{marker}/busybox:chunked");

        var ranges = new List<string>();
        var options = new RegistryClientOptions
        {
            ChunkSize = chunk,
            RequestObserver = request =>
            {
                if (request.Method == HttpMethod.Patch && request.Content!.Headers.TryGetValues("Content-Range", out var range))
                {
                    ranges.Add(range.Single());
                }
            },
        };
        await new ImageTransfer(options).PushAsync(store, "local/chunked", destination);
        Assert.Equal(5, ranges.Count);
        Assert.Equal($"0-{chunk - 1}", ranges[0]);
        Assert.Equal($"{4 * chunk}-{layerSize - 1}", ranges[^1]);

        var pulled = await new ImageTransfer(new RegistryClientOptions()).PullAsync(destination, new OciLayoutContentStore(target.Path));
        Assert.Equal(made.ManifestDigest, pulled.ManifestDigest);
        Assert.Equal(File.ReadAllBytes(store.Layout.BlobPath(made.LayerDigest)),
            File.ReadAllBytes(new OciLayoutContentStore(target.Path).Layout.BlobPath(made.LayerDigest)));
    }

    /// <summary>A second push finds every blob by HEAD; a push to a sibling repository of an image the store knows
    /// is in the first mounts the blobs instead of sending them.</summary>
    [Fact]
    public async Task SecondPushSkipsAndSiblingRepositoryMounts()
    {
        using var source = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        string marker = Unique("mount");
        var made = TestImages.AddBusybox(store, "local/mount", marker);
        var first = ImageReference.Parse($"{server.Address}/{marker}/first:latest");
        var second = ImageReference.Parse($"{server.Address}/{marker}/second:latest");
        var lines = new List<string>();
        var transfer = new ImageTransfer(new RegistryClientOptions(), lines.Add);

        await transfer.PushAsync(store, "local/mount", first);
        var again = await transfer.PushAsync(store, "local/mount", first);
        Assert.Equal((0, 2), (again.BlobsTransferred, again.BlobsSkipped));

        lines.Clear();
        var mounted = await transfer.PushAsync(store, "local/mount", second);
        Assert.Equal((0, 2), (mounted.BlobsTransferred, mounted.BlobsSkipped));
        Assert.Equal(2, lines.Count(l => l.EndsWith($"mounted from {first.Repository}", StringComparison.Ordinal)));
        using var client = new RegistryClient(server.Address);
        Assert.True(await client.BlobExistsAsync(second.Repository, made.LayerDigest));
        Assert.Equal(made.ManifestDigest, (await client.GetManifestAsync(second.Repository, "latest")).Digest);
    }

    /// <summary>From an index (OCI index here, as a registry serves multi-platform images), the linux/amd64 image is
    /// the one pulled and named.</summary>
    [Fact]
    public async Task PullChoosesLinuxAmd64FromAnIndex()
    {
        using var source = new TestImages.TemporaryDirectory();
        using var target = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        string marker = Unique("index");
        var amd64 = TestImages.AddBusybox(store, "local/amd64", marker + "-amd64");
        var other = TestImages.AddBusybox(store, "local/arm64", marker + "-arm64");
        var transfer = new ImageTransfer(new RegistryClientOptions());
        var amd64Reference = ImageReference.Parse($"{server.Address}/{marker}/multi:amd64");
        var otherReference = ImageReference.Parse($"{server.Address}/{marker}/multi:arm64");
        await transfer.PushAsync(store, "local/amd64", amd64Reference);
        await transfer.PushAsync(store, "local/arm64", otherReference);
        string Entry(TestImages.Made made, string architecture) =>
            $$"""{"mediaType":"{{OciMediaTypes.Manifest}}","digest":"{{made.ManifestDigest}}","size":{{made.Manifest.Length}},"platform":{"architecture":"{{architecture}}","os":"linux"} }""";
        byte[] index = Encoding.UTF8.GetBytes($$"""{"schemaVersion":2,"mediaType":"{{OciMediaTypes.Index}}","manifests":[{{Entry(other, "arm64")}},{{Entry(amd64, ImageTransfer.HostArchitecture)}}]}""");
        using (var client = new RegistryClient(server.Address))
        {
            await client.PutManifestAsync(amd64Reference.Repository, "multi", index, OciMediaTypes.Index);
        }

        var pulled = await transfer.PullAsync(amd64Reference.WithTag("multi"), new OciLayoutContentStore(target.Path));
        Assert.Equal(amd64.ManifestDigest, pulled.ManifestDigest);
        Assert.Equal(amd64.ManifestDigest, new OciLayoutContentStore(target.Path).FindManifest(amd64Reference.WithTag("multi").ToString())!.Digest);
    }

    /// <summary>A tag the registry does not have: ManifestUnknown, saying so of this registry.</summary>
    [Fact]
    public async Task MissingTagIsManifestUnknown()
    {
        using var target = new TestImages.TemporaryDirectory();
        var reference = ImageReference.Parse($"{server.Address}/{Unique("missing")}/none:nope");
        var e = await Assert.ThrowsAsync<RegistryException>(() =>
            new ImageTransfer(new RegistryClientOptions()).PullAsync(reference, new OciLayoutContentStore(target.Path)));
        Assert.Equal(RegistryFailure.ManifestUnknown, e.Failure);
        Assert.Contains($"no such image or tag in {server.Address}", e.Message);
    }

    /// <summary>A blob the registry serves with other bytes than its digest (its stored file altered here) is
    /// refused as a digest mismatch, and no part of it stays in the store.</summary>
    [Fact]
    public async Task CorruptBlobIsRefusedAndNotKept()
    {
        using var source = new TestImages.TemporaryDirectory();
        using var target = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        string marker = Unique("corrupt");
        var made = TestImages.AddBusybox(store, "local/corrupt", marker);
        var reference = ImageReference.Parse($"{server.Address}/{marker}/busybox:latest");
        await new ImageTransfer(new RegistryClientOptions()).PushAsync(store, "local/corrupt", reference);
        string hex = made.LayerDigest["sha256:".Length..];
        string stored = Path.Combine(server.StorageRoot, "docker", "registry", "v2", "blobs", "sha256", hex[..2], hex, "data");
        byte[] bytes = File.ReadAllBytes(stored);
        bytes[bytes.Length / 2] ^= 0xFF;
        File.WriteAllBytes(stored, bytes);

        var targetStore = new OciLayoutContentStore(target.Path);
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(new RegistryClientOptions()).PullAsync(reference, targetStore));
        Assert.Equal(RegistryFailure.DigestMismatch, e.Failure);
        Assert.Contains(made.LayerDigest, e.Message);
        Assert.False(targetStore.HasBlob(made.LayerDigest));
        Assert.Null(targetStore.FindManifest(reference.ToString()));
        Assert.Empty(Directory.EnumerateFiles(targetStore.Layout.TemporaryDirectory, "incoming-*"));
    }

    /// <summary>A manifest fetched by digest is checked against that digest.</summary>
    [Fact]
    public async Task ManifestByDigestIsVerified()
    {
        using var source = new TestImages.TemporaryDirectory();
        var store = new OciLayoutContentStore(source.Path);
        string marker = Unique("bydigest");
        var made = TestImages.AddBusybox(store, "local/bydigest", marker);
        var reference = ImageReference.Parse($"{server.Address}/{marker}/busybox:latest");
        await new ImageTransfer(new RegistryClientOptions()).PushAsync(store, "local/bydigest", reference);
        using var client = new RegistryClient(server.Address);
        var manifest = await client.GetManifestAsync(reference.Repository, made.ManifestDigest);
        Assert.Equal(made.Manifest, manifest.Bytes);
        Assert.Equal(OciMediaTypes.Manifest, manifest.MediaType);
        Assert.Equal(made.LayerDigest, manifest.ReadManifest().Layers[0].Digest);
        Assert.Equal("http", client.BaseUri!.Scheme);
        Assert.Null(client.ChallengeScheme);
    }
}

/// <summary>Failures before any registry answers.</summary>
public class RegistryConnectionTests
{
    /// <summary>A loopback port nothing listens on: ConnectionRefused, naming the address.</summary>
    [Fact]
    public async Task NothingListeningIsConnectionRefused()
    {
        int port = RegistryServer.FreePort();
        using var target = new TestImages.TemporaryDirectory();
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(new RegistryClientOptions())
            .PullAsync(ImageReference.Parse($"127.0.0.1:{port}/a/b"), new OciLayoutContentStore(target.Path)));
        Assert.Equal(RegistryFailure.ConnectionRefused, e.Failure);
        Assert.Contains($"127.0.0.1:{port}", e.Message);
        Assert.Contains("refused", e.Message);
    }

    /// <summary>A name in the reserved .invalid domain (RFC 6761) never resolves: UnknownHost.</summary>
    [Fact]
    public async Task UnresolvableNameIsUnknownHost()
    {
        using var target = new TestImages.TemporaryDirectory();
        var e = await Assert.ThrowsAsync<RegistryException>(() => new ImageTransfer(new RegistryClientOptions { TlsVerify = false })
            .PullAsync(ImageReference.Parse("nestor-no-such-registry.invalid/a/b"), new OciLayoutContentStore(target.Path)));
        Assert.Equal(RegistryFailure.UnknownHost, e.Failure);
        Assert.Contains("nestor-no-such-registry.invalid", e.Message);
    }
}
