using System.Security.Cryptography;
using System.Text;
using Nestor.Containers.Images;

namespace Nestor.Containers.Build;

/// <summary>The build cache, keyed as BuildKit keys its cache: the state a step starts from (the parent's image id:
/// the config digest, which covers every layer's diff id, the config and the history), the step's instruction after
/// variable expansion (its canonical text), and what else decides its result: for COPY and ADD the content digest of
/// the sources (paths, types, modes, contents, link targets; not modification times nor owners), for RUN the
/// environment it runs with (the ARG values among it). Each entry is a file <c>build-cache/KEY</c> in the image store
/// holding the manifest digest of the state after the step; the store's garbage collection keeps what entries
/// name. A hit needs every blob of that state still stored.</summary>
public sealed class BuildCache(ImageStore store)
{
    /// <summary>The key of a step: SHA-256 over the parent state, the instruction's canonical text and
    /// <paramref name="inputs"/>, each on its own line with its length so that no two lists collide.</summary>
    public static string Key(string parentId, string instruction, IEnumerable<string> inputs)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (string part in new[] { parentId, instruction }.Concat(inputs))
        {
            hash.AppendData(Encoding.UTF8.GetBytes($"{part.Length}:{part}\n"));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>The state a step with <paramref name="key"/> produced, or null (never run, or pruned).</summary>
    public StoredImage? TryGet(string key)
    {
        string entry = Path.Combine(store.BuildCacheDirectory, key);
        if (!File.Exists(entry))
        {
            return null;
        }
        string manifest = File.ReadAllText(entry).Trim();
        if (!Digest.IsValid(manifest) || !store.Layout.HasBlob(manifest))
        {
            return null;
        }
        try
        {
            var image = store.LoadManifest(manifest);
            var layers = store.ReadManifest(manifest).Layers;
            if (!layers.All(layer => store.Layout.HasBlob(layer.Digest)) || !store.Layout.HasBlob(image.Id))
            {
                return null;
            }
            // The entry's modification time is its last use: what Prune's age rule and size rule go by.
            File.SetLastWriteTimeUtc(entry, DateTime.UtcNow);
            return image;
        }
        catch (Exception exception) when (exception is ImageStoreException or IOException or System.Text.Json.JsonException)
        {
            return null; // a damaged entry is a miss: the step runs again and replaces it
        }
    }

    /// <summary>Records that the step with <paramref name="key"/> produced <paramref name="state"/> (replaced by
    /// rename: a reader sees the old entry or the new one).</summary>
    public void Put(string key, StoredImage state)
    {
        Directory.CreateDirectory(store.BuildCacheDirectory);
        string entry = Path.Combine(store.BuildCacheDirectory, key);
        string temporary = entry + ".tmp-" + Guid.NewGuid().ToString("N");
        File.WriteAllText(temporary, state.ManifestDigest + "\n");
        File.Move(temporary, entry, overwrite: true);
    }

    /// <summary><c>nestor build prune</c>: removes cache entries and then every blob and unpacked layer that only
    /// they kept (the store's garbage collection). With no rule every entry goes; <paramref name="unusedFor"/>
    /// removes the entries not used for at least that long (docker's <c>--filter until=</c>); <paramref name="keepBytes"/>
    /// then removes the least recently used entries until what the remaining ones alone hold (blobs and unpacked
    /// layers no named image reaches, measured on disk) is at most that many bytes (docker's
    /// <c>--keep-storage</c>). Named images are never touched. The reclaimed bytes are measured, before and after.</summary>
    public BuildCachePruneResult Prune(TimeSpan? unusedFor = null, long? keepBytes = null, DateTime? now = null)
    {
        using var storeLock = store.Lock();
        var at = now ?? DateTime.UtcNow;
        var entries = Entries().OrderBy(e => e.LastUsed).ThenBy(e => e.Path, StringComparer.Ordinal).ToList();
        var removed = new List<CacheEntry>();
        if (unusedFor is null && keepBytes is null)
        {
            removed.AddRange(entries);
            entries.Clear();
        }
        if (unusedFor is { } age)
        {
            removed.AddRange(entries.Where(e => at - e.LastUsed >= age));
            entries.RemoveAll(e => at - e.LastUsed >= age);
        }
        if (keepBytes is { } keep)
        {
            while (entries.Count > 0 && CacheOnlyBytes(entries) > keep)
            {
                removed.Add(entries[0]);
                entries.RemoveAt(0);
            }
        }
        long before = StoreBytes();
        foreach (var entry in removed)
        {
            File.Delete(entry.Path);
        }
        if (unusedFor is null && keepBytes is null && Directory.Exists(RunMount.CacheMountsDirectory(store)))
        {
            // Everything: RUN --mount=type=cache directories too (docker builder prune removes exec.cachemount).
            before += DirectoryBytes(RunMount.CacheMountsDirectory(store));
            Directory.Delete(RunMount.CacheMountsDirectory(store), recursive: true);
        }
        store.CollectGarbage();
        long after = StoreBytes();
        return new BuildCachePruneResult(removed.Count, entries.Count, before - after, CacheOnlyBytes(entries));
    }

    /// <summary>What the entries alone hold: bytes of the blobs and unpacked layers they reach that no manifest of
    /// the index reaches.</summary>
    public long CacheOnlyBytes() => CacheOnlyBytes(Entries());

    private sealed record CacheEntry(string Path, string Manifest, DateTime LastUsed);

    private List<CacheEntry> Entries()
    {
        var entries = new List<CacheEntry>();
        if (!Directory.Exists(store.BuildCacheDirectory))
        {
            return entries;
        }
        foreach (string path in Directory.EnumerateFiles(store.BuildCacheDirectory))
        {
            if (Path.GetFileName(path).Contains(".tmp-", StringComparison.Ordinal))
            {
                continue; // a Put under way
            }
            string manifest = File.ReadAllText(path).Trim();
            entries.Add(new CacheEntry(path, manifest, File.GetLastWriteTimeUtc(path)));
        }
        return entries;
    }

    private long CacheOnlyBytes(IEnumerable<CacheEntry> entries)
    {
        var (namedBlobs, namedLayers) = Reach(store.Layout.ReadManifests().Select(m => m.Manifest.Digest));
        var (blobs, layers) = Reach(entries.Select(e => e.Manifest));
        long bytes = 0;
        foreach (string blob in blobs.Except(namedBlobs))
        {
            bytes += new FileInfo(store.Layout.BlobPath(blob)).Length;
        }
        foreach (string diffId in layers.Except(namedLayers))
        {
            bytes += DirectoryBytes(Path.Combine(store.OverlayDirectory, Digest.Hex(diffId)));
        }
        return bytes;
    }

    /// <summary>The blobs (manifest, config, layers) and layer diff ids the manifests reach; a manifest whose blobs
    /// are gone reaches nothing (its entry is a miss already).</summary>
    private (HashSet<string> Blobs, HashSet<string> DiffIds) Reach(IEnumerable<string> manifests)
    {
        var blobs = new HashSet<string>(StringComparer.Ordinal);
        var diffIds = new HashSet<string>(StringComparer.Ordinal);
        foreach (string digest in manifests.Distinct())
        {
            if (!Digest.IsValid(digest) || !store.Layout.HasBlob(digest))
            {
                continue;
            }
            var manifest = store.ReadManifest(digest);
            if (!store.Layout.HasBlob(manifest.Config.Digest))
            {
                continue;
            }
            blobs.Add(digest);
            blobs.Add(manifest.Config.Digest);
            blobs.UnionWith(manifest.Layers.Select(l => l.Digest).Where(store.Layout.HasBlob));
            diffIds.UnionWith(store.LoadManifest(digest).LayerDiffIds);
        }
        return (blobs, diffIds);
    }

    private long StoreBytes() =>
        DirectoryBytes(Path.Combine(store.Layout.Root, "blobs")) + DirectoryBytes(store.OverlayDirectory);

    /// <summary>The bytes of the regular files under <paramref name="directory"/> (links not followed).</summary>
    private static long DirectoryBytes(string directory)
    {
        if (!Directory.Exists(directory))
        {
            return 0;
        }
        long bytes = 0;
        foreach (var file in new DirectoryInfo(directory).EnumerateFiles("*", new EnumerationOptions
        {
            RecurseSubdirectories = true,
            AttributesToSkip = 0,
            IgnoreInaccessible = true,
        }))
        {
            if (file.LinkTarget is null)
            {
                bytes += file.Length;
            }
        }
        return bytes;
    }

    /// <summary>Docker's size syntax (<c>--keep-storage</c>): a number with an optional unit b, k/kb, m/mb, g/gb,
    /// t/tb (powers of 1024, any case, as docker's units.RAMInBytes).</summary>
    public static long ParseSize(string text)
    {
        string value = text.Trim().ToLowerInvariant();
        int unitStart = value.Length;
        while (unitStart > 0 && char.IsAsciiLetter(value[unitStart - 1]))
        {
            unitStart--;
        }
        long multiplier = value[unitStart..] switch
        {
            "" or "b" => 1,
            "k" or "kb" or "kib" => 1L << 10,
            "m" or "mb" or "mib" => 1L << 20,
            "g" or "gb" or "gib" => 1L << 30,
            "t" or "tb" or "tib" => 1L << 40,
            _ => -1,
        };
        if (multiplier < 0 || !decimal.TryParse(value[..unitStart], System.Globalization.NumberStyles.AllowDecimalPoint,
            System.Globalization.CultureInfo.InvariantCulture, out decimal number))
        {
            throw new BuildException($"'{text}' is not a size", "give bytes with an optional unit, e.g. 512mb or 2gb");
        }
        return (long)(number * multiplier);
    }
}

/// <summary>What <see cref="BuildCache.Prune"/> did: entries removed and kept, bytes freed on disk (measured), and
/// what the kept entries alone still hold.</summary>
public sealed record BuildCachePruneResult(int EntriesRemoved, int EntriesKept, long BytesReclaimed, long BytesKept);
