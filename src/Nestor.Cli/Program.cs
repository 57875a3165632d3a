using System.CommandLine;
using Nestor.Cli.Commands;
using Nestor.Cli.Commands.Container;
using Nestor.Cli.Output;

namespace Nestor.Cli;

/// <summary>Entry point of the <c>nestor</c> command.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (ContainerCommands.RunInternal(args) is { } internalStatus)
        {
            return internalStatus;
        }
        args = ContainerCommand.PrepareArguments(args);
        var parse = CreateRoot().Parse(args, ParserConfiguration);
        if (parse.Errors.Count > 0)
        {
            foreach (var error in parse.Errors)
            {
                Console.Error.WriteLine($"nestor: {error.Message}");
            }
            var command = parse.CommandResult.Command;
            Console.Error.WriteLine(command is RootCommand
                ? "Run 'nestor --help' for the commands."
                : $"Run 'nestor {command.Name} --help' for its options.");
            // Docker's status for its own errors (a bad flag among them) is 125, which scripts written for docker test.
            return ContainerCommand.IsContainerCommand(args) ? ContainerCommand.EngineError : ExitStatus.BadInput;
        }
        return parse.Invoke();
    }

    /// <summary>How the command line is read. No response files: System.CommandLine would otherwise replace an
    /// argument beginning with @ by the contents of the file it names, undocumented and echoing that file in its
    /// errors, and a kernel whose path begins with @ could not be named.</summary>
    internal static ParserConfiguration ParserConfiguration { get; } = new() { ResponseFileTokenReplacer = null };

    /// <summary>The command tree: <c>nestor run | info | bench | walk | container | image | oci | chroot</c>.</summary>
    internal static RootCommand CreateRoot()
    {
        var root = new RootCommand("Nestor: a virtualization platform to run, see and measure virtual machines and containers.")
        {
            RunCommand.Create(),
            SnapshotCommand.Create(),
            InfoCommand.Create(),
            BenchCommand.Create(),
            WalkCommand.Create(),
            Commands.Host.HostCommand.Create(),
            MigrateCommand.Create(),
        };
        foreach (var command in ContainerCommands.Create())
        {
            root.Subcommands.Add(command);
        }
        return root;
    }
}
