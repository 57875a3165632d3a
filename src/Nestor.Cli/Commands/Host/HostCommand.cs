using System.CommandLine;

namespace Nestor.Cli.Commands.Host;

/// <summary><c>nestor host</c>: one process hosting many VMs (docs/host.md).</summary>
internal static class HostCommand
{
    public static Command Create()
    {
        var command = new Command("host", "Run many VMs in one process on one host: admission control, CPU scheduling, a control API");
        command.Subcommands.Add(HostRunCommand.Create());
        command.Subcommands.Add(HostCtlCommand.Create());
        command.Subcommands.Add(HostTopCommand.Create());
        return command;
    }
}
