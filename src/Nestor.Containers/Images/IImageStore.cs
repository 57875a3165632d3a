namespace Nestor.Containers.Images;

/// <summary>What the engine needs of the local image store (the OCI image-layout store under
/// <c>/var/lib/nestor/images</c> or <c>$XDG_DATA_HOME/nestor/images</c>). The store itself, its layers and overlays
/// live in this folder.</summary>
public interface IImageStore
{
    /// <summary>The image a reference names (<c>busybox</c>, <c>busybox:latest</c>, <c>localhost:5000/a/b:tag</c>,
    /// <c>sha256:…</c> or a unique prefix of an image id); <see cref="ImageNotFoundException"/> if none.</summary>
    StoredImage Resolve(string reference);

    IReadOnlyList<StoredImage> List();

    /// <summary>Prepares a container's root file system from the image's layers: the unpacked lower directories (bottom
    /// first) and a new upper and work directory under <paramref name="containerDirectory"/>; the caller mounts it
    /// (<see cref="ContainerRootFileSystem.Mount"/>) in the container's mount namespace or on the host.</summary>
    ContainerRootFileSystem CreateRootFileSystem(StoredImage image, string containerDirectory);

    /// <summary>A new image from a container's changes (the overlay's upper directory as a layer, whiteouts for
    /// deletions) on top of <paramref name="parent"/>, with <paramref name="config"/> and a history entry, tagged
    /// <paramref name="reference"/> if given (<c>docker commit</c>); <paramref name="comment"/> and
    /// <paramref name="author"/> go on the history entry, the author also on the image (<c>-m</c>, <c>-a</c>).</summary>
    StoredImage Commit(StoredImage parent, string upperDirectory, ImageConfig config, string? reference, string createdBy,
        string? comment = null, string? author = null);

    /// <summary>As <see cref="Commit"/>, with the new layer given as an uncompressed tar (a rootless container's
    /// changes, read in a user namespace that maps its subordinate ids).</summary>
    StoredImage CommitLayer(StoredImage parent, Stream layer, ImageConfig config, string? reference, string createdBy,
        string? comment = null, string? author = null);
}

/// <summary>An image in the store: its manifest digest, config digest (the image id), the references that name it,
/// the layers (bottom first) and its config.</summary>
public sealed record StoredImage(string Id, string ManifestDigest, IReadOnlyList<string> References,
    IReadOnlyList<string> LayerDiffIds, ImageConfig Config, DateTimeOffset Created, long Size);

/// <summary>The parts of an OCI image config (image-spec config.md, "config") that decide how a container runs.</summary>
public sealed class ImageConfig
{
    public string? User { get; set; }
    public Dictionary<string, object>? ExposedPorts { get; set; }
    public List<string>? Env { get; set; }
    public List<string>? Entrypoint { get; set; }
    public List<string>? Cmd { get; set; }
    public Dictionary<string, object>? Volumes { get; set; }
    public string? WorkingDir { get; set; }
    public Dictionary<string, string>? Labels { get; set; }
    public string? StopSignal { get; set; }

    /// <summary>Docker's <c>Healthcheck</c> (not in the image-spec; podman and Docker read it from the config).</summary>
    public HealthConfig? Healthcheck { get; set; }

    /// <summary>Docker's <c>Shell</c>: the shell of later shell-form instructions (the Dockerfile's SHELL).</summary>
    public List<string>? Shell { get; set; }

    /// <summary>Docker's <c>OnBuild</c>: instructions a build using this image as its base runs (ONBUILD).</summary>
    public List<string>? OnBuild { get; set; }
}

/// <summary>Docker's image config <c>Healthcheck</c> (moby's container.HealthConfig): the test and its timing in
/// nanoseconds (0: the default).</summary>
public sealed class HealthConfig
{
    /// <summary><c>["NONE"]</c>, <c>["CMD", args…]</c> or <c>["CMD-SHELL", command]</c>.</summary>
    public List<string>? Test { get; set; }
    public long? Interval { get; set; }
    public long? Timeout { get; set; }
    public long? StartPeriod { get; set; }
    public long? StartInterval { get; set; }
    public int? Retries { get; set; }
}

/// <summary>A container's overlay root: lower layers (bottom first), upper and work directories, mount point.</summary>
public sealed record ContainerRootFileSystem(IReadOnlyList<string> LowerDirectories, string UpperDirectory,
    string WorkDirectory, string MergedDirectory)
{
    /// <summary>The overlay mount options (<c>lowerdir=…,upperdir=…,workdir=…</c>; overlayfs lists lowerdir top first).</summary>
    public string MountOptions =>
        $"lowerdir={string.Join(':', LowerDirectories.Reverse())},upperdir={UpperDirectory},workdir={WorkDirectory}";

    /// <summary>Mounts the overlay at <see cref="MergedDirectory"/> in the caller's mount namespace.</summary>
    public Action Mount { get; init; } = () => throw new NotSupportedException("no mount action");
}

public sealed class ImageNotFoundException(string reference)
    : Exception($"no image named '{reference}' in the local store (see 'nestor image ls'; 'nestor image pull', 'import', 'load' or 'bootstrap' adds one)")
{
    public string Reference { get; } = reference;
}
