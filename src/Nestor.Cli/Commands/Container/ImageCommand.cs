using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Nestor.Containers.Images;

namespace Nestor.Cli.Commands.Container;

/// <summary><c>nestor image …</c>: the local image store with Docker's command line (<c>docker image</c>): import, load,
/// save, ls, rm, tag, inspect, history, and bootstrap of base images made here. Includes
/// <see cref="ImageTransferCommands"/> (pull, push). Errors print <c>Error: …</c> on standard error and exit 125, as
/// Docker's do.</summary>
internal static class ImageCommand
{
    /// <summary>Docker's exit status for an error of the command itself.</summary>
    public const int ErrorStatus = 125;

    /// <summary>The name of the option every <c>nestor image</c> subcommand takes for the store's directory.</summary>
    public const string StoreOptionName = "--store";

    public static Command Create()
    {
        var store = new Option<string?>(StoreOptionName)
        {
            Description = "The image store's directory (default /var/lib/nestor/images for root, $XDG_DATA_HOME/nestor/images otherwise)",
            Recursive = true,
        };
        var command = new Command("image", "Manage container images in the local store") { store };
        command.Subcommands.Add(CreateImport());
        command.Subcommands.Add(CreateLoad());
        command.Subcommands.Add(CreateSave());
        command.Subcommands.Add(CreateList());
        command.Subcommands.Add(CreateRemove());
        command.Subcommands.Add(CreateTag());
        command.Subcommands.Add(CreateInspect());
        command.Subcommands.Add(CreateHistory());
        command.Subcommands.Add(CreateBootstrap());
        foreach (var c in ImageTransferCommands.Create())
        {
            command.Subcommands.Add(c);
        }
        return command;
    }

    /// <summary>The store a <c>nestor image</c> command line names with <c>--store</c> (or the default one).</summary>
    public static ImageStore OpenStore(ParseResult parse) => ImageStore.Open(parse.GetValue<string?>(StoreOptionName));

    /// <summary>Runs a subcommand's body, turning the store's errors into Docker's <c>Error: …</c> and status 125.</summary>
    public static int Guarded(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (e is ImageStoreException or ImageNotFoundException or Nestor.Containers.Storage.LayerException
            or IOException or UnauthorizedAccessException or Nestor.Host.HostCallException or JsonException)
        {
            Console.Error.WriteLine("Error: " + e.Message);
            return ErrorStatus;
        }
    }

    private static Command CreateImport()
    {
        var file = new Argument<string>("FILE") { Description = "A root file system tarball (tar or tar.gz), a directory, or - for standard input" };
        var reference = new Argument<string?>("REFERENCE") { Description = "The name to give the image, e.g. myimage:1", Arity = ArgumentArity.ZeroOrOne };
        var message = new Option<string?>("--message", "-m") { Description = "Comment of the image's history entry" };
        var command = new Command("import", "Make an image from a root file system tarball (docker import)") { file, reference, message };
        command.SetAction(parse => Guarded(() =>
        {
            var store = OpenStore(parse);
            string path = parse.GetValue(file)!;
            var image = path == "-"
                ? store.ImportRootFileSystem(Console.OpenStandardInput(), parse.GetValue(reference), comment: parse.GetValue(message))
                : store.ImportRootFileSystem(path, parse.GetValue(reference), comment: parse.GetValue(message));
            Console.WriteLine(image.Id);
            return 0;
        }));
        return command;
    }

    private static Command CreateLoad()
    {
        var input = new Option<string?>("--input", "-i") { Description = "Read from this tar archive (docker-archive or oci-archive, optionally gzip) instead of standard input" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print nothing" };
        var command = new Command("load", "Load images from a tar archive (docker load)") { input, quiet };
        command.SetAction(parse => Guarded(() =>
        {
            var store = OpenStore(parse);
            string? path = parse.GetValue(input);
            using var stream = path is null or "-" ? Console.OpenStandardInput() : File.OpenRead(path);
            foreach (var (image, name) in ImageArchive.Load(store, stream))
            {
                if (!parse.GetValue(quiet))
                {
                    Console.WriteLine(name is null ? $"Loaded image ID: {image.Id}" : $"Loaded image: {name}");
                }
            }
            return 0;
        }));
        return command;
    }

    private static Command CreateSave()
    {
        var output = new Option<string?>("--output", "-o") { Description = "Write to this file instead of standard output" };
        var format = new Option<string>("--format") { Description = "docker-archive (docker save's, the default) or oci-archive (an OCI image layout)", DefaultValueFactory = _ => "docker-archive" };
        var references = new Argument<string[]>("IMAGE") { Description = "Images to save, by name or id", Arity = ArgumentArity.OneOrMore };
        var command = new Command("save", "Save images to a tar archive (docker save)") { output, format, references };
        command.SetAction(parse => Guarded(() =>
        {
            var store = OpenStore(parse);
            var archiveFormat = parse.GetValue(format) switch
            {
                "docker-archive" or "docker" => ImageArchiveFormat.DockerArchive,
                "oci-archive" or "oci" => ImageArchiveFormat.OciArchive,
                var other => throw new ImageStoreException($"unknown --format '{other}': use docker-archive or oci-archive"),
            };
            string? path = parse.GetValue(output);
            if (path is null && !Console.IsOutputRedirected)
            {
                throw new ImageStoreException("cowardly refusing to write an archive to a terminal: give -o FILE or redirect standard output");
            }
            if (path is null)
            {
                using var stdout = Console.OpenStandardOutput();
                ImageArchive.Save(store, parse.GetValue(references)!, stdout, archiveFormat);
                return 0;
            }
            // Written beside the target and renamed, so a failed save leaves no partial archive.
            string temporary = path + ".partial-" + Guid.NewGuid().ToString("N")[..8];
            try
            {
                using (var file = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write))
                {
                    ImageArchive.Save(store, parse.GetValue(references)!, file, archiveFormat);
                }
                File.Move(temporary, path, overwrite: true);
            }
            finally
            {
                File.Delete(temporary);
            }
            return 0;
        }));
        return command;
    }

    private static Command CreateList()
    {
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Print image ids only" };
        var noTruncate = new Option<bool>("--no-trunc") { Description = "Print whole image ids" };
        var command = new Command("ls", "List images (docker image ls)") { quiet, noTruncate };
        command.Aliases.Add("list");
        command.SetAction(parse => Guarded(() =>
        {
            var images = OpenStore(parse).List();
            bool full = parse.GetValue(noTruncate);
            if (parse.GetValue(quiet))
            {
                foreach (var id in images.Select(i => ShortId(i.Id, full)).Distinct())
                {
                    Console.WriteLine(id);
                }
                return 0;
            }
            var rows = new List<string[]> { new[] { "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE" } };
            var now = DateTimeOffset.UtcNow;
            foreach (var image in images)
            {
                var names = image.References.Count == 0 ? [(Repository: "<none>", Tag: "<none>")]
                    : image.References.Select(r => ImageReference.Parse(r)).Select(r => (Repository: r.FamiliarRepository, Tag: r.Tag ?? "<none>")).ToList();
                foreach (var (repository, tag) in names)
                {
                    rows.Add([repository, tag, ShortId(image.Id, full), HumanDuration(now - image.Created) + " ago", HumanSize(image.Size)]);
                }
            }
            WriteTable(rows);
            return 0;
        }));
        return command;
    }

    private static Command CreateRemove()
    {
        var force = new Option<bool>("--force", "-f") { Description = "Remove an image even when several names refer to it" };
        var references = new Argument<string[]>("IMAGE") { Arity = ArgumentArity.OneOrMore };
        var command = new Command("rm", "Remove images (docker rmi): untags a name, deletes the image when no name is left") { force, references };
        command.Aliases.Add("rmi");
        command.SetAction(parse =>
        {
            var store = OpenStore(parse);
            int status = 0;
            foreach (var reference in parse.GetValue(references)!)
            {
                int one = Guarded(() =>
                {
                    foreach (var line in store.Remove(reference, parse.GetValue(force)))
                    {
                        Console.WriteLine(line);
                    }
                    return 0;
                });
                status = Math.Max(status, one);
            }
            return status;
        });
        return command;
    }

    private static Command CreateTag()
    {
        var source = new Argument<string>("SOURCE_IMAGE");
        var target = new Argument<string>("TARGET_IMAGE");
        var command = new Command("tag", "Give an image another name (docker tag)") { source, target };
        command.SetAction(parse => Guarded(() =>
        {
            OpenStore(parse).Tag(parse.GetValue(source)!, parse.GetValue(target)!);
            return 0;
        }));
        return command;
    }

    private static Command CreateInspect()
    {
        var references = new Argument<string[]>("IMAGE") { Arity = ArgumentArity.OneOrMore };
        var command = new Command("inspect", "Print images' details as JSON (docker image inspect)") { references };
        command.SetAction(parse => Guarded(() =>
        {
            var store = OpenStore(parse);
            var images = parse.GetValue(references)!.Select(store.Resolve).ToList();
            using var stdout = Console.OpenStandardOutput();
            using (var writer = new Utf8JsonWriter(stdout, new JsonWriterOptions { Indented = true }))
            {
                writer.WriteStartArray();
                foreach (var image in images)
                {
                    WriteInspect(writer, store, image);
                }
                writer.WriteEndArray();
            }
            stdout.Write("\n"u8);
            return 0;
        }));
        return command;
    }

    /// <summary>One image as <c>docker image inspect</c> shows it (Id, RepoTags, RepoDigests, Created, Config,
    /// Architecture, Os, Size, RootFS, and the config's History).</summary>
    internal static void WriteInspect(Utf8JsonWriter writer, ImageStore store, StoredImage image)
    {
        var configuration = store.ReadConfiguration(image);
        writer.WriteStartObject();
        writer.WriteString("Id", image.Id);
        writer.WriteStartArray("RepoTags");
        foreach (var name in image.References)
        {
            writer.WriteStringValue(name);
        }
        writer.WriteEndArray();
        writer.WriteStartArray("RepoDigests");
        writer.WriteEndArray();
        writer.WriteString("ManifestDigest", image.ManifestDigest);
        writer.WriteString("Comment", configuration.History?.LastOrDefault()?.Comment ?? "");
        writer.WriteString("Created", image.Created.ToString("yyyy-MM-ddTHH:mm:ss.FFFFFFFZ", CultureInfo.InvariantCulture));
        writer.WriteString("Author", configuration.Author ?? "");
        writer.WritePropertyName("Config");
        JsonSerializer.Serialize(writer, image.Config, OciJson.Default.ImageConfig);
        writer.WriteString("Architecture", configuration.Architecture);
        writer.WriteString("Os", configuration.Os);
        writer.WriteNumber("Size", image.Size);
        writer.WriteStartObject("RootFS");
        writer.WriteString("Type", configuration.RootFileSystem.Type);
        writer.WriteStartArray("Layers");
        foreach (var layer in image.LayerDiffIds)
        {
            writer.WriteStringValue(layer);
        }
        writer.WriteEndArray();
        writer.WriteEndObject();
        writer.WriteStartArray("History");
        foreach (var entry in configuration.History ?? [])
        {
            writer.WriteStartObject();
            if (entry.Created is { } created)
            {
                writer.WriteString("Created", created.ToString("yyyy-MM-ddTHH:mm:ss.FFFFFFFZ", CultureInfo.InvariantCulture));
            }
            writer.WriteString("CreatedBy", entry.CreatedBy ?? "");
            writer.WriteString("Comment", entry.Comment ?? "");
            writer.WriteBoolean("EmptyLayer", entry.EmptyLayer ?? false);
            writer.WriteEndObject();
        }
        writer.WriteEndArray();
        writer.WriteEndObject();
    }

    private static Command CreateHistory()
    {
        var reference = new Argument<string>("IMAGE");
        var noTruncate = new Option<bool>("--no-trunc") { Description = "Do not shorten CREATED BY" };
        var command = new Command("history", "Show an image's history (docker history)") { reference, noTruncate };
        command.SetAction(parse => Guarded(() =>
        {
            var store = OpenStore(parse);
            var image = store.Resolve(parse.GetValue(reference)!);
            var configuration = store.ReadConfiguration(image);
            var manifest = store.ReadManifest(image.ManifestDigest);
            var rows = new List<string[]> { new[] { "IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT" } };
            var now = DateTimeOffset.UtcNow;
            // History entries pair with layers in order, skipping the empty ones (image-spec config.md, "history").
            var sizes = new List<long>();
            int layer = 0;
            var history = configuration.History ?? [];
            foreach (var entry in history)
            {
                sizes.Add(entry.EmptyLayer == true || layer >= manifest.Layers.Count ? 0 : manifest.Layers[layer++].Size);
            }
            for (int i = history.Count - 1; i >= 0; i--)
            {
                string createdBy = history[i].CreatedBy ?? "";
                if (!parse.GetValue(noTruncate) && createdBy.Length > 45)
                {
                    createdBy = createdBy[..44] + "…";
                }
                rows.Add([i == history.Count - 1 ? ShortId(image.Id, false) : "<missing>",
                    history[i].Created is { } c ? HumanDuration(now - c) + " ago" : "",
                    createdBy, HumanSize(sizes[i]), history[i].Comment ?? ""]);
            }
            WriteTable(rows);
            return 0;
        }));
        return command;
    }

    private static Command CreateBootstrap()
    {
        var reference = new Argument<string>("IMAGE") { Description = "busybox[:TAG] (from /bin/busybox of busybox-static) or debian:SUITE (debootstrap --variant=minbase)" };
        var mirror = new Option<string?>("--mirror") { Description = "Debian mirror for debian:SUITE (default: the one apt is configured with)" };
        var busybox = new Option<string>("--busybox") { Description = "The static busybox binary for busybox", DefaultValueFactory = _ => "/bin/busybox" };
        var command = new Command("bootstrap", "Make a base image on this machine: busybox or debian:SUITE") { reference, mirror, busybox };
        command.SetAction(parse => Guarded(() =>
        {
            var store = OpenStore(parse);
            var parsed = ImageReference.Parse(parse.GetValue(reference)!);
            StoredImage image = parsed.FamiliarRepository switch
            {
                "busybox" => ImageBootstrap.Busybox(store, parsed.FamiliarName, parse.GetValue(busybox)!),
                "debian" => ImageBootstrap.Debian(store, parsed.Tag is null or "latest" ? "bookworm" : parsed.Tag, parsed.FamiliarName,
                    parse.GetValue(mirror), Console.Error),
                _ => throw new ImageStoreException($"bootstrap makes busybox[:TAG] or debian:SUITE, not '{parsed.FamiliarName}'"),
            };
            Console.WriteLine(image.Id);
            return 0;
        }));
        return command;
    }

    private static string ShortId(string id, bool full) => full ? id : id[7..19];

    /// <summary>Docker's table layout (text/tabwriter, padding 3).</summary>
    private static void WriteTable(List<string[]> rows)
    {
        int columns = rows[0].Length;
        var widths = Enumerable.Range(0, columns).Select(c => rows.Max(r => r[c].Length)).ToArray();
        foreach (var row in rows)
        {
            var line = string.Concat(row.Select((cell, c) => c == columns - 1 ? cell : cell.PadRight(widths[c] + 3)));
            Console.WriteLine(line.TrimEnd());
        }
    }

    /// <summary>Docker's sizes (go-units HumanSize): decimal units, three significant digits: 4.26MB.</summary>
    internal static string HumanSize(long bytes)
    {
        string[] units = ["B", "kB", "MB", "GB", "TB", "PB"];
        double size = bytes;
        int unit = 0;
        while (size >= 1000 && unit < units.Length - 1)
        {
            size /= 1000;
            unit++;
        }
        return size.ToString("G3", CultureInfo.InvariantCulture) + units[unit];
    }

    /// <summary>Docker's ages (go-units HumanDuration): "Less than a second", "About a minute", "3 hours", "2 weeks".</summary>
    internal static string HumanDuration(TimeSpan age)
    {
        double seconds = age.TotalSeconds;
        return seconds switch
        {
            < 1 => "Less than a second",
            < 2 => "1 second",
            < 60 => $"{(int)seconds} seconds",
            < 120 => "About a minute",
            < 3600 => $"{(int)(seconds / 60)} minutes",
            < 7200 => "About an hour",
            < 48 * 3600 => $"{(int)(seconds / 3600)} hours",
            < 7 * 24 * 3600 * 2 => $"{(int)(seconds / 86400)} days",
            < 30 * 24 * 3600 * 2 => $"{(int)(seconds / (7 * 86400))} weeks",
            < 365 * 24 * 3600 * 2 => $"{(int)(seconds / (30 * 86400))} months",
            _ => $"{(int)(seconds / (365 * 86400))} years",
        };
    }
}
