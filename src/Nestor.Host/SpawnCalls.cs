using System.Runtime.InteropServices;

namespace Nestor.Host;

/// <summary>Starting a program from a multithreaded .NET process without fork's hazards: posix_spawn(3), which glibc
/// implements with clone(CLONE_VM|CLONE_VFORK), with file actions that place descriptors, a working directory, a new
/// session, and every signal reset to its default and unblocked.</summary>
public static unsafe partial class SpawnCalls
{
    // posix_spawn(3) attribute flags (glibc's spawn.h).
    private const short POSIX_SPAWN_SETSIGDEF = 0x04;
    private const short POSIX_SPAWN_SETSIGMASK = 0x08;
    private const short POSIX_SPAWN_SETSID = 0x80;

    [LibraryImport("libc", EntryPoint = "posix_spawn", SetLastError = true)]
    private static partial int PosixSpawn(int* pid, byte* path, void* fileActions, void* attributes, byte** argv, byte** envp);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    private static partial int FileActionsInit(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    private static partial int FileActionsDestroy(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2")]
    private static partial int FileActionsAddDup2(void* fileActions, int fd, int newFd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addchdir_np")]
    private static partial int FileActionsAddChdir(void* fileActions, byte* path);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_init")]
    private static partial int AttributesInit(void* attributes);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_destroy")]
    private static partial int AttributesDestroy(void* attributes);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setflags")]
    private static partial int AttributesSetFlags(void* attributes, short flags);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigmask")]
    private static partial int AttributesSetSignalMask(void* attributes, void* mask);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigdefault")]
    private static partial int AttributesSetSignalDefault(void* attributes, void* mask);

    [LibraryImport("libc", EntryPoint = "sigemptyset")]
    private static partial int SignalEmptySet(void* set);

    [LibraryImport("libc", EntryPoint = "sigfillset")]
    private static partial int SignalFillSet(void* set);

    /// <summary>Starts <paramref name="path"/> with <paramref name="arguments"/> (argv[0] included) and
    /// <paramref name="environment"/>; <paramref name="descriptors"/> maps each child descriptor (0, 1, 2, 3…) to a
    /// descriptor of this process. Every signal is unblocked and reset to its default disposition in the child, since
    /// .NET ignores SIGPIPE and a program it starts would otherwise inherit that. With <paramref name="newSession"/>
    /// the child is made a session and process-group leader (setsid), detached from this process's terminal.</summary>
    public static int Spawn(string path, IReadOnlyList<string> arguments, IReadOnlyList<string> environment,
        IReadOnlyList<(int Child, int Parent)> descriptors, bool newSession = false, string? workingDirectory = null)
    {
        // glibc's posix_spawn_file_actions_t is 80 bytes and posix_spawnattr_t 336 bytes, sigset_t 128: generous room.
        byte* fileActions = stackalloc byte[512];
        byte* attributes = stackalloc byte[1024];
        byte* signals = stackalloc byte[256];
        var allocations = new List<nint>();
        byte* Utf8(string text)
        {
            nint memory = Marshal.StringToCoTaskMemUTF8(text);
            allocations.Add(memory);
            return (byte*)memory;
        }
        byte** Vector(IReadOnlyList<string> items)
        {
            nint memory = Marshal.AllocCoTaskMem((items.Count + 1) * sizeof(nint));
            allocations.Add(memory);
            byte** vector = (byte**)memory;
            for (int i = 0; i < items.Count; i++)
            {
                vector[i] = Utf8(items[i]);
            }
            vector[items.Count] = null;
            return vector;
        }
        FileActionsInit(fileActions);
        AttributesInit(attributes);
        try
        {
            foreach (var (child, parent) in descriptors)
            {
                FileActionsAddDup2(fileActions, parent, child);
            }
            if (workingDirectory is not null)
            {
                FileActionsAddChdir(fileActions, Utf8(workingDirectory));
            }
            SignalEmptySet(signals);
            AttributesSetSignalMask(attributes, signals);
            SignalFillSet(signals);
            AttributesSetSignalDefault(attributes, signals);
            AttributesSetFlags(attributes, (short)(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | (newSession ? POSIX_SPAWN_SETSID : 0)));
            int pid;
            int error = PosixSpawn(&pid, Utf8(path), fileActions, attributes, Vector(arguments), Vector(environment));
            return error == 0 ? pid : throw new HostCallException($"posix_spawn of {path}", error);
        }
        finally
        {
            FileActionsDestroy(fileActions);
            AttributesDestroy(attributes);
            foreach (var memory in allocations)
            {
                Marshal.FreeCoTaskMem(memory);
            }
        }
    }

    /// <summary>This process's environment as KEY=VALUE strings, for a spawned child.</summary>
    public static List<string> CurrentEnvironment()
    {
        var list = new List<string>();
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            list.Add($"{entry.Key}={entry.Value}");
        }
        return list;
    }
}
