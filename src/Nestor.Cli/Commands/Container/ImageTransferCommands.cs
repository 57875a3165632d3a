using System.CommandLine;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor image pull|push|login|logout</c>: images to and from registries through the OCI distribution API. Failures
/// exit with Docker's 125 and a message that says what to do.</summary>
internal static class ImageTransferCommands
{
    public static IEnumerable<Command> Create() => [Pull(), Push(), Login(), Logout()];

    private static Option<bool> TlsVerify() => new("--tls-verify")
    {
        Description = "Require HTTPS with a trusted certificate (--tls-verify=false: also self-signed HTTPS and plain HTTP; loopback registries are plain HTTP anyway)",
        DefaultValueFactory = _ => true,
    };

    private static Option<string?> Layout() => new("--layout")
    {
        Description = "An OCI image layout directory to use instead of the local image store",
    };

    private static Option<bool> Quiet() => new("--quiet", "-q") { Description = "Print no progress lines" };

    private static Command Pull()
    {
        var reference = new Argument<string>("REFERENCE") { Description = "The image: [REGISTRY/]REPOSITORY[:TAG|@DIGEST] (docker.io/library/ when no registry)" };
        var tls = TlsVerify();
        var layout = Layout();
        var quiet = Quiet();
        var command = new Command("pull", "Download an image from a registry into the local store") { reference, tls, layout, quiet };
        command.SetAction(parse => Run(async () =>
        {
            var image = ImageReference.Parse(parse.GetValue(reference)!);
            var transfer = new ImageTransfer(Options(parse.GetValue(tls)), Progress(parse.GetValue(quiet)));
            var result = await transfer.PullAsync(image, Store(parse, parse.GetValue(layout)));
            Console.Out.WriteLine(result.ManifestDigest);
        }));
        return command;
    }

    private static Command Push()
    {
        var reference = new Argument<string>("IMAGE") { Description = "The local image to send" };
        var destination = new Argument<string?>("DESTINATION")
        {
            Description = "Where to send it: REGISTRY/REPOSITORY[:TAG] (IMAGE itself when omitted)",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var tls = TlsVerify();
        var layout = Layout();
        var quiet = Quiet();
        var command = new Command("push", "Upload an image from the local store to a registry") { reference, destination, tls, layout, quiet };
        command.SetAction(parse => Run(async () =>
        {
            string local = parse.GetValue(reference)!;
            var target = ImageReference.Parse(parse.GetValue(destination) ?? local);
            var transfer = new ImageTransfer(Options(parse.GetValue(tls)), Progress(parse.GetValue(quiet)));
            var result = await transfer.PushAsync(Store(parse, parse.GetValue(layout)), local, target);
            Console.Out.WriteLine(result.ManifestDigest);
        }));
        return command;
    }

    private static Command Login()
    {
        var registry = new Argument<string>("REGISTRY") { Description = "The registry: HOST[:PORT] (docker.io for Docker Hub)" };
        var user = new Option<string>("--username", "-u") { Description = "The user name", Required = true };
        var password = new Option<string?>("--password", "-p") { Description = "The password (visible to other users in the process list: prefer --password-stdin)" };
        var passwordStdin = new Option<bool>("--password-stdin") { Description = "Read the password from standard input" };
        var authFile = new Option<string?>("--authfile") { Description = "The credentials file (default $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json)" };
        var tls = TlsVerify();
        var command = new Command("login", "Check a user name and password against a registry and store them for pull and push")
        {
            registry, user, password, passwordStdin, authFile, tls,
        };
        command.SetAction(parse => Run(async () =>
        {
            string host = parse.GetValue(registry)!;
            string? secret = parse.GetValue(passwordStdin) ? Console.In.ReadToEnd().TrimEnd('\r', '\n') : parse.GetValue(password);
            if (string.IsNullOrEmpty(secret))
            {
                throw new RegistryException(RegistryFailure.Unauthorized, "no password: give --password-stdin (or -p PASSWORD)");
            }
            var credential = new RegistryCredential(parse.GetValue(user)!, secret);
            using var client = new RegistryClient(host, new RegistryClientOptions { TlsVerify = parse.GetValue(tls), Credential = credential });
            await client.LoginAsync();
            string file = parse.GetValue(authFile) ?? RegistryCredentialStore.DefaultLoginFile();
            RegistryCredentialStore.Save(file, host, credential);
            Console.Out.WriteLine("Login Succeeded!");
        }));
        return command;
    }

    private static Command Logout()
    {
        var registry = new Argument<string>("REGISTRY") { Description = "The registry: HOST[:PORT]" };
        var authFile = new Option<string?>("--authfile") { Description = "The credentials file (as for login)" };
        var command = new Command("logout", "Remove the stored credentials of a registry") { registry, authFile };
        command.SetAction(parse => Run(() =>
        {
            string host = parse.GetValue(registry)!;
            string file = parse.GetValue(authFile) ?? RegistryCredentialStore.DefaultLoginFile();
            if (!RegistryCredentialStore.Remove(file, host))
            {
                throw new RegistryException(RegistryFailure.Protocol, $"not logged in to {host} (no entry in {file})");
            }
            Console.Out.WriteLine($"Removed login credentials for {host}");
            return Task.CompletedTask;
        }));
        return command;
    }

    private static RegistryClientOptions Options(bool tlsVerify) =>
        new() { TlsVerify = tlsVerify, Credentials = RegistryCredentialStore.FromEnvironment() };

    private static Action<string>? Progress(bool quiet) => quiet ? null : line => Console.Error.WriteLine(line);

    /// <summary>The store pull and push use: <c>--layout DIR</c> (any OCI image layout), else the image store
    /// <c>nestor image --store</c> names (<see cref="ImageStore.DefaultRoot"/> by default).</summary>
    private static OciLayoutContentStore Store(ParseResult parse, string? layout) =>
        layout is not null ? new OciLayoutContentStore(layout) : new ImageStoreContentStore(ImageCommand.OpenStore(parse));

    /// <summary>Runs a command's body; a registry's or the store's failure prints Docker's <c>Error: …</c> and exits
    /// 125, as the other <c>nestor image</c> commands do.</summary>
    private static int Run(Func<Task> action) => ImageCommand.Guarded(() =>
    {
        try
        {
            action().GetAwaiter().GetResult();
            return 0;
        }
        catch (RegistryException e)
        {
            Console.Error.WriteLine("Error: " + e.Message);
            return ImageCommand.ErrorStatus;
        }
    });
}
