using System.CommandLine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor container …</c>: placeholder until the engine lands.</summary>
internal static class ContainerCommand
{
    public const string MonitorVerb = "__container-monitor";

    public static Command Create() => new("container", "Run and manage containers (Docker's command line)");

    public static int RunMonitor(string[] args) => 125;
}
