using System.Security.Cryptography;
using System.Text;
using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Build;

/// <summary>What a RUN mount is: a persistent cache directory, or files bound in from the build context.</summary>
public enum RunMountType
{
    /// <summary><c>type=cache</c>: a directory kept between builds (by <c>id</c>, default the target), not in the layer.</summary>
    Cache,

    /// <summary><c>type=bind</c> (the default): a context path, read-only unless <c>rw</c> (writes then discarded).</summary>
    Bind,
}

/// <summary>One <c>RUN --mount=…</c> as the Dockerfile reference's "RUN --mount" section defines it, the subset
/// nestor build runs: <c>type=cache</c> (<c>target</c>, <c>id</c>, <c>ro</c>, <c>sharing</c>) and <c>type=bind</c>
/// from the context (<c>source</c>, <c>target</c>, <c>rw</c>). Other types (tmpfs, secret, ssh), <c>from=</c> and
/// cache ownership options are refused by name.</summary>
/// <param name="Type">Cache or bind.</param>
/// <param name="Target">The absolute path in the container.</param>
/// <param name="Source">For bind: the context path (default the context's root).</param>
/// <param name="Id">For cache: the cache's id (default the target).</param>
/// <param name="ReadOnly">Mounted read-only (a bind's default; a cache's with <c>ro</c>).</param>
public sealed record RunMount(RunMountType Type, string Target, string Source, string Id, bool ReadOnly)
{
    /// <summary>Parses one <c>--mount</c> value (comma-separated <c>key=value</c> fields, as CSV).</summary>
    public static RunMount Parse(string text, SourceLocation location)
    {
        string type = "bind";
        string? target = null, source = null, id = null;
        bool? readOnly = null;
        foreach (string field in text.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int equals = field.IndexOf('=');
            string key = (equals < 0 ? field : field[..equals]).Trim().ToLowerInvariant();
            string? value = equals < 0 ? null : field[(equals + 1)..];
            switch (key)
            {
                case "type":
                    type = value ?? "";
                    break;
                case "target" or "dst" or "destination":
                    target = value;
                    break;
                case "source" or "src":
                    source = value;
                    break;
                case "id":
                    id = value;
                    break;
                case "ro" or "readonly":
                    readOnly = value is null || Bool(value, field, location);
                    break;
                case "rw" or "readwrite":
                    readOnly = !(value is null || Bool(value, field, location));
                    break;
                case "sharing" when value is "shared" or "private" or "locked":
                    break; // one build at a time uses a cache directory here: every mode behaves as shared
                default:
                    throw new DockerfileException(location, $"RUN --mount={text}: '{field}' is not supported by nestor build",
                        "use type=cache with target, id, ro, sharing, or type=bind with source, target, rw");
            }
        }
        if (target is not { Length: > 0 } || !target.StartsWith('/'))
        {
            target = target is { Length: > 0 } ? "/" + target : throw new DockerfileException(location,
                $"RUN --mount={text}: no target", "say where it goes in the container: target=/PATH");
        }
        target = "/" + BuildContext.Clean(target);
        return type switch
        {
            "cache" when source is null => new RunMount(RunMountType.Cache, target, "", id ?? target, readOnly ?? false),
            "bind" => new RunMount(RunMountType.Bind, target, source ?? ".", "", readOnly ?? true),
            "cache" => throw new DockerfileException(location, $"RUN --mount={text}: a cache mount has no source",
                "remove source= (the cache directory is nestor's)"),
            _ => throw new DockerfileException(location, $"RUN --mount=type={type}: nestor build mounts only type=cache and type=bind",
                "copy what the command needs with COPY, or use a cache or bind mount"),
        };
    }

    private static bool Bool(string value, string field, SourceLocation location) => value.ToLowerInvariant() switch
    {
        "true" or "1" => true,
        "false" or "0" => false,
        _ => throw new DockerfileException(location, $"RUN --mount: '{field}' is not true or false", "write ro=true, or ro alone"),
    };

    /// <summary>The directory on the host that holds the cache mount <paramref name="id"/> of a store:
    /// <c>build-cache-mounts/SHA256(id)</c> beside the build cache (pruned with it).</summary>
    public static string CacheDirectory(Images.ImageStore store, string id) =>
        Path.Combine(CacheMountsDirectory(store), Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(id))));

    /// <summary>Where a store's cache mounts live.</summary>
    public static string CacheMountsDirectory(Images.ImageStore store) => Path.Combine(store.Root, "build-cache-mounts");
}
