using System.Text.Json;
using System.Text.Json.Serialization;
using Nestor.Host;

namespace Nestor.Containers.Runtime;

/// <summary>What Nestor's runtime records of one container in <c>ROOT/ID/state.json</c>: the runtime-spec's state
/// plus the init's start time, which with its pid tells a live init from a reused pid.</summary>
internal sealed class StoredContainerState
{
    public string Id { get; set; } = "";
    public string Bundle { get; set; } = "";
    /// <summary><c>creating</c>, <c>created</c> or <c>running</c> as last written; liveness decides <c>stopped</c>.</summary>
    public string Status { get; set; } = "creating";
    public int Pid { get; set; }
    public ulong PidStartTime { get; set; }
    public string? CgroupsPath { get; set; }
    public DateTimeOffset Created { get; set; }
    public Dictionary<string, string>? Annotations { get; set; }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = true)]
[JsonSerializable(typeof(StoredContainerState))]
internal sealed partial class StoredContainerStateJson : JsonSerializerContext;

/// <summary>The runtime's state directory: one directory per container, each locked with flock(2) while a command
/// works on it, so that concurrent create/start/kill/delete of one id are serialized and never see a half-written
/// state (state.json is replaced by rename).</summary>
internal sealed class ContainerStateStore(string root)
{
    public const string StateFile = "state.json";
    public const string ExecFifo = "exec.fifo";

    public string Root { get; } = root;

    public string Directory(string id) => Path.Combine(Root, id);

    /// <summary>runc's rule for ids: letters, digits and <c>_+-.</c>, not starting with a dot, so an id is one path
    /// component.</summary>
    public static void ValidateId(string id)
    {
        if (string.IsNullOrEmpty(id) || id.Length > 1024 || id[0] == '.' ||
            !id.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '+' or '-' or '.'))
        {
            throw new ContainerRuntimeException($"invalid container id '{id}': use letters, digits and _+-. (not starting with a dot)");
        }
    }

    /// <summary>Makes the container's directory (failing if the id exists) and locks it.</summary>
    public ContainerLock CreateAndLock(string id)
    {
        ValidateId(id);
        System.IO.Directory.CreateDirectory(Root);
        string directory = Directory(id);
        try
        {
            // mkdir(2), not Directory.CreateDirectory (which succeeds on an existing directory): of two concurrent
            // creates of one id exactly one wins.
            if (!MountCalls.MakeDirectory(directory, Convert.ToInt32("711", 8)))
            {
                throw new ContainerRuntimeException($"container '{id}' already exists (delete it first: nestor oci delete {id})");
            }
        }
        catch (HostCallException exception)
        {
            throw new ContainerRuntimeException($"cannot create the state directory {directory}: {exception.Message}", exception);
        }
        return ContainerLock.Acquire(directory);
    }

    /// <summary>Locks an existing container's directory; an unknown id is an error.</summary>
    public ContainerLock Lock(string id)
    {
        ValidateId(id);
        string directory = Directory(id);
        if (!File.Exists(Path.Combine(directory, StateFile)))
        {
            throw new ContainerRuntimeException($"container '{id}' does not exist (nestor oci list shows the known ids)");
        }
        var held = ContainerLock.Acquire(directory);
        // Deleted while this command waited for the lock.
        if (!File.Exists(Path.Combine(directory, StateFile)))
        {
            held.Dispose();
            throw new ContainerRuntimeException($"container '{id}' does not exist (it was deleted)");
        }
        return held;
    }

    public StoredContainerState Read(string id)
    {
        string path = Path.Combine(Directory(id), StateFile);
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(path), StoredContainerStateJson.Default.StoredContainerState)
                ?? throw new JsonException("null");
        }
        catch (FileNotFoundException)
        {
            throw new ContainerRuntimeException($"container '{id}' does not exist");
        }
        catch (JsonException exception)
        {
            throw new ContainerRuntimeException($"the state of container '{id}' ({path}) is corrupt: {exception.Message}; delete it with nestor oci delete --force {id}", exception);
        }
    }

    public void Write(StoredContainerState state)
    {
        string path = Path.Combine(Directory(state.Id), StateFile);
        string temporary = path + ".tmp";
        File.WriteAllText(temporary, JsonSerializer.Serialize(state, StoredContainerStateJson.Default.StoredContainerState));
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The runtime-spec status: <c>stopped</c> once the init (by pid and start time) is gone; <c>created</c>
    /// while the exec FIFO still exists (the user's program has not been started).</summary>
    public ContainerStatus StatusOf(StoredContainerState state)
    {
        bool alive = state.Pid > 0 && ProcessCalls.StartTime(state.Pid) == state.PidStartTime;
        if (!alive)
        {
            return ContainerStatus.Stopped;
        }
        return state.Status switch
        {
            "creating" => ContainerStatus.Creating,
            "created" => File.Exists(Path.Combine(Directory(state.Id), ExecFifo)) ? ContainerStatus.Created : ContainerStatus.Running,
            _ => ContainerStatus.Running,
        };
    }

    public IReadOnlyList<string> List() =>
        System.IO.Directory.Exists(Root)
            ? [.. System.IO.Directory.EnumerateDirectories(Root).Where(d => File.Exists(Path.Combine(d, StateFile))).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal)]
            : [];
}

/// <summary>An flock(2) on a container's state directory, held until disposed.</summary>
internal sealed class ContainerLock : IDisposable
{
    private int descriptor;

    private ContainerLock(int descriptor) => this.descriptor = descriptor;

    public static ContainerLock Acquire(string directory)
    {
        int fd = MountCalls.Open(directory, MountCalls.OpenFlags.ReadOnly | MountCalls.OpenFlags.Directory);
        try
        {
            MountCalls.LockExclusive(fd, directory);
        }
        catch
        {
            ProcessCalls.Close(fd);
            throw;
        }
        return new ContainerLock(fd);
    }

    public void Dispose() => ProcessCalls.CloseQuietly(ref descriptor);
}
