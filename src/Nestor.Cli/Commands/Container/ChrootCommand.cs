using System.CommandLine;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor chroot</c>: placeholder.</summary>
internal static class ChrootCommand
{
    public static Command Create() => new("chroot", "Run a command with another root directory (chroot(2))");
}
