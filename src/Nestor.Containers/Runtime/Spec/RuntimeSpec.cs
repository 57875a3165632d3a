using System.Text.Json;
using System.Text.Json.Serialization;

namespace Nestor.Containers.Runtime.Spec;

// The OCI runtime specification's bundle configuration, config.json (opencontainers/runtime-spec 1.2: config.md,
// config-linux.md). Property names are the specification's (camelCase in JSON); fields the specification marks
// optional are nullable and left out when written. One model for every runtime Nestor drives: its own and crun/runc,
// which read the same file.

/// <summary>config.json of an OCI bundle.</summary>
public sealed class RuntimeSpec
{
    /// <summary>The runtime-spec version Nestor writes.</summary>
    public const string CurrentVersion = "1.2.0";

    public string OciVersion { get; set; } = CurrentVersion;
    public SpecRoot? Root { get; set; }
    public SpecProcess? Process { get; set; }
    public string? Hostname { get; set; }
    public string? Domainname { get; set; }
    public List<SpecMount>? Mounts { get; set; }
    public SpecHooks? Hooks { get; set; }
    public Dictionary<string, string>? Annotations { get; set; }
    public SpecLinux? Linux { get; set; }

    /// <summary>Reads a config.json; a malformed file is a <see cref="JsonException"/> naming the position.</summary>
    public static RuntimeSpec Parse(string json) =>
        JsonSerializer.Deserialize(json, RuntimeSpecJson.Default.RuntimeSpec) ?? throw new JsonException("config.json is null");

    public static RuntimeSpec Load(string path) => Parse(File.ReadAllText(path));

    public string ToJson() => JsonSerializer.Serialize(this, RuntimeSpecJson.Default.RuntimeSpec);
}

public sealed class SpecRoot
{
    public string Path { get; set; } = "rootfs";
    public bool? Readonly { get; set; }
}

public sealed class SpecProcess
{
    public bool? Terminal { get; set; }
    public SpecConsoleSize? ConsoleSize { get; set; }
    public SpecUser User { get; set; } = new();
    public List<string>? Args { get; set; }
    public List<string>? Env { get; set; }
    public string Cwd { get; set; } = "/";
    public SpecCapabilities? Capabilities { get; set; }
    public List<SpecRlimit>? Rlimits { get; set; }
    public bool? NoNewPrivileges { get; set; }
    public string? ApparmorProfile { get; set; }
    public int? OomScoreAdj { get; set; }
    public string? SelinuxLabel { get; set; }
}

public sealed class SpecConsoleSize
{
    public uint Height { get; set; }
    public uint Width { get; set; }
}

public sealed class SpecUser
{
    public uint Uid { get; set; }
    public uint Gid { get; set; }
    public uint? Umask { get; set; }
    public List<uint>? AdditionalGids { get; set; }
}

/// <summary>Capability names as the specification writes them, e.g. <c>CAP_CHOWN</c>.</summary>
public sealed class SpecCapabilities
{
    public List<string>? Bounding { get; set; }
    public List<string>? Effective { get; set; }
    public List<string>? Inheritable { get; set; }
    public List<string>? Permitted { get; set; }
    public List<string>? Ambient { get; set; }
}

public sealed class SpecRlimit
{
    /// <summary>e.g. <c>RLIMIT_NOFILE</c>.</summary>
    public string Type { get; set; } = "";
    public ulong Soft { get; set; }
    public ulong Hard { get; set; }
}

public sealed class SpecMount
{
    public string Destination { get; set; } = "";
    public string? Type { get; set; }
    public string? Source { get; set; }
    public List<string>? Options { get; set; }
    public List<SpecIdMapping>? UidMappings { get; set; }
    public List<SpecIdMapping>? GidMappings { get; set; }
}

public sealed class SpecHooks
{
    public List<SpecHook>? Prestart { get; set; }
    public List<SpecHook>? CreateRuntime { get; set; }
    public List<SpecHook>? CreateContainer { get; set; }
    public List<SpecHook>? StartContainer { get; set; }
    public List<SpecHook>? Poststart { get; set; }
    public List<SpecHook>? Poststop { get; set; }
}

public sealed class SpecHook
{
    public string Path { get; set; } = "";
    public List<string>? Args { get; set; }
    public List<string>? Env { get; set; }
    public int? Timeout { get; set; }
}

public sealed class SpecLinux
{
    public List<SpecNamespace>? Namespaces { get; set; }
    public List<SpecIdMapping>? UidMappings { get; set; }
    public List<SpecIdMapping>? GidMappings { get; set; }
    /// <summary>Time namespace offsets by clock name (<c>monotonic</c>, <c>boottime</c>).</summary>
    public Dictionary<string, SpecTimeOffset>? TimeOffsets { get; set; }
    public List<SpecDevice>? Devices { get; set; }
    public string? CgroupsPath { get; set; }
    public SpecResources? Resources { get; set; }
    public Dictionary<string, string>? Sysctl { get; set; }
    public SpecSeccomp? Seccomp { get; set; }
    public string? RootfsPropagation { get; set; }
    public List<string>? MaskedPaths { get; set; }
    public List<string>? ReadonlyPaths { get; set; }
    public string? MountLabel { get; set; }
}

/// <summary>One namespace: <c>pid</c>, <c>network</c>, <c>mount</c>, <c>ipc</c>, <c>uts</c>, <c>user</c>, <c>cgroup</c>,
/// <c>time</c>; with a <see cref="Path"/> the container joins that namespace (setns) instead of creating one.</summary>
public sealed class SpecNamespace
{
    public string Type { get; set; } = "";
    public string? Path { get; set; }
}

public sealed class SpecIdMapping
{
    public uint ContainerID { get; set; }
    public uint HostID { get; set; }
    public uint Size { get; set; }
}

public sealed class SpecTimeOffset
{
    public long Secs { get; set; }
    public uint Nanosecs { get; set; }
}

public sealed class SpecDevice
{
    /// <summary><c>c</c>, <c>b</c>, <c>u</c> or <c>p</c>.</summary>
    public string Type { get; set; } = "c";
    public string Path { get; set; } = "";
    public long? Major { get; set; }
    public long? Minor { get; set; }
    public uint? FileMode { get; set; }
    public uint? Uid { get; set; }
    public uint? Gid { get; set; }
}

public sealed class SpecResources
{
    public List<SpecDeviceCgroup>? Devices { get; set; }
    public SpecMemory? Memory { get; set; }
    public SpecCpu? Cpu { get; set; }
    public SpecPids? Pids { get; set; }
    public SpecBlockIo? BlockIO { get; set; }
    public Dictionary<string, string>? Unified { get; set; }
}

public sealed class SpecDeviceCgroup
{
    public bool Allow { get; set; }
    public string? Type { get; set; }
    public long? Major { get; set; }
    public long? Minor { get; set; }
    public string? Access { get; set; }
}

public sealed class SpecMemory
{
    public long? Limit { get; set; }
    public long? Reservation { get; set; }
    public long? Swap { get; set; }
    public ulong? Swappiness { get; set; }
    public bool? DisableOOMKiller { get; set; }
}

public sealed class SpecCpu
{
    public ulong? Shares { get; set; }
    public long? Quota { get; set; }
    public ulong? Period { get; set; }
    public string? Cpus { get; set; }
    public string? Mems { get; set; }
}

public sealed class SpecPids
{
    public long Limit { get; set; }
}

public sealed class SpecBlockIo
{
    public ushort? Weight { get; set; }
}

public sealed class SpecSeccomp
{
    /// <summary>e.g. <c>SCMP_ACT_ALLOW</c>, <c>SCMP_ACT_ERRNO</c>.</summary>
    public string DefaultAction { get; set; } = "SCMP_ACT_ALLOW";
    public uint? DefaultErrnoRet { get; set; }
    public List<string>? Architectures { get; set; }
    public List<string>? Flags { get; set; }
    public List<SpecSyscall>? Syscalls { get; set; }
}

public sealed class SpecSyscall
{
    public List<string> Names { get; set; } = [];
    public string Action { get; set; } = "SCMP_ACT_ERRNO";
    public uint? ErrnoRet { get; set; }
    public List<SpecSyscallArg>? Args { get; set; }
}

public sealed class SpecSyscallArg
{
    public uint Index { get; set; }
    public ulong Value { get; set; }
    public ulong? ValueTwo { get; set; }
    /// <summary>e.g. <c>SCMP_CMP_MASKED_EQ</c>.</summary>
    public string Op { get; set; } = "SCMP_CMP_EQ";
}

/// <summary>The runtime-spec's state of a container (runtime.md, "State"), what <c>state</c> prints.</summary>
public sealed class SpecState
{
    public string OciVersion { get; set; } = RuntimeSpec.CurrentVersion;
    public string Id { get; set; } = "";
    /// <summary><c>creating</c>, <c>created</c>, <c>running</c> or <c>stopped</c>.</summary>
    public string Status { get; set; } = "";
    public int? Pid { get; set; }
    public string Bundle { get; set; } = "";
    public Dictionary<string, string>? Annotations { get; set; }
}

/// <summary>Source-generated JSON for the specification's documents (NativeAOT has no reflection-based serializer).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, WriteIndented = true,
    ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true)]
[JsonSerializable(typeof(RuntimeSpec))]
[JsonSerializable(typeof(SpecState))]
public sealed partial class RuntimeSpecJson : JsonSerializerContext;
