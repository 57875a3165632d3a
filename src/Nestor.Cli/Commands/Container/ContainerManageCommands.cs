using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Nestor.Containers.Engine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>container stop | kill | pause | unpause | restart | rm | ps | logs | inspect | wait | top | stats | commit | export |
/// cp</c>.</summary>
internal static class ContainerManageCommands
{
    public static IEnumerable<Command> Create() =>
        [Stop(), Kill(), Pause(), Unpause(), Restart(), Remove(), List(), Logs(), Inspect(), Wait(), Top(), Stats(), Commit(), Export(), Copy()];

    private static Argument<string[]> Containers() => new("container") { Description = "Names or ids", Arity = ArgumentArity.OneOrMore };

    private static Command Stop()
    {
        var containers = Containers();
        var time = new Option<int>("--time", "-t") { Description = "Seconds to wait after the stop signal before SIGKILL", DefaultValueFactory = _ => 10 };
        var command = new Command("stop", "Stop running containers: the image's stop signal (SIGTERM), then SIGKILL") { containers, time };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            foreach (string container in parse.GetValue(containers)!)
            {
                engine.Stop(container, parse.GetValue(time));
                Console.WriteLine(container);
            }
            return 0;
        }));
        return command;
    }

    private static Command Kill()
    {
        var containers = Containers();
        var signal = new Option<string>("--signal", "-s") { Description = "Signal (name or number)", DefaultValueFactory = _ => "KILL" };
        var command = new Command("kill", "Send a signal to running containers' first process") { containers, signal };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            int number = Signals.Parse(parse.GetValue(signal)!);
            foreach (string container in parse.GetValue(containers)!)
            {
                engine.Kill(container, number);
                Console.WriteLine(container);
            }
            return 0;
        }));
        return command;
    }

    private static Command Pause() => FreezerCommand("pause", "Pause all processes within containers (cgroup freezer)", (engine, name) => engine.Pause(name));

    private static Command Unpause() => FreezerCommand("unpause", "Unpause all processes within containers", (engine, name) => engine.Unpause(name));

    /// <summary>Docker's pause and unpause: each container in turn, its name printed when done; a failure is reported
    /// and the others still tried, and the status is then 1 (the docker client's for a daemon's refusal).</summary>
    private static Command FreezerCommand(string name, string description, Action<ContainerEngine, string> action)
    {
        var containers = Containers();
        var command = new Command(name, description) { containers };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            int status = 0;
            foreach (string container in parse.GetValue(containers)!)
            {
                try
                {
                    action(engine, container);
                    Console.WriteLine(container);
                }
                catch (Exception exception) when (exception is ContainerEngineException or Nestor.Containers.Cgroups.ControlGroupException)
                {
                    Console.Error.WriteLine($"nestor: {exception.Message}");
                    status = 1;
                }
            }
            return status;
        }));
        return command;
    }

    private static Command Restart()
    {
        var containers = Containers();
        var time = new Option<int>("--time", "-t") { Description = "Seconds to wait before SIGKILL", DefaultValueFactory = _ => 10 };
        var command = new Command("restart", "Stop and start containers") { containers, time };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            foreach (string container in parse.GetValue(containers)!)
            {
                engine.Restart(container, parse.GetValue(time));
                Console.WriteLine(container);
            }
            return 0;
        }));
        return command;
    }

    private static Command Remove()
    {
        var containers = Containers();
        var force = new Option<bool>("--force", "-f") { Description = "Kill a running container first" };
        var volumes = new Option<bool>("--volumes", "-v") { Description = "Remove anonymous volumes too (there are none: binds stay)" };
        var command = new Command("rm", "Remove containers: record, root, log") { containers, force, volumes };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            int status = 0;
            foreach (string container in parse.GetValue(containers)!)
            {
                try
                {
                    engine.Remove(container, parse.GetValue(force));
                    Console.WriteLine(container);
                }
                catch (ContainerEngineException exception)
                {
                    Console.Error.WriteLine($"nestor: {exception.Message}");
                    status = ContainerCommand.EngineError;
                }
            }
            return status;
        }));
        return command;
    }

    private static Command List()
    {
        var all = new Option<bool>("--all", "-a") { Description = "Show every container (default: running ones)" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Only ids" };
        var noTrunc = new Option<bool>("--no-trunc") { Description = "Do not truncate ids and commands" };
        var command = new Command("ps", "List containers (Docker's columns)") { all, quiet, noTrunc };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            bool full = parse.GetValue(noTrunc);
            var records = engine.List().Where(record => parse.GetValue(all) || record.State.Running).Reverse().ToList();
            if (parse.GetValue(quiet))
            {
                foreach (var record in records)
                {
                    Console.WriteLine(full ? record.Id : record.Id[..12]);
                }
                return 0;
            }
            var rows = new List<string[]> { new[] { "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES" } };
            var now = DateTimeOffset.UtcNow;
            foreach (var record in records)
            {
                string commandLine = string.Join(' ', record.Config.Entrypoint.Concat(record.Config.Cmd));
                if (!full && commandLine.Length > 20)
                {
                    commandLine = commandLine[..19] + "…";
                }
                rows.Add(
                [
                    full ? record.Id : record.Id[..12],
                    record.Image,
                    $"\"{commandLine}\"",
                    $"{Ago(now - record.Created)} ago",
                    Status(record, now),
                    string.Join(", ", record.HostConfig.PortBindings.Select(p => $"{p.HostAddress}:{p.HostPort}->{p.ContainerPort}/{p.Protocol}")),
                    record.Name,
                ]);
            }
            WriteTable(rows);
            return 0;
        }));
        return command;
    }

    /// <summary>Docker's STATUS column: <c>Created</c>, <c>Up 5 seconds</c>, <c>Exited (0) 2 minutes ago</c>.</summary>
    public static string Status(ContainerRecord record, DateTimeOffset now) => record.State.Status switch
    {
        ContainerState.Running => $"Up {Ago(now - record.State.StartedAt)}",
        ContainerState.Paused => $"Up {Ago(now - record.State.StartedAt)} (Paused)",
        ContainerState.Exited => $"Exited ({record.State.ExitCode}) {Ago(now - record.State.FinishedAt)} ago",
        _ => "Created",
    };

    /// <summary>Docker's human durations: "Less than a second", "5 seconds", "About a minute", "3 minutes", "2 hours".</summary>
    public static string Ago(TimeSpan span)
    {
        double seconds = Math.Max(0, span.TotalSeconds);
        return seconds switch
        {
            < 1 => "Less than a second",
            < 60 => $"{(int)seconds} seconds",
            < 120 => "About a minute",
            < 3600 => $"{(int)(seconds / 60)} minutes",
            < 7200 => "About an hour",
            < 172800 => $"{(int)(seconds / 3600)} hours",
            _ => $"{(int)(seconds / 86400)} days",
        };
    }

    private static void WriteTable(List<string[]> rows)
    {
        int columns = rows[0].Length;
        var widths = Enumerable.Range(0, columns).Select(c => rows.Max(row => row[c].Length)).ToArray();
        var output = new StringBuilder();
        foreach (var row in rows)
        {
            for (int c = 0; c < columns; c++)
            {
                output.Append(c == columns - 1 ? row[c] : row[c].PadRight(widths[c] + 3));
            }
            output.Append('\n');
        }
        Console.Write(output.ToString());
    }

    private static Command Logs()
    {
        var container = new Argument<string>("container") { Description = "Name or id" };
        var follow = new Option<bool>("--follow", "-f") { Description = "Keep printing new output until the container ends" };
        var tail = new Option<string?>("--tail", "-n") { Description = "Only the last N lines (or all)" };
        var timestamps = new Option<bool>("--timestamps", "-t") { Description = "Show each line's time" };
        var command = new Command("logs", "Print a container's output (its json-file log)") { container, follow, tail, timestamps };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            string? tailText = parse.GetValue(tail);
            int? count = tailText is null or "all" ? null
                : int.TryParse(tailText, CultureInfo.InvariantCulture, out int n) && n >= 0 ? n
                : throw new ContainerEngineException($"bad --tail '{tailText}': give a number of lines or all");
            var record = engine.Inspect(parse.GetValue(container)!);
            bool stamps = parse.GetValue(timestamps);
            using var stdout = Console.OpenStandardOutput();
            using var stderr = Console.OpenStandardError();
            void Write(LogEntry entry)
            {
                string text = stamps ? $"{Time(entry.Time)} {entry.Text}" : entry.Text;
                var target = entry.Stream == "stderr" ? stderr : stdout;
                target.Write(Encoding.UTF8.GetBytes(text));
                target.Flush();
            }
            var entries = engine.Logs(record.Id, count);
            foreach (var entry in entries)
            {
                Write(entry);
            }
            if (parse.GetValue(follow))
            {
                Follow(engine, record.Id, Write);
            }
            return 0;
        }));
        return command;
    }

    /// <summary>Prints what is appended to the log from its current end, until the container has ended and its
    /// monitor has written the last of it.</summary>
    private static void Follow(ContainerEngine engine, string id, Action<LogEntry> write)
    {
        string path = engine.Paths.LogFile(id);
        using var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        stream.Seek(0, SeekOrigin.End);
        using var reader = new StreamReader(stream);
        var partial = new StringBuilder();
        while (true)
        {
            bool ended = engine.Store.TryLoad(id) is not { State.Running: true } && !FileLock.IsHeld(engine.Paths.MonitorLock(id));
            string chunk = reader.ReadToEnd();
            foreach (char c in chunk)
            {
                if (c == '\n')
                {
                    if (ContainerLogReader.Parse(partial.ToString()) is { } entry)
                    {
                        write(entry);
                    }
                    partial.Clear();
                }
                else
                {
                    partial.Append(c);
                }
            }
            if (ended)
            {
                return;
            }
            Thread.Sleep(100);
        }
    }

    /// <summary>RFC 3339 with nanoseconds, as Docker prints times.</summary>
    public static string Time(DateTimeOffset time) =>
        time == default ? "0001-01-01T00:00:00Z" : time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'00Z'", CultureInfo.InvariantCulture);

    private static Command Inspect()
    {
        var containers = Containers();
        var explain = new Option<bool>("--explain") { Description = "Explain a running container: namespaces, cgroup, capabilities, seccomp, mounts, layers" };
        var format = new Option<string?>("--format", "-f") { Description = "Print one value, e.g. '{{.State.Pid}}' or '{{.NetworkSettings.IPAddress}}'" };
        var command = new Command("inspect", "Show containers as Docker's JSON (or, with --explain, the mechanisms that make one)") { containers, explain, format };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            var records = parse.GetValue(containers)!.Select(engine.Inspect).ToList();
            if (parse.GetValue(explain))
            {
                foreach (var record in records)
                {
                    Console.Write(ContainerExplanation.Explain(engine, record));
                }
                return 0;
            }
            string json = ContainerInspection.ToDockerJson(engine, records);
            if (parse.GetValue(format) is { } template)
            {
                using var document = JsonDocument.Parse(json);
                foreach (var element in document.RootElement.EnumerateArray())
                {
                    Console.WriteLine(ContainerInspection.Format(element, template));
                }
                return 0;
            }
            Console.WriteLine(json);
            return 0;
        }));
        return command;
    }

    private static Command Wait()
    {
        var containers = Containers();
        var command = new Command("wait", "Wait for containers to end; print their exit statuses") { containers };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            foreach (string container in parse.GetValue(containers)!)
            {
                Console.WriteLine(engine.Wait(container));
            }
            return 0;
        }));
        return command;
    }

    private static Command Top()
    {
        var container = new Argument<string>("container") { Description = "Name or id" };
        var command = new Command("top", "The processes of a running container (host pids)") { container };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var rows = new List<string[]> { new[] { "UID", "PID", "PPID", "CMD" } };
            foreach (var (pid, parent, uid, commandLine) in ContainerCommand.Engine(parse).Top(parse.GetValue(container)!))
            {
                rows.Add([uid.ToString(CultureInfo.InvariantCulture), pid.ToString(CultureInfo.InvariantCulture), parent.ToString(CultureInfo.InvariantCulture), commandLine]);
            }
            WriteTable(rows);
            return 0;
        }));
        return command;
    }

    private static Command Stats()
    {
        var containers = new Argument<string[]>("container") { Description = "Names or ids (default: every running one)", Arity = ArgumentArity.ZeroOrMore };
        var noStream = new Option<bool>("--no-stream") { Description = "Print once and exit" };
        var command = new Command("stats", "Resource usage of running containers, from their control groups") { containers, noStream };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            var names = parse.GetValue(containers) ?? [];
            while (true)
            {
                var records = names.Length > 0 ? names.Select(engine.Inspect).ToList() : engine.List().Where(r => r.State.Running).ToList();
                var rows = new List<string[]> { new[] { "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS" } };
                var usages = ContainerUsage.Sample(records, TimeSpan.FromMilliseconds(500));
                foreach (var (record, usage) in records.Zip(usages))
                {
                    rows.Add(
                    [
                        record.Id[..12], record.Name,
                        $"{usage.CpuPercent:0.00}%",
                        $"{ContainerUsage.Bytes(usage.MemoryBytes)} / {(usage.MemoryLimitBytes is { } limit ? ContainerUsage.Bytes(limit) : "unlimited")}",
                        usage.MemoryLimitBytes is { } l && l > 0 ? $"{100.0 * usage.MemoryBytes / l:0.00}%" : "--",
                        usage.Pids.ToString(CultureInfo.InvariantCulture),
                    ]);
                }
                WriteTable(rows);
                if (parse.GetValue(noStream))
                {
                    return 0;
                }
            }
        }));
        return command;
    }

    private static Command Commit()
    {
        var container = new Argument<string>("container") { Description = "Name or id" };
        var reference = new Argument<string?>("repository") { Description = "REPOSITORY[:TAG] for the new image", Arity = ArgumentArity.ZeroOrOne };
        var message = new Option<string?>("--message", "-m") { Description = "The history entry's comment" };
        var author = new Option<string?>("--author", "-a") { Description = "The image's author (e.g. \"Name <mail@example.org>\")" };
        var change = new Option<string[]>("--change", "-c")
        {
            Description = "A Dockerfile instruction for the new image's config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME or WORKDIR (repeatable)",
            AllowMultipleArgumentsPerToken = false,
        };
        var command = new Command("commit", "Make a new image from a container's changes") { container, reference, message, author, change };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var image = ContainerCommand.Engine(parse).Commit(parse.GetValue(container)!, new CommitOptions
            {
                Reference = parse.GetValue(reference),
                Message = parse.GetValue(message),
                Author = parse.GetValue(author),
                Changes = parse.GetValue(change) ?? [],
            });
            Console.WriteLine(image.Id);
            return 0;
        }));
        return command;
    }

    private static Command Export()
    {
        var container = new Argument<string>("container") { Description = "Name or id" };
        var output = new Option<string?>("--output", "-o") { Description = "Write to this file (default: stdout)" };
        var command = new Command("export", "Write a container's root file system as a tar archive") { container, output };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            if (parse.GetValue(output) is { } file)
            {
                using var stream = File.Create(file);
                engine.Export(parse.GetValue(container)!, stream);
            }
            else
            {
                using var stream = Console.OpenStandardOutput();
                engine.Export(parse.GetValue(container)!, stream);
            }
            return 0;
        }));
        return command;
    }

    private static Command Copy()
    {
        var source = new Argument<string>("source") { Description = "CONTAINER:PATH or a host path" };
        var destination = new Argument<string>("destination") { Description = "A host path or CONTAINER:PATH" };
        var command = new Command("cp", "Copy files between a container and the host") { source, destination };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var engine = ContainerCommand.Engine(parse);
            string from = parse.GetValue(source)!, to = parse.GetValue(destination)!;
            static (string Container, string Path)? Split(string word)
            {
                int colon = word.IndexOf(':');
                return colon > 0 && !word[..colon].Contains('/') ? (word[..colon], word[(colon + 1)..]) : null;
            }
            switch (Split(from), Split(to))
            {
                case ({ } inside, null):
                    engine.Copy(inside.Container, inside.Path, to, toContainer: false);
                    break;
                case (null, { } inside):
                    engine.Copy(inside.Container, inside.Path, from, toContainer: true);
                    break;
                default:
                    throw new ContainerEngineException("cp copies between a container and the host: one side is CONTAINER:PATH, the other a host path");
            }
            return 0;
        }));
        return command;
    }
}
