using Nestor.Containers.Engine.Native;

namespace Nestor.Containers.Engine;

/// <summary>An exclusive flock(2) on a file, released by <see cref="Dispose"/> or by the holder's death: the kernel
/// drops it with the last descriptor, so a killed command or monitor never leaves a lock behind.</summary>
public sealed class FileLock : IDisposable
{
    private const int LOCK_NB = 4;
    private int fd;

    private FileLock(int fd) => this.fd = fd;

    /// <summary>Waits for the lock on <paramref name="path"/> (created if missing).</summary>
    public static FileLock Acquire(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        int fd = EngineCalls.Open(path, EngineCalls.O_RDWR | EngineCalls.O_CREAT);
        try
        {
            EngineCalls.Flock(fd, EngineCalls.LOCK_EX);
        }
        catch
        {
            EngineCalls.Close(fd);
            throw;
        }
        return new FileLock(fd);
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
        int fd = EngineCalls.Open(path, EngineCalls.O_RDWR | EngineCalls.O_CREAT);
        try
        {
            EngineCalls.Flock(fd, EngineCalls.LOCK_EX | LOCK_NB);
        }
        catch (Nestor.Host.HostCallException)
        {
            EngineCalls.Close(fd);
            return null;
        }
        return new FileLock(fd);
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

    public void Dispose()
    {
        if (fd >= 0)
        {
            EngineCalls.Close(fd);
            fd = -1;
        }
    }
}
