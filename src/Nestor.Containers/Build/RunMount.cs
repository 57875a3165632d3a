using System.Security.Cryptography;
using System.Text;
using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Containers.Build;

/// <summary>What a RUN mount is (the Dockerfile reference, "RUN --mount": its five types).</summary>
public enum RunMountType
{
    /// <summary><c>type=cache</c>: a directory kept between builds (by <c>id</c>, default the target), not in the layer.</summary>
    Cache,

    /// <summary><c>type=bind</c> (the default): a context path, read-only unless <c>rw</c> (writes then discarded).</summary>
    Bind,

    /// <summary><c>type=tmpfs</c>: an empty tmpfs at the target, at most <c>size</c> bytes, gone with the step.</summary>
    Tmpfs,

    /// <summary><c>type=secret</c>: the file given by <c>--secret id=ID,src=FILE</c>, read-only at the target
    /// (default <c>/run/secrets/ID</c>), in no layer and not in the cache key.</summary>
    Secret,

    /// <summary><c>type=ssh</c>: the agent socket given by <c>--ssh ID=SOCKET</c> at the target (default
    /// <c>/run/buildkit/ssh_agent.N</c>), with <c>SSH_AUTH_SOCK</c> naming it.</summary>
    Ssh,
}

/// <summary>One <c>RUN --mount=…</c> as the Dockerfile reference's "RUN --mount" section defines it:
/// <c>type=cache</c> (<c>target</c>, <c>id</c>, <c>ro</c>, <c>sharing</c>), <c>type=bind</c> from the context
/// (<c>source</c>, <c>target</c>, <c>rw</c>), <c>type=tmpfs</c> (<c>target</c>, <c>size</c>), <c>type=secret</c>
/// and <c>type=ssh</c> (<c>id</c>, <c>target</c>, <c>required</c>, <c>mode</c>, <c>uid</c>, <c>gid</c>).
/// <c>from=</c> and cache ownership options are refused by name.</summary>
/// <param name="Type">Which of the five.</param>
/// <param name="Target">The absolute path in the container.</param>
/// <param name="Source">For bind: the context path (default the context's root).</param>
/// <param name="Id">For cache: the cache's id (default the target); for secret and ssh: what <c>--secret</c> or
/// <c>--ssh</c> names.</param>
/// <param name="ReadOnly">Mounted read-only (a bind's default; a cache's with <c>ro</c>; a secret always).</param>
public sealed record RunMount(RunMountType Type, string Target, string Source, string Id, bool ReadOnly)
{
    /// <summary>tmpfs: the size limit in bytes (null: the kernel's default, half of RAM).</summary>
    public long? Size { get; init; }

    /// <summary>secret, ssh: a build without the secret or agent fails rather than running the step without it.</summary>
    public bool Required { get; init; }

    /// <summary>secret, ssh: the file's mode (the reference's defaults: 0400 for a secret, 0600 for a socket).</summary>
    public uint Mode { get; init; }

    /// <summary>secret, ssh: the owner in the container (default root).</summary>
    public uint Uid { get; init; }

    /// <summary>secret, ssh: the group in the container (default root).</summary>
    public uint Gid { get; init; }

    /// <summary>Parses one <c>--mount</c> value (comma-separated <c>key=value</c> fields, as CSV).
    /// <paramref name="sshIndex"/> numbers the default targets of ssh mounts (<c>/run/buildkit/ssh_agent.N</c>).</summary>
    public static RunMount Parse(string text, SourceLocation location, int sshIndex = 0)
    {
        string type = "bind";
        string? target = null, source = null, id = null, size = null, mode = null;
        bool? readOnly = null;
        bool required = false;
        uint uid = 0, gid = 0;
        // The type decides which keys are valid, wherever in the list it is written.
        string[] fields = text.Split(',', StringSplitOptions.RemoveEmptyEntries);
        if (fields.LastOrDefault(f => f.Trim().StartsWith("type=", StringComparison.OrdinalIgnoreCase)) is { } typeField)
        {
            type = typeField.Trim()[5..];
        }
        foreach (string field in fields)
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
                case "size" when type == "tmpfs":
                    size = value;
                    break;
                case "required" when type is "secret" or "ssh":
                    required = value is null || Bool(value, field, location);
                    break;
                case "mode" when type is "secret" or "ssh":
                    mode = value;
                    break;
                case "uid" when type is "secret" or "ssh":
                    uid = NumericId(value, field, location);
                    break;
                case "gid" when type is "secret" or "ssh":
                    gid = NumericId(value, field, location);
                    break;
                default:
                    throw new DockerfileException(location, $"RUN --mount={text}: '{field}' is not supported by nestor build",
                        "use type=cache with target, id, ro, sharing; type=bind with source, target, rw; type=tmpfs with target, size; "
                        + "type=secret or type=ssh with id, target, required, mode, uid, gid");
            }
        }
        if (type is "secret" && target is null)
        {
            // The reference: the id defaults to the target's base name, the target to /run/secrets/ + id.
            target = id is { Length: > 0 } ? "/run/secrets/" + id : throw new DockerfileException(location,
                $"RUN --mount={text}: a secret mount needs id= or target=", "write type=secret,id=NAME (given with --secret id=NAME,src=FILE)");
        }
        if (type is "ssh" && target is null)
        {
            target = "/run/buildkit/ssh_agent." + sshIndex.ToString(System.Globalization.CultureInfo.InvariantCulture);
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
            "tmpfs" when source is null && id is null => new RunMount(RunMountType.Tmpfs, target, "", "", false)
            {
                Size = size is null ? null : ParseSize(size, text, location),
            },
            "secret" when source is null => new RunMount(RunMountType.Secret, target, "", id ?? Path.GetFileName(target), true)
            {
                Required = required,
                Mode = ParseMode(mode, 0x100, text, location),
                Uid = uid,
                Gid = gid,
            },
            "ssh" when source is null => new RunMount(RunMountType.Ssh, target, "", id ?? "default", false)
            {
                Required = required,
                Mode = ParseMode(mode, 0x180, text, location),
                Uid = uid,
                Gid = gid,
            },
            "tmpfs" or "secret" or "ssh" => throw new DockerfileException(location, $"RUN --mount={text}: a {type} mount takes no {(source is null ? "id" : "source")}",
                type == "secret" ? "give the file on the command line: nestor build --secret id=NAME,src=FILE" : type == "ssh" ? "give the socket on the command line: nestor build --ssh default=$SSH_AUTH_SOCK" : "remove it"),
            _ => throw new DockerfileException(location, $"RUN --mount=type={type}: nestor build mounts type=cache, bind, tmpfs, secret and ssh",
                "use one of those types"),
        };
    }

    /// <summary>A tmpfs size: bytes, or a number with k, m, g (powers of 1024, as docker's RAMInBytes), optionally
    /// followed by b.</summary>
    private static long ParseSize(string value, string text, SourceLocation location)
    {
        string number = value.Trim().ToLowerInvariant();
        if (number.EndsWith('b') && number.Length > 1 && char.IsLetter(number[^2]))
        {
            number = number[..^1];
        }
        long multiplier = number.Length > 0 ? number[^1] switch { 'k' => 1L << 10, 'm' => 1L << 20, 'g' => 1L << 30, 'b' => 1, _ => 1 } : 1;
        if (number.Length > 0 && char.IsLetter(number[^1]))
        {
            number = number[..^1];
        }
        return long.TryParse(number, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long count)
            && count > 0 && count <= long.MaxValue / multiplier ? count * multiplier
            : throw new DockerfileException(location, $"RUN --mount={text}: size={value} is not a size", "give bytes or a number with k, m or g, e.g. size=64m");
    }

    private static uint ParseMode(string? value, uint fallback, string text, SourceLocation location)
    {
        if (value is null)
        {
            return fallback;
        }
        try
        {
            uint mode = Convert.ToUInt32(value, 8);
            return mode <= 0xfff ? mode : throw new FormatException();
        }
        catch (Exception exception) when (exception is FormatException or OverflowException or ArgumentException)
        {
            throw new DockerfileException(location, $"RUN --mount={text}: mode={value} is not an octal mode", "give octal permission bits, e.g. mode=0440");
        }
    }

    private static uint NumericId(string? value, string field, SourceLocation location) =>
        uint.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out uint id) ? id
            : throw new DockerfileException(location, $"RUN --mount: '{field}' is not a numeric id", "give a number, e.g. uid=1000");

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
