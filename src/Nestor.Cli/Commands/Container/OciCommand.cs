using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Nestor.Containers.Runtime;
using Nestor.Containers.Runtime.Spec;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor oci create|start|state|kill|delete|run|list|spec</c>: Nestor's own OCI runtime with runc's
/// command line (a global <c>--root</c>, ids as the last argument, <c>state</c> printing the runtime-spec's state
/// JSON), so that tools written for runc can drive it.</summary>
internal static class OciCommand
{
    public const string InitVerb = "__container-init";

    public static Command Create()
    {
        var root = new Option<string?>("--root") { Description = "State directory (default /run/nestor/runtime for root, $XDG_RUNTIME_DIR/nestor/runtime else)", Recursive = true };
        var command = new Command("oci", "Nestor's own OCI runtime (runc's command line)") { root };
        command.Subcommands.Add(CreateCommand(root));
        command.Subcommands.Add(StartCommand(root));
        command.Subcommands.Add(StateCommand(root));
        command.Subcommands.Add(KillCommand(root));
        command.Subcommands.Add(DeleteCommand(root));
        command.Subcommands.Add(RunCommand(root));
        command.Subcommands.Add(ListCommand(root));
        command.Subcommands.Add(ExecCommand(root));
        command.Subcommands.Add(SpecCommand());
        return command;
    }

    /// <summary><c>nestor __container-init …</c>: the container's init (see ContainerInit).</summary>
    public static int RunInit(string[] args) => ContainerInit.Run(args);

    private static Argument<string> IdArgument() => new("container-id") { Description = "The container's id" };

    private static Option<string> BundleOption() => new("--bundle", "-b") { Description = "The bundle directory (config.json and the root file system)", DefaultValueFactory = _ => "." };

    private static Command CreateCommand(Option<string?> root)
    {
        var id = IdArgument();
        var bundle = BundleOption();
        var pidFile = new Option<string?>("--pid-file") { Description = "Write the init's pid to this file" };
        var consoleSocket = new Option<string?>("--console-socket") { Description = "Unix socket that receives the pty master (process.terminal)" };
        var command = new Command("create", "Create a container from a bundle; its process waits for start") { id, bundle, pidFile, consoleSocket };
        command.SetAction(parse => Guard(() =>
        {
            Runtime(parse.GetValue(root)).Create(parse.GetValue(id)!, parse.GetValue(bundle)!, new RuntimeIo(ConsoleSocket: parse.GetValue(consoleSocket)), parse.GetValue(pidFile));
            return 0;
        }));
        return command;
    }

    private static Command StartCommand(Option<string?> root)
    {
        var id = IdArgument();
        var command = new Command("start", "Start the user's process of a created container") { id };
        command.SetAction(parse => Guard(() =>
        {
            Runtime(parse.GetValue(root)).Start(parse.GetValue(id)!);
            return 0;
        }));
        return command;
    }

    private static Command StateCommand(Option<string?> root)
    {
        var id = IdArgument();
        var command = new Command("state", "Print the container's state (runtime-spec state JSON)") { id };
        command.SetAction(parse => Guard(() =>
        {
            var state = Runtime(parse.GetValue(root)).State(parse.GetValue(id)!);
            Console.Out.WriteLine(JsonSerializer.Serialize(state, RuntimeSpecJson.Default.SpecState));
            return 0;
        }));
        return command;
    }

    private static Command KillCommand(Option<string?> root)
    {
        var id = IdArgument();
        var signal = new Argument<string>("signal") { Description = "Signal name (TERM, SIGKILL) or number", DefaultValueFactory = _ => "SIGTERM" };
        var all = new Option<bool>("--all", "-a") { Description = "Send the signal to every process of the container" };
        var command = new Command("kill", "Send a signal to the container's process") { id, signal, all };
        command.SetAction(parse => Guard(() =>
        {
            Runtime(parse.GetValue(root)).Kill(parse.GetValue(id)!, SignalNumber(parse.GetValue(signal)!), parse.GetValue(all));
            return 0;
        }));
        return command;
    }

    private static Command DeleteCommand(Option<string?> root)
    {
        var id = IdArgument();
        var force = new Option<bool>("--force", "-f") { Description = "Kill the container first if it runs" };
        var command = new Command("delete", "Delete a stopped container") { id, force };
        command.SetAction(parse => Guard(() =>
        {
            Runtime(parse.GetValue(root)).Delete(parse.GetValue(id)!, parse.GetValue(force));
            return 0;
        }));
        return command;
    }

    private static Command RunCommand(Option<string?> root)
    {
        var id = IdArgument();
        var bundle = BundleOption();
        var pidFile = new Option<string?>("--pid-file") { Description = "Write the init's pid to this file" };
        var consoleSocket = new Option<string?>("--console-socket") { Description = "Unix socket that receives the pty master (process.terminal)" };
        var keep = new Option<bool>("--keep") { Description = "Do not delete the container after its process exits" };
        var command = new Command("run", "Create and start a container, wait for its process and exit with its status") { id, bundle, pidFile, consoleSocket, keep };
        command.SetAction(parse => Guard(() =>
        {
            var runtime = Runtime(parse.GetValue(root));
            string name = parse.GetValue(id)!;
            runtime.Create(name, parse.GetValue(bundle)!, new RuntimeIo(ConsoleSocket: parse.GetValue(consoleSocket)), parse.GetValue(pidFile));
            int status;
            try
            {
                runtime.Start(name);
                status = runtime.WaitForExit(name);
            }
            catch
            {
                runtime.Delete(name, force: true);
                throw;
            }
            if (!parse.GetValue(keep))
            {
                runtime.Delete(name, force: true);
            }
            return status;
        }));
        return command;
    }

    private static Command ExecCommand(Option<string?> root)
    {
        var id = IdArgument();
        var program = new Argument<string[]>("command") { Description = "The program and its arguments (instead of --process)", Arity = ArgumentArity.ZeroOrMore };
        var processFile = new Option<string?>("--process", "-p") { Description = "A JSON file with the process (config.json's process object)" };
        var consoleSocket = new Option<string?>("--console-socket") { Description = "Unix socket that receives the pty master (process.terminal)" };
        var tty = new Option<bool>("--tty", "-t") { Description = "Give the program a pseudo-terminal (needs --console-socket)" };
        var command = new Command("exec", "Run another process in a running container's namespaces") { id, program, processFile, consoleSocket, tty };
        command.SetAction(parse => Guard(() =>
        {
            var runtime = Runtime(parse.GetValue(root));
            string name = parse.GetValue(id)!;
            SpecProcess process;
            if (parse.GetValue(processFile) is { } file)
            {
                process = RuntimeSpec.Parse($"{{\"process\": {File.ReadAllText(file)}}}").Process!;
            }
            else
            {
                // runc's defaults for exec: the container's own process settings with the given program.
                var state = runtime.State(name);
                process = RuntimeSpec.Load(Path.Combine(state.Bundle, "config.json")).Process ?? new SpecProcess();
                process.Args = [.. parse.GetValue(program) ?? []];
                process.Terminal = parse.GetValue(tty);
            }
            try
            {
                using var started = runtime.Exec(name, process, new RuntimeIo(ConsoleSocket: parse.GetValue(consoleSocket)));
                return started.WaitForExit();
            }
            catch (ContainerRuntimeException exception) when (ExecFailureStatus(exception.Message) is { } status)
            {
                Console.Error.WriteLine($"nestor oci: {exception.Message}");
                return status;
            }
        }));
        return command;
    }

    private static Command ListCommand(Option<string?> root)
    {
        var format = new Option<string>("--format", "-f") { Description = "table or json", DefaultValueFactory = _ => "table" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print only the ids (runc's list -q)" };
        var command = new Command("list", "List the containers") { format, quiet };
        command.SetAction(parse => Guard(() =>
        {
            var runtime = Runtime(parse.GetValue(root));
            if (parse.GetValue(quiet))
            {
                foreach (string name in runtime.List())
                {
                    Console.Out.WriteLine(name);
                }
                return 0;
            }
            var states = new List<SpecState>();
            foreach (string name in runtime.List())
            {
                try
                {
                    states.Add(runtime.State(name));
                }
                catch (ContainerRuntimeException)
                {
                    // Deleted meanwhile.
                }
            }
            if (parse.GetValue(format) == "json")
            {
                Console.Out.WriteLine("[" + string.Join(",", states.Select(s => JsonSerializer.Serialize(s, RuntimeSpecJson.Default.SpecState))) + "]");
                return 0;
            }
            Console.Out.WriteLine($"{"ID",-24} {"PID",-8} {"STATUS",-10} BUNDLE");
            foreach (var state in states)
            {
                Console.Out.WriteLine($"{state.Id,-24} {state.Pid?.ToString(CultureInfo.InvariantCulture) ?? "0",-8} {state.Status,-10} {state.Bundle}");
            }
            return 0;
        }));
        return command;
    }

    private static Command SpecCommand()
    {
        var bundle = BundleOption();
        var rootless = new Option<bool>("--rootless") { Description = "A spec for an unprivileged user: a user namespace mapping the caller to root" };
        var command = new Command("spec", "Write a config.json for a bundle (runc's spec)") { bundle, rootless };
        command.SetAction(parse => Guard(() =>
        {
            string path = Path.Combine(parse.GetValue(bundle)!, "config.json");
            if (File.Exists(path))
            {
                throw new ContainerRuntimeException($"{path} exists already; remove it first");
            }
            File.WriteAllText(path, DefaultSpec.Create("rootfs", ["sh"], new DefaultSpecOptions { Rootless = parse.GetValue(rootless) }).ToJson());
            return 0;
        }));
        return command;
    }

    private static NestorRuntime Runtime(string? root) => new(new RuntimeOptions { StateRoot = root });

    /// <summary>A signal by number or by kill(1)'s name, with or without SIG.</summary>
    internal static int SignalNumber(string text)
    {
        if (int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int number) && number is > 0 and < 65)
        {
            return number;
        }
        string name = text.ToUpperInvariant();
        name = name.StartsWith("SIG", StringComparison.Ordinal) ? name[3..] : name;
        string[] names = ["", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS"];
        int index = Array.IndexOf(names, name);
        return index > 0 ? index : throw new ContainerRuntimeException($"unknown signal '{text}' (a number, or a name such as TERM, KILL, SIGHUP)");
    }

    /// <summary>A program that could not be started gets the shell's statuses, as Docker reports them for exec: 127
    /// when it was not found, 126 when it is not executable.</summary>
    private static int? ExecFailureStatus(string message) =>
        message.Contains("executable file not found", StringComparison.Ordinal) || message.Contains("no such file or directory", StringComparison.OrdinalIgnoreCase) ? 127
        : message.Contains("permission denied", StringComparison.OrdinalIgnoreCase) || message.Contains("exec format error", StringComparison.OrdinalIgnoreCase) ? 126
        : null;

    private static int Guard(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (ContainerRuntimeException exception)
        {
            Console.Error.WriteLine($"nestor oci: {exception.Message}");
            return 1;
        }
    }
}
