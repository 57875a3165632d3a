using System.CommandLine;
using System.CommandLine.Parsing;
using Microsoft.Win32.SafeHandles;
using Nestor.Containers.Chroot;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor chroot DIR [COMMAND [ARG…]]</c>: chroot(1) as the course shows it — chroot(2) to DIR,
/// chdir("/"), execve(2) of the command (default /bin/sh). Not a container (see <see cref="ChrootJail"/>).</summary>
internal static class ChrootCommand
{
    public static Command Create()
    {
        var directory = new Argument<string>("directory") { Description = "The directory that becomes /" };
        var commandLine = new Argument<string[]>("command")
        {
            Description = "The command to run inside it, with its arguments (default /bin/sh)",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var command = new Command("chroot", "Run a command with another root directory (chroot(2)); as root. Not isolation: a root process can leave it")
        {
            directory, commandLine,
        };
        // Everything after DIR belongs to the command, options included (nestor chroot DIR ls -l): they are not
        // nestor's, so they are taken in order from the tokens rather than parsed.
        command.TreatUnmatchedTokensAsErrors = false;
        command.SetAction(parse =>
        {
            var tokens = parse.Tokens.SkipWhile(token => !(token.Type == TokenType.Command && token.Value == "chroot")).Skip(1)
                .Where((token, index) => !(index == 0 && token.Type == TokenType.DoubleDash))
                .Select(token => token.Value).ToList();
            // The error stream is a plain file stream on descriptor 2, opened before the chroot: System.Console
            // initializes itself on its first write and, under the JIT, would look for its assemblies inside the new
            // root by then.
            using var errors = new StreamWriter(new FileStream(new SafeFileHandle(2, ownsHandle: false), FileAccess.Write, 1));
            try
            {
                new ChrootJail(tokens[0]).Execute(tokens.Skip(1).ToList());
                return ChrootJail.ChrootFailedStatus; // Execute returns only by throwing
            }
            catch (ChrootException e)
            {
                errors.WriteLine($"nestor: {e.Message}");
                if (e.Advice is not null)
                {
                    errors.WriteLine($"  what to do: {e.Advice}");
                }
                return e.ExitStatus;
            }
        });
        return command;
    }
}
