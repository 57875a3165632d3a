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
            return layers.All(layer => store.Layout.HasBlob(layer.Digest)) && store.Layout.HasBlob(image.Id) ? image : null;
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
}
