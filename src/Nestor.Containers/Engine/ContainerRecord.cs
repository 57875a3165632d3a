using System.Text.Json;
using System.Text.Json.Serialization;
using Nestor.Containers.Network;

namespace Nestor.Containers.Engine;

/// <summary>Docker's container states (<c>docker inspect</c>'s <c>State.Status</c>).</summary>
public static class ContainerState
{
    public const string Created = "created";
    public const string Running = "running";
    /// <summary>Running, with its control group frozen (<c>container pause</c>); derived from the freezer on every read
    /// (<see cref="ContainerFreezer.WithPauseState"/>), never stored.</summary>
    public const string Paused = "paused";
    public const string Exited = "exited";
    public const string Removing = "removing";
}

/// <summary>Everything the engine knows of one container, saved as <c>container.json</c> in its data directory.
/// Shaped like Docker's <c>inspect</c> so that <c>inspect</c> prints it with little translation.</summary>
public sealed class ContainerRecord
{
    /// <summary>64 hexadecimal digits (32 random bytes), as Docker's ids.</summary>
    public string Id { get; set; } = "";
    public string Name { get; set; } = "";
    public DateTimeOffset Created { get; set; }
    /// <summary>The reference the user gave (<c>busybox</c>).</summary>
    public string Image { get; set; } = "";
    /// <summary>The image's id (config digest) at creation.</summary>
    public string ImageId { get; set; } = "";
    public ContainerConfiguration Config { get; set; } = new();
    public ContainerHostConfiguration HostConfig { get; set; } = new();
    public ContainerRunState State { get; set; } = new();
    public ContainerRootLayers RootFileSystem { get; set; } = new();
    public NetworkAttachment? Network { get; set; }
    /// <summary>How many times the container was started (Docker's RestartCount counts restarts by policy; this
    /// counts every start, for the log).</summary>
    public int StartCount { get; set; }
}

/// <summary>How the container's process runs (Docker's <c>Config</c>): the image's config with the flags on top.</summary>
public sealed class ContainerConfiguration
{
    public string Hostname { get; set; } = "";
    public string User { get; set; } = "";
    public List<string> Env { get; set; } = [];
    public List<string> Cmd { get; set; } = [];
    public List<string> Entrypoint { get; set; } = [];
    public string WorkingDir { get; set; } = "";
    public bool Tty { get; set; }
    public bool OpenStdin { get; set; }
    /// <summary>Set for <c>run -i</c> in the foreground: the end of the client's input closes the container's.</summary>
    public bool StdinOnce { get; set; }
    public string StopSignal { get; set; } = "SIGTERM";
    public Dictionary<string, string> Labels { get; set; } = [];
    public string Image { get; set; } = "";
}

/// <summary>What the host gives the container (Docker's <c>HostConfig</c>).</summary>
public sealed class ContainerHostConfiguration
{
    /// <summary><c>nestor</c>, <c>crun</c> or <c>runc</c>.</summary>
    public string Runtime { get; set; } = "";
    public bool AutoRemove { get; set; }
    /// <summary><c>HOST:CONTAINER[:ro]</c>.</summary>
    public List<string> Binds { get; set; } = [];
    /// <summary><c>PATH[:size=BYTES]</c>.</summary>
    public List<string> Tmpfs { get; set; } = [];
    public List<PortMapping> PortBindings { get; set; } = [];
    public NetworkMode NetworkMode { get; set; } = NetworkMode.None;
    /// <summary>Bytes; 0 is no limit.</summary>
    public long Memory { get; set; }
    /// <summary>CPUs in billionths (Docker's NanoCpus); 0 is no limit.</summary>
    public long NanoCpus { get; set; }
    /// <summary>0 is no limit.</summary>
    public long PidsLimit { get; set; }
    public List<string> CapAdd { get; set; } = [];
    public List<string> CapDrop { get; set; } = [];
    public bool Privileged { get; set; }
    public bool ReadonlyRootfs { get; set; }
}

/// <summary>The container's lifecycle (Docker's <c>State</c>), plus the monitor that owns it.</summary>
public sealed class ContainerRunState
{
    public string Status { get; set; } = ContainerState.Created;
    public bool Running { get; set; }
    /// <summary>Frozen by <c>container pause</c> (Docker's <c>State.Paused</c>): read from the freezer, not stored.</summary>
    [JsonIgnore]
    public bool Paused { get; set; }
    /// <summary>Host pid of the container's first process; 0 when not running.</summary>
    public int Pid { get; set; }
    /// <summary>The process's start time in clock ticks since boot (/proc/PID/stat field 22), so that a pid the kernel
    /// reused is not mistaken for the container.</summary>
    public ulong PidStartTime { get; set; }
    public int MonitorPid { get; set; }
    /// <summary>/proc/sys/kernel/random/boot_id when it was started: after a reboot nothing of it runs.</summary>
    public string BootId { get; set; } = "";
    public int ExitCode { get; set; }
    /// <summary>Why the engine could not start or follow it (Docker's <c>State.Error</c>).</summary>
    public string Error { get; set; } = "";
    public DateTimeOffset StartedAt { get; set; }
    public DateTimeOffset FinishedAt { get; set; }
}

/// <summary>The overlay that makes the container's root (Docker's <c>GraphDriver.Data</c>): lower directories bottom
/// first, each with its layer's diff id, upper, work and merged.</summary>
public sealed class ContainerRootLayers
{
    public List<string> LowerDirectories { get; set; } = [];
    public List<string> LowerDiffIds { get; set; } = [];
    public string UpperDirectory { get; set; } = "";
    public string WorkDirectory { get; set; } = "";
    public string MergedDirectory { get; set; } = "";

    /// <summary>overlayfs(5)'s options; its lowerdir lists the top layer first.</summary>
    public string MountOptions =>
        $"lowerdir={string.Join(':', Enumerable.Reverse(LowerDirectories))},upperdir={UpperDirectory},workdir={WorkDirectory}";
}

/// <summary>Source-generated JSON for the engine's documents.</summary>
[JsonSourceGenerationOptions(WriteIndented = true, UseStringEnumConverter = true)]
[JsonSerializable(typeof(ContainerRecord))]
[JsonSerializable(typeof(List<string>))]
[JsonSerializable(typeof(Dictionary<string, string>))]
[JsonSerializable(typeof(JsonElement))]
public sealed partial class ContainerRecordJson : JsonSerializerContext;
