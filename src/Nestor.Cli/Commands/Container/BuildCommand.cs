using System.CommandLine;
using Nestor.Containers.Build;
using Nestor.Containers.Build.Dockerfiles;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor build -t NAME[:TAG] [-f FILE] [--build-arg K=V] [--target STAGE] [--no-cache] [--network
/// bridge|host|none] [--progress plain|tty|auto] DIR</c> (also <c>nestor container build</c>): Docker's and podman's
/// build command over <see cref="ImageBuilder"/>. Exit statuses: 0 built, 1 the build failed (a bad Dockerfile, a
/// failed step: the message names the file and line), 125 the engine's own error, as <c>nestor container</c>.</summary>
internal static class BuildCommand
{
    /// <param name="underContainer">True for <c>nestor container build</c>, which inherits <c>--root</c> and
    /// <c>--state</c> from <c>container</c>; <c>nestor build</c> has its own.</param>
    public static Command Create(bool underContainer = false)
    {
        var dataRoot = underContainer ? ContainerCommand.DataRoot
            : new Option<string?>("--root") { Description = "Data directory (default /var/lib/nestor)" };
        var stateRoot = underContainer ? ContainerCommand.StateRoot
            : new Option<string?>("--state") { Description = "Run-time state directory (default /run/nestor)" };
        var context = new Argument<string>("context") { Description = "The build context: the directory COPY and ADD read from" };
        var tags = new Option<string[]>("--tag", "-t") { Description = "Name the image NAME[:TAG] (repeatable)" };
        var file = new Option<string?>("--file", "-f") { Description = "The Dockerfile (default CONTEXT/Dockerfile)" };
        var buildArgs = new Option<string[]>("--build-arg") { Description = "Set a build argument NAME=VALUE (NAME alone: from this environment)" };
        var target = new Option<string?>("--target") { Description = "Build this stage (default the last)" };
        var noCache = new Option<bool>("--no-cache") { Description = "Run every step, using no cached result" };
        var network = new Option<string?>("--network") { Description = "The network of RUN steps: bridge (default), host or none" };
        var progress = new Option<string>("--progress") { Description = "plain, tty, or auto (tty on a terminal)", DefaultValueFactory = _ => "auto" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print only the image id" };
        var command = new Command("build", "Build an image from a Dockerfile (Docker's and podman's build)")
        {
            context, tags, file, buildArgs, target, noCache, network, progress, quiet,
        };
        if (!underContainer)
        {
            command.Options.Add(dataRoot);
            command.Options.Add(stateRoot);
        }
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            var arguments = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (string pair in parse.GetValue(buildArgs) ?? [])
            {
                int equals = pair.IndexOf('=');
                if (equals > 0)
                {
                    arguments[pair[..equals]] = pair[(equals + 1)..];
                }
                else if (Environment.GetEnvironmentVariable(pair) is { } value)
                {
                    arguments[pair] = value; // docker build: --build-arg NAME takes NAME's value from the environment
                }
            }
            string mode = parse.GetValue(progress) ?? "auto";
            if (mode is not ("plain" or "tty" or "auto"))
            {
                throw new Nestor.Containers.Engine.ContainerEngineException($"--progress {mode}: choose plain, tty or auto");
            }
            bool terminal = mode == "tty" || (mode == "auto" && !Console.IsOutputRedirected);
            using var stdout = Console.OpenStandardOutput();
            IBuildProgress report = parse.GetValue(quiet) ? new QuietProgress()
                : terminal ? new TerminalBuildProgress(Console.Out) : new PlainBuildProgress(Console.Out, stdout);
            var engine = ContainerCommand.Engine(parse.GetValue(dataRoot), parse.GetValue(stateRoot));
            try
            {
                var result = new ImageBuilder(engine, report).Build(new BuildOptions
                {
                    ContextDirectory = parse.GetValue(context)!,
                    DockerfilePath = parse.GetValue(file) is { } path ? Path.GetFullPath(path) : null,
                    Tags = [.. parse.GetValue(tags) ?? []],
                    BuildArgs = arguments,
                    Target = parse.GetValue(target),
                    NoCache = parse.GetValue(noCache),
                    Network = parse.GetValue(network),
                });
                if (parse.GetValue(quiet))
                {
                    Console.WriteLine(result.Image.Id);
                }
                return 0;
            }
            catch (DockerfileException exception)
            {
                Console.Error.WriteLine($"nestor build: {exception.Message}");
                if (exception.Advice is { } advice)
                {
                    Console.Error.WriteLine($"  {advice}");
                }
                return 1;
            }
            catch (BuildException exception)
            {
                Console.Error.WriteLine($"nestor build: {exception.Message}");
                if (exception.Advice is { } advice)
                {
                    Console.Error.WriteLine($"  {advice}");
                }
                return 1;
            }
        }));
        return command;
    }

    /// <summary><c>-q</c>: nothing but the id at the end.</summary>
    private sealed class QuietProgress : IBuildProgress
    {
        public void Step(int number, int total, string instruction)
        {
        }

        public void Cached(string imageId)
        {
        }

        public void Produced(string imageId, TimeSpan elapsed)
        {
        }

        public void Output(ReadOnlySpan<byte> bytes, bool isError)
        {
        }

        public void Message(string text)
        {
        }
    }
}
