using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Nestor.Containers.Engine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>container run | create | start | attach | exec</c>: the verbs that start processes.</summary>
internal static class ContainerRunCommands
{
    public static IEnumerable<Command> Create() => [Run(), CreateCommand(), Start(), Attach(), Exec()];

    /// <summary>The flags <c>run</c> and <c>create</c> share, added to <paramref name="command"/>; the returned
    /// function reads them into <see cref="CreateOptions"/>.</summary>
    private static Func<ParseResult, CreateOptions> AddCreateOptions(Command command)
    {
        var image = new Argument<string>("image") { Description = "The image (name[:tag], or id)" };
        var words = new Argument<string[]>("command") { Description = "Command and arguments (replace the image's Cmd)", Arity = ArgumentArity.ZeroOrMore };
        var name = new Option<string?>("--name") { Description = "The container's name (default: a random adjective_surname)" };
        var env = new Option<string[]>("--env", "-e") { Description = "Set an environment variable (K=V, or K to pass the caller's)", AllowMultipleArgumentsPerToken = false };
        var envFile = new Option<string[]>("--env-file") { Description = "Read K=V lines from a file" };
        var workdir = new Option<string?>("--workdir", "-w") { Description = "Working directory inside the container" };
        var user = new Option<string?>("--user", "-u") { Description = "User: name|uid[:group|gid]" };
        var publish = new Option<string[]>("--publish", "-p") { Description = "Forward a host port: [IP:]HOST:CONTAINER[/tcp|udp]" };
        var volume = new Option<string[]>("--volume", "-v") { Description = "Bind mount: /HOST:/CONTAINER[:ro]" };
        var memory = new Option<string?>("--memory", "-m") { Description = "Memory limit (e.g. 64m)" };
        var cpus = new Option<double?>("--cpus") { Description = "CPU limit in CPUs (e.g. 0.5)" };
        var pids = new Option<long?>("--pids-limit") { Description = "Maximum number of processes" };
        var network = new Option<string?>("--network", "--net") { Description = "none (loopback only, the default here), bridge or host" };
        var hostname = new Option<string?>("--hostname") { Description = "The container's host name (default: its short id)" };
        var capAdd = new Option<string[]>("--cap-add") { Description = "Add a capability (e.g. NET_ADMIN, or ALL)" };
        var capDrop = new Option<string[]>("--cap-drop") { Description = "Drop a capability (e.g. CHOWN, or ALL)" };
        var privileged = new Option<bool>("--privileged") { Description = "Every capability, no masked paths, every device: the course's warning" };
        var readOnly = new Option<bool>("--read-only") { Description = "Mount the root file system read-only" };
        var runtime = new Option<string?>("--runtime") { Description = "OCI runtime: nestor, crun or runc" };
        var entrypoint = new Option<string?>("--entrypoint") { Description = "Replace the image's Entrypoint (\"\" clears it)" };
        var tty = new Option<bool>("--tty", "-t") { Description = "Allocate a pseudo-terminal" };
        var interactive = new Option<bool>("--interactive", "-i") { Description = "Keep stdin open" };
        var remove = new Option<bool>("--rm") { Description = "Remove the container when it ends" };
        foreach (var option in new Option[] { name, env, envFile, workdir, user, publish, volume, memory, cpus, pids, network, hostname, capAdd, capDrop, privileged, readOnly, runtime, entrypoint, tty, interactive, remove })
        {
            command.Options.Add(option);
        }
        command.Arguments.Add(image);
        command.Arguments.Add(words);
        return parse => new CreateOptions
        {
            Image = parse.GetValue(image)!,
            Command = [.. parse.GetValue(words) ?? []],
            Name = parse.GetValue(name),
            Env = [.. parse.GetValue(env) ?? []],
            EnvFiles = [.. parse.GetValue(envFile) ?? []],
            WorkingDir = parse.GetValue(workdir),
            User = parse.GetValue(user),
            Ports = [.. parse.GetValue(publish) ?? []],
            Volumes = [.. parse.GetValue(volume) ?? []],
            Memory = parse.GetValue(memory),
            Cpus = parse.GetValue(cpus),
            PidsLimit = parse.GetValue(pids),
            Network = parse.GetValue(network),
            Hostname = parse.GetValue(hostname),
            CapAdd = [.. parse.GetValue(capAdd) ?? []],
            CapDrop = [.. parse.GetValue(capDrop) ?? []],
            Privileged = parse.GetValue(privileged),
            ReadOnly = parse.GetValue(readOnly),
            Runtime = parse.GetValue(runtime),
            Entrypoint = parse.GetValue(entrypoint),
            Tty = parse.GetValue(tty),
            Interactive = parse.GetValue(interactive),
            AutoRemove = parse.GetValue(remove),
        };
    }

    private static Command Run()
    {
        var command = new Command("run", "Create and start a container from an image (in the foreground, or with -d in the background)");
        var detach = new Option<bool>("--detach", "-d") { Description = "Run in the background and print the container's id" };
        command.Options.Add(detach);
        var read = AddCreateOptions(command);
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            var options = read(parse);
            bool background = parse.GetValue(detach);
            options.StdinOnce = !background && options.Interactive;
            var record = engine.Create(options);
            if (background)
            {
                using var started = engine.Start(record.Id);
                Console.WriteLine(record.Id);
                return 0;
            }
            using var start = engine.Start(record.Id, attach: true);
            return AttachAndWait(start, options.Interactive ? AttachProtocol.InputOnce : AttachProtocol.OutputOnly);
        }));
        return command;
    }

    private static Command CreateCommand()
    {
        var command = new Command("create", "Create a container from an image without starting it; prints its id");
        var read = AddCreateOptions(command);
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var record = ContainerCommand.Engine(parse).Create(read(parse));
            Console.WriteLine(record.Id);
            return 0;
        }));
        return command;
    }

    private static Command Start()
    {
        var containers = new Argument<string[]>("container") { Description = "Name or id", Arity = ArgumentArity.OneOrMore };
        var attach = new Option<bool>("--attach", "-a") { Description = "Attach to its output and wait for its end" };
        var interactive = new Option<bool>("--interactive", "-i") { Description = "Attach stdin too" };
        var command = new Command("start", "Start created or stopped containers") { containers, attach, interactive };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            if (parse.GetValue(attach))
            {
                using var start = engine.Start(parse.GetValue(containers)![0], attach: true);
                if (start.AlreadyRunning)
                {
                    return AttachRunning(engine, start.Record, parse.GetValue(interactive));
                }
                return AttachAndWait(start, parse.GetValue(interactive) ? AttachProtocol.InputShared : AttachProtocol.OutputOnly);
            }
            foreach (string container in parse.GetValue(containers)!)
            {
                using var start = engine.Start(container);
                Console.WriteLine(container);
            }
            return 0;
        }));
        return command;
    }

    private static Command Attach()
    {
        var container = new Argument<string>("container") { Description = "Name or id" };
        var noStdin = new Option<bool>("--no-stdin") { Description = "Do not attach stdin" };
        var command = new Command("attach", "Attach this terminal's input and output to a running container") { container, noStdin };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            var record = engine.Inspect(parse.GetValue(container)!);
            if (!record.State.Running)
            {
                throw new ContainerEngineException($"cannot attach to container {record.Name}: it is not running (start it with start -a)");
            }
            return AttachRunning(engine, record, record.Config.OpenStdin && !parse.GetValue(noStdin));
        }));
        return command;
    }

    private static int AttachRunning(ContainerEngine engine, ContainerRecord record, bool input)
    {
        var socket = AttachProtocol.Connect(engine.Paths.AttachSocket(record.Id), input ? AttachProtocol.InputShared : AttachProtocol.OutputOnly)
            ?? throw new ContainerEngineException($"cannot attach to container {record.Name}: its monitor does not answer");
        return Relay(socket, input, engine, record.Id);
    }

    /// <summary>Connects to a starting container's monitor, which then starts it; relays until its end and returns
    /// its exit status (the monitor's error status when it could not start).</summary>
    private static int AttachAndWait(MonitorStart start, byte mode)
    {
        var socket = start.Attach(mode);
        int status = Relay(socket, mode != AttachProtocol.OutputOnly, start.Engine, start.Record.Id);
        try
        {
            start.WaitStarted();
        }
        catch (ContainerStartException exception)
        {
            Console.Error.WriteLine($"nestor: {exception.Message}");
            return exception.Status;
        }
        return status;
    }

    /// <summary>Copies this process's stdin to the socket (if <paramref name="input"/>) and the monitor's frames to
    /// stdout and stderr, until the exit frame; returns the status it carries.</summary>
    private static int Relay(Socket socket, bool input, ContainerEngine? engine, string id)
    {
        using var stream = new NetworkStream(socket, ownsSocket: true);
        if (input)
        {
            var forward = new Thread(() =>
            {
                using var stdin = Console.OpenStandardInput();
                var buffer = new byte[16 * 1024];
                try
                {
                    int count;
                    while ((count = stdin.Read(buffer, 0, buffer.Length)) > 0)
                    {
                        socket.Send(buffer.AsSpan(0, count));
                    }
                    socket.Shutdown(SocketShutdown.Send);
                }
                catch (Exception exception) when (exception is SocketException or ObjectDisposedException or IOException)
                {
                    // The container ended first.
                }
            })
            { IsBackground = true };
            forward.Start();
        }
        using var stdout = Console.OpenStandardOutput();
        using var stderr = Console.OpenStandardError();
        while (AttachProtocol.ReadFrame(stream) is { } frame)
        {
            switch (frame.Type)
            {
                case AttachProtocol.Stdout:
                    stdout.Write(frame.Payload);
                    stdout.Flush();
                    break;
                case AttachProtocol.Stderr:
                    stderr.Write(frame.Payload);
                    stderr.Flush();
                    break;
                case AttachProtocol.Exit:
                    return int.Parse(Encoding.ASCII.GetString(frame.Payload), CultureInfo.InvariantCulture);
            }
        }
        // The monitor went away without a word (killed): the record says what is known.
        var record = engine?.Store.TryLoad(id);
        return record?.State.ExitCode ?? ContainerCommand.EngineError;
    }

    private static Command Exec()
    {
        var container = new Argument<string>("container") { Description = "Name or id" };
        var words = new Argument<string[]>("command") { Description = "Command and arguments", Arity = ArgumentArity.OneOrMore };
        var interactive = new Option<bool>("--interactive", "-i") { Description = "Keep stdin open" };
        var tty = new Option<bool>("--tty", "-t") { Description = "Allocate a pseudo-terminal in the container for the process" };
        var env = new Option<string[]>("--env", "-e") { Description = "Set an environment variable" };
        var workdir = new Option<string?>("--workdir", "-w") { Description = "Working directory" };
        var user = new Option<string?>("--user", "-u") { Description = "User: name|uid[:group|gid]" };
        var detach = new Option<bool>("--detach", "-d") { Description = "Run in the background" };
        var command = new Command("exec", "Run a command in a running container") { container, words, interactive, tty, env, workdir, user, detach };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            var options = new ExecOptions
            {
                Command = [.. parse.GetValue(words)!],
                Env = [.. parse.GetValue(env) ?? []],
                WorkingDir = parse.GetValue(workdir),
                User = parse.GetValue(user),
                Interactive = parse.GetValue(interactive),
                Tty = parse.GetValue(tty),
            };
            return engine.RunExec(parse.GetValue(container)!, options, parse.GetValue(detach));
        }));
        return command;
    }
}
