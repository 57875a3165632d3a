using System.Text.Json;

namespace Nestor.Containers.Engine;

/// <summary>The container records on disk: one <c>container.json</c> per container, written whole to a temporary file
/// and renamed over the old one (rename(2) is atomic, so a reader never sees half a record), each changed only under
/// its container's lock; ids and names are chosen under the names lock.</summary>
public sealed class ContainerStore(ContainerPaths paths)
{
    public ContainerPaths Paths { get; } = paths;

    /// <summary>The container's lock: held while a command or the monitor reads-modifies-writes its record.</summary>
    public FileLock LockContainer(string id) => FileLock.Acquire(Paths.LockFile(id));

    public FileLock LockNames() => FileLock.Acquire(Paths.NamesLock);

    public ContainerRecord? TryLoad(string id)
    {
        string path = Paths.RecordFile(id);
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(path), ContainerRecordJson.Default.ContainerRecord);
        }
        catch (Exception exception) when (exception is FileNotFoundException or DirectoryNotFoundException or JsonException)
        {
            return null;
        }
    }

    public ContainerRecord Load(string id) =>
        TryLoad(id) ?? throw new ContainerNotFoundException(id);

    public void Save(ContainerRecord record)
    {
        string path = Paths.RecordFile(record.Id);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string temporary = $"{path}.{Environment.ProcessId}.tmp";
        File.WriteAllText(temporary, JsonSerializer.Serialize(record, ContainerRecordJson.Default.ContainerRecord));
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Changes a record under its lock and saves it; returns the saved record.</summary>
    public ContainerRecord Update(string id, Action<ContainerRecord> change)
    {
        using var hold = LockContainer(id);
        var record = Load(id);
        change(record);
        Save(record);
        return record;
    }

    /// <summary>Every container, oldest first.</summary>
    public List<ContainerRecord> All()
    {
        if (!Directory.Exists(Paths.Containers))
        {
            return [];
        }
        var records = new List<ContainerRecord>();
        foreach (string directory in Directory.EnumerateDirectories(Paths.Containers))
        {
            if (TryLoad(Path.GetFileName(directory)) is { } record)
            {
                records.Add(record);
            }
        }
        records.Sort((a, b) => a.Created.CompareTo(b.Created));
        return records;
    }

    /// <summary>The container a user's word names, as Docker resolves it: a full id, a name (with or without a leading
    /// slash), or a unique id prefix.</summary>
    public ContainerRecord Resolve(string reference)
    {
        string word = reference.TrimStart('/');
        if (word.Length == 64 && TryLoad(word) is { } exact)
        {
            return exact;
        }
        var all = All();
        if (all.FirstOrDefault(record => record.Name == word) is { } named)
        {
            return named;
        }
        var matches = word.Length == 0 ? [] : all.Where(record => record.Id.StartsWith(word, StringComparison.Ordinal)).ToList();
        return matches.Count switch
        {
            1 => matches[0],
            0 => throw new ContainerNotFoundException(reference),
            _ => throw new ContainerEngineException($"'{reference}' is the beginning of {matches.Count} container ids: give more of it, or the name"),
        };
    }

    /// <summary>Removes the record and everything in the container's data and state directories.</summary>
    public void Delete(string id)
    {
        DeleteDirectory(Paths.ContainerState(id));
        DeleteDirectory(Paths.ContainerData(id));
    }

    private static void DeleteDirectory(string path)
    {
        if (Directory.Exists(path))
        {
            try
            {
                Directory.Delete(path, recursive: true);
            }
            catch (UnauthorizedAccessException) when (ContainerPaths.Rootless && !OperatingSystem.IsWindows())
            {
                // overlayfs leaves work/work with mode 0 (overlayfs.rst "workdir"); as root that does not matter, the
                // caller must first give itself access to the directories it owns.
                try
                {
                    OpenDirectories(path);
                    Directory.Delete(path, recursive: true);
                }
                catch (Exception exception) when (exception is UnauthorizedAccessException or IOException)
                {
                    // Files of the container's other users belong to the subordinate ids: removed as podman unshare
                    // would, in a user namespace that maps them.
                    RootlessStorage.RemoveTree(path);
                }
            }
        }
    }

    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    private static void OpenDirectories(string path)
    {
        if (new DirectoryInfo(path).LinkTarget is not null)
        {
            return;
        }
        File.SetUnixFileMode(path, File.GetUnixFileMode(path) | UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        foreach (string directory in Directory.EnumerateDirectories(path))
        {
            OpenDirectories(directory);
        }
    }
}

/// <summary>The engine's own failure (Docker's exit status 125): unknown container or image, bad flag, name in use.</summary>
public class ContainerEngineException(string message, Exception? inner = null) : Exception(message, inner);

public sealed class ContainerNotFoundException(string reference)
    : ContainerEngineException($"no such container: {reference} (see 'nestor container ps -a')");
