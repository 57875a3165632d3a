using Microsoft.Win32.SafeHandles;
using Nestor.Host;

namespace Nestor.Containers.Engine;

/// <summary>An exclusive flock(2) on a file, released by <see cref="Dispose"/> or by the holder's death: the kernel
/// drops it with the last descriptor, so a killed command or monitor never leaves a lock behind.</summary>
public sealed class FileLock : IDisposable
{
    // Lock files are the engine's own: 0600.
    private const int Mode = 0x180;
    private readonly SafeFileHandle handle;

    private FileLock(SafeFileHandle handle) => this.handle = handle;

    /// <summary>Waits for the lock on <paramref name="path"/> (created if missing).</summary>
    public static FileLock Acquire(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        return new FileLock(FileSystemCalls.OpenLocked(path, Mode));
    }

    /// <summary>The lock if nobody holds it, else null. A missing file counts as free (null, nothing created) when
    /// <paramref name="create"/> is false.</summary>
    public static FileLock? TryAcquire(string path, bool create = true)
    {
        if (!create && !File.Exists(path))
        {
            return null;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        return FileSystemCalls.TryOpenLocked(path, Mode) is { } handle ? new FileLock(handle) : null;
    }

    /// <summary>True when someone holds the lock on <paramref name="path"/> (e.g. a monitor is alive).</summary>
    public static bool IsHeld(string path)
    {
        if (!File.Exists(path))
        {
            return false;
        }
        using var probe = TryAcquire(path, create: false);
        return probe is null && File.Exists(path);
    }

    public void Dispose() => handle.Dispose();
}
