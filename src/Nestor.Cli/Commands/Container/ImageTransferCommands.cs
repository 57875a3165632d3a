using System.CommandLine;
using Nestor.Containers.Images;
using Nestor.Containers.Registry;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor image pull|push</c>: images to and from registries through the OCI distribution API. Failures
/// exit with Docker's 125 and a message that says what to do.</summary>
internal static class ImageTransferCommands
{
    /// <summary>Docker's exit status when the engine itself failed (not the container's command).</summary>
    public const int EngineFailure = 125;

    public static IEnumerable<Command> Create() => [Pull(), Push()];

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
            var result = await transfer.PullAsync(image, Store(parse.GetValue(layout)));
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
            var result = await transfer.PushAsync(Store(parse.GetValue(layout)), local, target);
            Console.Out.WriteLine(result.ManifestDigest);
        }));
        return command;
    }

    private static RegistryClientOptions Options(bool tlsVerify) =>
        new() { TlsVerify = tlsVerify, Credentials = RegistryCredentialStore.FromEnvironment() };

    private static Action<string>? Progress(bool quiet) => quiet ? null : line => Console.Error.WriteLine(line);

    /// <summary>The store pull and push use: <c>--layout DIR</c> (any OCI image layout), else the local image store
    /// (<see cref="ImageStore.DefaultRoot"/>).</summary>
    private static OciLayoutContentStore Store(string? layout) =>
        layout is not null ? new OciLayoutContentStore(layout) : new ImageStoreContentStore(ImageStore.Open());

    private static int Run(Func<Task> action)
    {
        try
        {
            action().GetAwaiter().GetResult();
            return 0;
        }
        catch (Exception e) when (e is RegistryException or ImageStoreException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"nestor: {e.Message}");
            return EngineFailure;
        }
    }
}
