using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>Where the engine keeps things. <see cref="StateRoot"/> holds what lives only while the machine is up (the
/// runtime's state, monitor locks, attach sockets: Podman's <c>/run/containers</c>); <see cref="DataRoot"/> what must
/// survive a reboot or a monitor's death (container records, bundles, logs, exit statuses, root file systems, images).
/// Root uses <c>/run/nestor</c> and <c>/var/lib/nestor</c>; an unprivileged user <c>$XDG_RUNTIME_DIR/nestor</c> (else
/// <c>/tmp/nestor-run-UID</c>) and <c>$XDG_DATA_HOME/nestor</c> (else <c>~/.local/share/nestor</c>), as the XDG base
/// directory specification says.</summary>
public sealed record ContainerPaths(string StateRoot, string DataRoot)
{
    /// <summary>The default places for the calling user, each overridable (<c>--state</c>, <c>--root</c>).</summary>
    public static ContainerPaths ForCurrentUser(string? dataRoot = null, string? stateRoot = null)
    {
        uint uid = IdentityCalls.EffectiveUserId();
        if (uid == 0)
        {
            return new(stateRoot ?? "/run/nestor", dataRoot ?? "/var/lib/nestor");
        }
        string? runtimeDirectory = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        string state = stateRoot ?? (string.IsNullOrEmpty(runtimeDirectory)
            ? $"/tmp/nestor-run-{uid}"
            : Path.Combine(runtimeDirectory, "nestor"));
        string? dataHome = Environment.GetEnvironmentVariable("XDG_DATA_HOME");
        string data = dataRoot ?? (string.IsNullOrEmpty(dataHome)
            ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share", "nestor")
            : Path.Combine(dataHome, "nestor"));
        return new(state, data);
    }

    /// <summary>True when the engine runs as an unprivileged user (rootless containers).</summary>
    public static bool Rootless => IdentityCalls.EffectiveUserId() != 0;

    /// <summary>The image store's directory.</summary>
    public string Images => Path.Combine(DataRoot, "images");

    /// <summary>The directory of the container records (<c>DATA/containers</c>).</summary>
    public string Containers => Path.Combine(DataRoot, "containers");

    /// <summary>What survives: record, bundle, log, root file system's upper directory.</summary>
    public string ContainerData(string id) => Path.Combine(Containers, id);

    /// <summary>What lives while the machine is up: the monitor's lock, the attach socket.</summary>
    public string ContainerState(string id) => Path.Combine(StateRoot, "containers", id);

    /// <summary>An OCI runtime's <c>--root</c>.</summary>
    public string RuntimeRoot(string runtime) => Path.Combine(StateRoot, "runtime", runtime);

    public string RecordFile(string id) => Path.Combine(ContainerData(id), "container.json");

    public string Bundle(string id) => Path.Combine(ContainerData(id), "bundle");

    /// <summary>Docker's json-file log: one JSON object per line (log, stream, time).</summary>
    public string LogFile(string id) => Path.Combine(ContainerData(id), $"{id}-json.log");

    public string LockFile(string id) => Path.Combine(ContainerData(id), "lock");

    /// <summary>Held (flock) by the monitor for as long as it lives: a free lock means a dead monitor, whatever pid
    /// the kernel has since given to another process.</summary>
    public string MonitorLock(string id) => Path.Combine(ContainerState(id), "monitor.lock");

    /// <summary>The monitor's attach socket. Unix socket paths are limited to 107 bytes (unix(7)), so sockets live in a
    /// short directory under a short form of the id.</summary>
    public string AttachSocket(string id) => Path.Combine(StateRoot, "s", $"{id[..16]}.attach");

    /// <summary>Where the runtime sends a terminal's master (<c>--console-socket</c>).</summary>
    public string ConsoleSocket(string id) => Path.Combine(StateRoot, "s", $"{id[..16]}.console");

    public string PidFile(string id) => Path.Combine(ContainerState(id), "pid");

    /// <summary>The lock that serialises the choice of names and ids (the name table is the set of records).</summary>
    public string NamesLock => Path.Combine(Containers, "names.lock");
}
