using System.CommandLine;
using Nestor.Cli.Commands;
using Nestor.Cli.Output;

namespace Nestor.Cli;

/// <summary>Entry point of the <c>nestor</c> command.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("Nestor: a virtualization platform to run, see and measure virtual machines.")
        {
            RunCommand.Create(),
            InfoCommand.Create(),
            BenchCommand.Create(),
            WalkCommand.Create(),
        };
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var error in parse.Errors)
            {
                Console.Error.WriteLine($"nestor: {error.Message}");
            }
            Console.Error.WriteLine("Run 'nestor --help' or 'nestor run --help' for the options.");
            return ExitStatus.BadInput;
        }
        return parse.Invoke();
    }
}
