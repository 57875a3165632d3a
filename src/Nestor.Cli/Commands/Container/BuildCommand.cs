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
        // The context may be taken by a bare --pull (System.CommandLine gives an optional value the next word): see
        // PullPolicyOf, which hands it back.
        var context = new Argument<string?>("context") { Description = "The build context: the directory COPY and ADD read from", Arity = ArgumentArity.ZeroOrOne };
        var tags = new Option<string[]>("--tag", "-t") { Description = "Name the image NAME[:TAG] (repeatable)" };
        var file = new Option<string?>("--file", "-f") { Description = "The Dockerfile (default CONTEXT/Dockerfile)" };
        var buildArgs = new Option<string[]>("--build-arg") { Description = "Set a build argument NAME=VALUE (NAME alone: from this environment)" };
        var target = new Option<string?>("--target") { Description = "Build this stage (default the last)" };
        var noCache = new Option<bool>("--no-cache") { Description = "Run every step, using no cached result" };
        var network = new Option<string?>("--network") { Description = "The network of RUN steps: bridge (default), host or none" };
        var progress = new Option<string>("--progress") { Description = "plain, tty, or auto (tty on a terminal)", DefaultValueFactory = _ => "auto" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print only the image id" };
        var pull = new Option<string?>("--pull")
        {
            Description = "Pull the FROM images: --pull (always), --pull=missing (default: only what the store lacks), --pull=never",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var tlsVerify = new Option<bool>("--tls-verify")
        {
            Description = "Require HTTPS with a trusted certificate for pulls (false: also self-signed HTTPS and plain HTTP)",
            DefaultValueFactory = _ => true,
        };
        var secrets = new Option<string[]>("--secret") { Description = "A secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VARIABLE (repeatable)" };
        var ssh = new Option<string[]>("--ssh") { Description = "An SSH agent for RUN --mount=type=ssh: ID=SOCKET, or default ($SSH_AUTH_SOCK) (repeatable)" };
        var command = new Command("build", "Build an image from a Dockerfile (Docker's and podman's build)")
        {
            context, tags, file, buildArgs, target, noCache, network, progress, quiet, pull, tlsVerify, secrets, ssh,
        };
        if (!underContainer)
        {
            // Recursive: 'nestor build --root DIR prune' and 'nestor build prune --root DIR' both name the store.
            dataRoot.Recursive = true;
            stateRoot.Recursive = true;
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
            var (policy, contextDirectory) = PullPolicyOf(parse.GetResult(pull) is not null, parse.GetValue(pull), parse.GetValue(context));
            var engine = ContainerCommand.Engine(parse.GetValue(dataRoot), parse.GetValue(stateRoot));
            try
            {
                var secretsById = new Dictionary<string, BuildSecret>(StringComparer.Ordinal);
                foreach (string text in parse.GetValue(secrets) ?? [])
                {
                    var secret = BuildSecret.Parse(text);
                    secretsById[secret.Id] = secret;
                }
                var result = new ImageBuilder(engine, report).Build(new BuildOptions
                {
                    ContextDirectory = contextDirectory,
                    DockerfilePath = parse.GetValue(file) is { } path ? Path.GetFullPath(path) : null,
                    Tags = [.. parse.GetValue(tags) ?? []],
                    BuildArgs = arguments,
                    Target = parse.GetValue(target),
                    NoCache = parse.GetValue(noCache),
                    Network = parse.GetValue(network),
                    Pull = policy,
                    TlsVerify = parse.GetValue(tlsVerify),
                    Secrets = secretsById,
                    SshAgents = SshAgents(parse.GetValue(ssh) ?? []),
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
        command.Subcommands.Add(Prune(dataRoot, stateRoot));
        return command;
    }

    /// <summary><c>nestor build prune [--filter until=DURATION] [--keep-storage SIZE] [-f]</c>: docker's
    /// <c>builder prune</c> over <see cref="BuildCache.Prune"/>; prints what went and the space reclaimed, measured.</summary>
    private static Command Prune(Option<string?> dataRoot, Option<string?> stateRoot)
    {
        var filters = new Option<string[]>("--filter") { Description = "until=DURATION: remove only entries unused for that long (e.g. 24h, 90m)" };
        var keepStorage = new Option<string?>("--keep-storage") { Description = "Then remove the least recently used entries until the cache holds at most SIZE (e.g. 512mb)" };
        var force = new Option<bool>("--force", "-f") { Description = "Do not ask (nestor never asks; accepted for docker's command line)" };
        var command = new Command("prune", "Remove build cache entries and the layers only they keep (docker builder prune)")
        {
            filters, keepStorage, force,
        };
        command.SetAction(parse => ContainerCommand.Guard(() =>
        {
            TimeSpan? until = null;
            foreach (string filter in parse.GetValue(filters) ?? [])
            {
                int equals = filter.IndexOf('=');
                string key = equals > 0 ? filter[..equals] : filter;
                if (key != "until" || Nestor.Containers.Build.Dockerfiles.GoDuration.TryParse(filter[(equals + 1)..]) is not { } duration)
                {
                    throw new Nestor.Containers.Engine.ContainerEngineException($"--filter {filter}: give until=DURATION, a Go duration such as 24h or 90m");
                }
                until = duration;
            }
            long? keep = null;
            try
            {
                keep = parse.GetValue(keepStorage) is { } size ? BuildCache.ParseSize(size) : null;
            }
            catch (BuildException exception)
            {
                throw new Nestor.Containers.Engine.ContainerEngineException($"--keep-storage {exception.Message}: {exception.Advice}");
            }
            var engine = ContainerCommand.Engine(parse.GetValue(dataRoot), parse.GetValue(stateRoot));
            var store = engine.Images as Nestor.Containers.Images.ImageStore
                ?? throw new Nestor.Containers.Engine.ContainerEngineException("nestor build prune needs the local image store");
            var result = new BuildCache(store).Prune(until, keep);
            Console.WriteLine($"Deleted build cache entries: {result.EntriesRemoved} (kept {result.EntriesKept}, holding {FormatBytes(result.BytesKept)})");
            Console.WriteLine($"Total reclaimed space: {FormatBytes(result.BytesReclaimed)}");
            return 0;
        }));
        return command;
    }

    /// <summary>Bytes as docker's units.HumanSize writes them (decimal units, four significant digits).</summary>
    private static string FormatBytes(long bytes)
    {
        string[] units = ["B", "kB", "MB", "GB", "TB"];
        double value = bytes;
        int unit = 0;
        while (Math.Abs(value) >= 1000 && unit < units.Length - 1)
        {
            value /= 1000;
            unit++;
        }
        return value.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture) + units[unit];
    }

    /// <summary>The pull policy and the context directory. <c>--pull</c> alone is docker's (always);
    /// <c>--pull=always|true</c>, <c>missing|false</c> and <c>never</c> are podman's. A bare <c>--pull</c> before the
    /// context takes the context as its value, so a word that is no policy is the context back.</summary>
    private static (PullPolicy Policy, string Context) PullPolicyOf(bool given, string? value, string? context)
    {
        PullPolicy policy = PullPolicy.Missing;
        if (given)
        {
            switch (value?.ToLowerInvariant())
            {
                case null or "always" or "true":
                    policy = PullPolicy.Always;
                    break;
                case "missing" or "false" or "ifmissing":
                    policy = PullPolicy.Missing;
                    break;
                case "never":
                    policy = PullPolicy.Never;
                    break;
                default:
                    if (context is not null)
                    {
                        throw new Nestor.Containers.Engine.ContainerEngineException($"--pull={value}: choose always, missing or never");
                    }
                    (policy, context) = (PullPolicy.Always, value);
                    break;
            }
        }
        return context is null
            ? throw new Nestor.Containers.Engine.ContainerEngineException("no build context: give the directory the Dockerfile copies from, e.g. 'nestor build -t NAME .'")
            : (policy, context);
    }

    /// <summary><c>--ssh ID=SOCKET</c>, or docker's <c>--ssh ID</c> alone for the caller's <c>$SSH_AUTH_SOCK</c>.</summary>
    private static Dictionary<string, string> SshAgents(IEnumerable<string> values)
    {
        var agents = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string value in values)
        {
            int equals = value.IndexOf('=');
            string id = equals < 0 ? value : value[..equals];
            string? socket = equals < 0 ? Environment.GetEnvironmentVariable("SSH_AUTH_SOCK") : value[(equals + 1)..];
            if (id.Length == 0 || string.IsNullOrEmpty(socket))
            {
                throw new BuildException($"--ssh {value}: no agent socket", "give --ssh default=$SSH_AUTH_SOCK (start an agent with eval $(ssh-agent) first)");
            }
            if (socket.Contains(','))
            {
                throw new BuildException($"--ssh {value}: nestor build forwards one agent socket per id, not key files", "give the socket of an ssh-agent holding the keys (ssh-add them)");
            }
            agents[id] = Path.GetFullPath(socket);
        }
        return agents;
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
