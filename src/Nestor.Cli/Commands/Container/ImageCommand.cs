using System.CommandLine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor image …</c>: placeholder until the image store lands. Includes
/// <see cref="ImageTransferCommands"/> (pull, push).</summary>
internal static class ImageCommand
{
    public static Command Create()
    {
        var command = new Command("image", "Manage container images in the local store");
        foreach (var c in ImageTransferCommands.Create())
        {
            command.Subcommands.Add(c);
        }
        return command;
    }
}
