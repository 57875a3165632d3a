using System.CommandLine;
using Nestor.Containers.Engine;
using Nestor.Containers.Images;
using Nestor.Containers.Network;
using Nestor.Containers.Runtime;
using Nestor.Host;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor container …</c>: the daemonless engine with Docker's command line, so that
/// <c>alias docker='nestor container'</c> works for run, create, start, stop, kill, restart, rm, ps, exec, logs,
/// attach, inspect, wait, top, stats, commit, export and cp. Exit statuses are Docker's: 125 for the engine's own
/// error (a bad flag, an unknown image, a name in use), 126 when the command cannot be invoked, 127 when it is not
/// found, else the container process's own (128 + signal when a signal ended it).</summary>
internal static class ContainerCommand
{
    public const string MonitorVerb = "__container-monitor";

    /// <summary>Docker's status for the engine's own errors.</summary>
    public const int EngineError = 125;

    /// <summary><c>--root</c>: the data directory (records, logs, images); for tests and alternative stores.</summary>
    public static readonly Option<string?> DataRoot = new("--root") { Description = "Data directory (default /var/lib/nestor, or ~/.local/share/nestor rootless)", Recursive = true };

    /// <summary><c>--state</c>: the run-time state directory (monitor locks, sockets, runtime state).</summary>
    public static readonly Option<string?> StateRoot = new("--state") { Description = "Run-time state directory (default /run/nestor, or $XDG_RUNTIME_DIR/nestor rootless)", Recursive = true };

    public static Command Create()
    {
        var command = new Command("container", "Run and manage containers (Docker's command line: alias docker='nestor container')")
        {
            DataRoot, StateRoot,
        };
        foreach (var verb in ContainerRunCommands.Create().Concat(ContainerManageCommands.Create()))
        {
            command.Subcommands.Add(verb);
        }
        command.Subcommands.Add(BuildCommand.Create(underContainer: true));
        return command;
    }

    /// <summary>Options of <c>run</c>/<c>create</c>/<c>exec</c> that take a value: the first word after the verb that
    /// is neither an option nor such a value is the image (the container, for exec), and everything from it on
    /// belongs to the container's command, options included (<c>run busybox ls -l</c>), as in Docker.</summary>
    private static readonly HashSet<string> ValueOptions =
    [
        "--name", "-e", "--env", "--env-file", "-w", "--workdir", "-u", "--user", "-p", "--publish", "-v", "--volume",
        "-m", "--memory", "--cpus", "--pids-limit", "--network", "--net", "--hostname", "--cap-add", "--cap-drop",
        "--runtime", "--entrypoint", "--root", "--state",
    ];

    /// <summary>Inserts <c>--</c> before the image of <c>container run|create</c> and the container of
    /// <c>container exec</c>, so that the words after it reach the container untouched.</summary>
    public static string[] PrepareArguments(string[] args)
    {
        if (args.Length < 2 || args[0] != "container")
        {
            return args;
        }
        int index = 1;
        while (index < args.Length && args[index] is "--root" or "--state")
        {
            index += 2;
        }
        if (index >= args.Length || args[index] is not ("run" or "create" or "exec"))
        {
            return args;
        }
        for (int i = index + 1; i < args.Length; i++)
        {
            string word = args[i];
            if (word == "--")
            {
                return args;
            }
            if (word.StartsWith('-') && word.Length > 1)
            {
                if (ValueOptions.Contains(word))
                {
                    i++;
                }
                continue;
            }
            return [.. args[..i], "--", .. args[i..]];
        }
        return args;
    }

    /// <summary>True when <paramref name="args"/> is a <c>container</c> command (its parse errors are Docker's 125).</summary>
    public static bool IsContainerCommand(string[] args) => args.Length > 0 && args[0] == "container";

    /// <summary>The engine for the directories a command line names.</summary>
    public static ContainerEngine Engine(ParseResult parse) => Engine(parse.GetValue(DataRoot), parse.GetValue(StateRoot));

    public static ContainerEngine Engine(string? dataRoot, string? stateRoot)
    {
        var paths = ContainerPaths.ForCurrentUser(dataRoot, stateRoot);
        var nestor = NestorCommand();
        var runtimes = new ContainerRuntimes(paths, nestor, Environment.GetEnvironmentVariable("NESTOR_CONTAINER_RUNTIME") ?? "nestor");
        // Root: the bridge (nestor0, shared by every engine on the machine, so its address pool is too); rootless:
        // slirp4netns, a user-space network stack.
        IContainerNetwork network = ContainerPaths.Rootless ? new SlirpNetwork() : new BridgeNetwork();
        return new ContainerEngine(paths, () => CreateImageStore(paths), runtimes, network, nestor);
    }

    /// <summary>The image store under the data directory.</summary>
    public static IImageStore CreateImageStore(ContainerPaths paths) => ImageStore.Open(paths.Images);

    /// <summary>How to run this very program again: its executable (the apphost or the NativeAOT binary), or
    /// <c>dotnet nestor.dll</c> when it runs through the dotnet host.</summary>
    public static IReadOnlyList<string> NestorCommand()
    {
        string executable = Environment.ProcessPath ?? Path.Combine(AppContext.BaseDirectory, "nestor");
        return Path.GetFileNameWithoutExtension(executable) == "dotnet"
            ? [executable, Path.Combine(AppContext.BaseDirectory, "nestor.dll")]
            : [executable];
    }

    /// <summary>Runs a verb, turning the engine's failures into a message and Docker's status 125.</summary>
    public static int Guard(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (ContainerStartException exception)
        {
            Console.Error.WriteLine($"nestor: {exception.Message}");
            return exception.Status;
        }
        catch (Exception exception) when (exception is ContainerEngineException or ContainerRuntimeException or ImageNotFoundException or ImageStoreException
            or HostCallException or IOException or UnauthorizedAccessException or System.Text.Json.JsonException)
        {
            Console.Error.WriteLine($"nestor: {exception.Message}");
            return EngineError;
        }
    }

    /// <summary>The monitor's entry: <c>nestor __container-monitor ID --root DATA --state STATE --sync-fd 3 [--attach]</c>.</summary>
    public static int RunMonitor(string[] args)
    {
        if (args.Length < 2)
        {
            return EngineError;
        }
        string id = args[1];
        string? data = null, state = null;
        int syncFd = -1;
        bool attach = false;
        for (int i = 2; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--root":
                    data = args[++i];
                    break;
                case "--state":
                    state = args[++i];
                    break;
                case "--sync-fd":
                    syncFd = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
                    break;
                case "--attach":
                    attach = true;
                    break;
            }
        }
        var engine = Engine(data, state);
        var monitor = new ContainerMonitor(engine.Store, engine.Runtimes, engine.Network, new BundleBuilder());
        return monitor.Run(id, syncFd, attach);
    }
}
