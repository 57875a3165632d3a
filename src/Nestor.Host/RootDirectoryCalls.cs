using System.Runtime.InteropServices;
using System.Text;
using Nestor.Host.Native;

namespace Nestor.Host;

/// <summary>The calls that confine a process to a directory tree and replace its program: chroot(2), chdir(2),
/// execve(2). Each failure is a <see cref="HostCallException"/> carrying errno.</summary>
public static class RootDirectoryCalls
{
    /// <summary>The effective user id of this process (geteuid(2)).</summary>
    public static uint EffectiveUserId => LibCRoot.Geteuid();

    /// <summary>chroot(2): makes <paramref name="directory"/> the root of path lookup for this process (all its
    /// threads). It changes nothing else: not the working directory, not open descriptors, not the mount table.</summary>
    public static void ChangeRoot(string directory)
    {
        if (LibCRoot.Chroot(directory) != 0)
        {
            throw HostCallException.LastError($"chroot to {directory}");
        }
    }

    /// <summary>chdir(2).</summary>
    public static void ChangeDirectory(string directory)
    {
        if (LibCRoot.Chdir(directory) != 0)
        {
            throw HostCallException.LastError($"chdir to {directory}");
        }
    }

    /// <summary>execve(2): replaces this process's program by <paramref name="path"/> with <paramref name="arguments"/>
    /// (argv, argv[0] included) and <paramref name="environment"/> (NAME=value). Returns only by throwing.</summary>
    public static unsafe void Execute(string path, IReadOnlyList<string> arguments, IReadOnlyList<string> environment)
    {
        var allocated = new List<nint>();
        try
        {
            nint[] argv = ToNullTerminated(arguments, allocated);
            nint[] envp = ToNullTerminated(environment, allocated);
            byte[] pathBytes = Encoding.UTF8.GetBytes(path + "\0");
            fixed (byte* pathPointer = pathBytes)
            fixed (nint* argvPointer = argv)
            fixed (nint* envpPointer = envp)
            {
                LibCRoot.Execve(pathPointer, argvPointer, envpPointer);
            }
            throw HostCallException.LastError($"execve of {path}");
        }
        finally
        {
            foreach (nint pointer in allocated)
            {
                Marshal.FreeCoTaskMem(pointer);
            }
        }
    }

    private static nint[] ToNullTerminated(IReadOnlyList<string> strings, List<nint> allocated)
    {
        var pointers = new nint[strings.Count + 1];
        for (int i = 0; i < strings.Count; i++)
        {
            pointers[i] = Marshal.StringToCoTaskMemUTF8(strings[i]);
            allocated.Add(pointers[i]);
        }
        return pointers;
    }
}
