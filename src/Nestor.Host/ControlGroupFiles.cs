using System.Runtime.InteropServices;
using System.Text;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>Reads and writes of control-group interface files (cgroups(7)) with one write(2) per value, as the kernel
/// parses each write on its own, and the errno of a refused value kept (EINVAL for a malformed value, EBUSY, ENOSPC for
/// an empty v1 cpuset, EOPNOTSUPP); plus kill(2) for signalling a group's members.</summary>
public static partial class ControlGroupFiles
{
    private const int O_WRONLY = 0x1;
    private const int O_CLOEXEC = 0x80000;

    /// <summary>Writes <paramref name="value"/> to the file in a single write(2).</summary>
    public static unsafe void Write(string path, string value)
    {
        int fd = Open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
        {
            throw HostCallException.LastError($"open {path}");
        }
        try
        {
            byte[] bytes = Encoding.UTF8.GetBytes(value);
            fixed (byte* pointer = bytes)
            {
                if (WriteBytes(fd, pointer, (nuint)bytes.Length) < 0)
                {
                    throw HostCallException.LastError($"write '{value}' to {path}");
                }
            }
        }
        finally
        {
            Close(fd);
        }
    }

    /// <summary>The file's text, trimmed of the trailing newline.</summary>
    public static string Read(string path) => File.ReadAllText(path).TrimEnd('\n');

    /// <summary>kill(2); a process that has already gone (ESRCH) is not an error.</summary>
    public static void Signal(int pid, int signal)
    {
        if (SecurityLibC.Kill(pid, signal) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != 3)
            {
                throw new HostCallException($"kill({pid}, {signal})", errno);
            }
        }
    }

    /// <summary>access(2) with W_OK|X_OK: whether this process may create entries in the directory.</summary>
    public static bool IsWritable(string directory) => Access(directory, 2 | 1) == 0;

    [LibraryImport("libc", EntryPoint = "access", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Access(string path, int mode);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static unsafe partial nint WriteBytes(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}
