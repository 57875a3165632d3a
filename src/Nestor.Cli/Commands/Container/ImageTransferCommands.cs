using System.CommandLine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor image pull|push</c>: placeholder until the registry client lands.</summary>
internal static class ImageTransferCommands
{
    public static IEnumerable<Command> Create() => [];
}
