using System.Collections;
using Nestor.Host;

namespace Nestor.Containers.Chroot;

/// <summary>A plain chroot, as the course shows it ("the mother of all containers"): chroot(2) to a directory,
/// chdir("/") into it, then execve(2) of a command found inside it.
/// <para>It is not isolation. chroot(2) changes only the directory where absolute path lookup starts, for this process
/// and its children; the mount table, the other processes, the network, the users stay the host's, and the kernel keeps
/// nothing that stops a root process from leaving: chroot into a subdirectory while the working directory stays above
/// it, and "..", which is only stopped at the process's root, climbs to the host's real root (chroot(2), NOTES: "This
/// call does not change the current working directory … the process can escape"). A container uses pivot_root(2) in a
/// mount namespace of its own instead and unmounts the old root, so that the host's tree is no longer in the namespace
/// at all (see <c>ChrootEscapeTests</c>).</para></summary>
public sealed class ChrootJail
{
    /// <summary>The PATH searched inside the new root when the environment has none (chroot(1) and Docker use the
    /// same default).</summary>
    public const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    /// <summary>chroot(1)'s statuses, which Docker uses too: 125 the chroot itself failed, 126 the command was found
    /// but could not be run, 127 it was not found.</summary>
    public const int ChrootFailedStatus = 125;
    public const int CannotExecuteStatus = 126;
    public const int NotFoundStatus = 127;

    public ChrootJail(string rootDirectory)
    {
        RootDirectory = Path.GetFullPath(rootDirectory);
    }

    /// <summary>The directory that becomes "/".</summary>
    public string RootDirectory { get; }

    /// <summary>Enters the jail and replaces this process by <paramref name="command"/> (default <c>/bin/sh</c>),
    /// looked up in the jail's PATH when it has no slash. Does not return: on failure it throws a
    /// <see cref="ChrootException"/> whose <see cref="ChrootException.ExitStatus"/> is chroot(1)'s.</summary>
    public void Execute(IReadOnlyList<string> command)
    {
        IReadOnlyList<string> arguments = command.Count > 0 ? command : ["/bin/sh"];
        if (!Directory.Exists(RootDirectory))
        {
            throw new ChrootException($"cannot chroot to {RootDirectory}: no such directory",
                "Give a directory that holds a root file system (e.g. an exported image: nestor container export)", ChrootFailedStatus);
        }
        // Everything the rest needs is computed before the chroot: under the JIT, assemblies load lazily from the
        // host's paths, which are gone once the root has changed.
        var environment = Environment.GetEnvironmentVariables().Cast<DictionaryEntry>()
            .Select(entry => $"{entry.Key}={entry.Value}").ToList();
        string searchPath = Environment.GetEnvironmentVariable("PATH") ?? DefaultPath;
        _ = new HostCallException("loading the error path", Errno.ENOENT).Message;
        _ = new ChrootException(searchPath, null, NotFoundStatus).Message;
        try
        {
            RootDirectoryCalls.ChangeRoot(RootDirectory);
            // chroot(2) leaves the working directory where it was, outside the new root; chdir("/") is what makes the
            // jail the place the command starts in, as chroot(1) does.
            RootDirectoryCalls.ChangeDirectory("/");
        }
        catch (HostCallException e) when (e.ErrorNumber == Errno.EPERM)
        {
            throw new ChrootException($"cannot chroot to {RootDirectory}: chroot(2) needs CAP_SYS_CHROOT, which this user (uid {RootDirectoryCalls.EffectiveUserId}) does not have",
                "Run it as root (sudo nestor chroot …); an unprivileged user can use a rootless container instead (nestor container run)", ChrootFailedStatus, e);
        }
        catch (HostCallException e)
        {
            throw new ChrootException($"cannot chroot to {RootDirectory}: {e.Message}", null, ChrootFailedStatus, e);
        }

        string program = Resolve(arguments[0], searchPath);
        try
        {
            RootDirectoryCalls.Execute(program, arguments, environment);
        }
        catch (HostCallException e)
        {
            bool notFound = e.ErrorNumber == Errno.ENOENT;
            throw new ChrootException(notFound
                    ? $"{arguments[0]}: not found inside {RootDirectory} (looked up as {program} after the chroot)"
                    : $"cannot run {program} inside {RootDirectory}: {e.Message}",
                notFound ? "Give a command that exists in the new root, by its path inside it (e.g. /bin/sh)"
                         : "The command must be an executable for this machine, with its interpreter and libraries inside the new root",
                notFound ? NotFoundStatus : CannotExecuteStatus, e);
        }
    }

    /// <summary>The path execve(2) gets, already inside the new root: a name with a slash as it is, a bare name
    /// through PATH (execvp(3)'s rule), or the name itself when no PATH entry has it (so that ENOENT reports it).</summary>
    private static string Resolve(string name, string searchPath)
    {
        if (name.Contains('/'))
        {
            return name;
        }
        foreach (string directory in searchPath.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return name;
    }

    private static class Errno
    {
        public const int EPERM = 1;
        public const int ENOENT = 2;
    }
}

/// <summary><c>nestor chroot</c> could not enter the directory or run the command; <see cref="ExitStatus"/> is
/// chroot(1)'s status for the failure (125, 126, 127).</summary>
public sealed class ChrootException(string message, string? advice, int exitStatus, Exception? inner = null)
    : Exception(message, inner)
{
    /// <summary>What to do about it, or null.</summary>
    public string? Advice { get; } = advice;

    public int ExitStatus { get; } = exitStatus;
}
