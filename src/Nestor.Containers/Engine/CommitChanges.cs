using System.Text;
using System.Text.Json;
using Nestor.Containers.Images;

namespace Nestor.Containers.Engine;

/// <summary>What <c>container commit</c> is asked for beyond the container's changes: the new image's name, the
/// history comment (<c>-m</c>), the author (<c>-a</c>) and Dockerfile instructions applied to its config
/// (<c>--change</c>).</summary>
public sealed record CommitOptions
{
    /// <summary>REPOSITORY[:TAG] for the new image; null leaves it unnamed (docker's &lt;none&gt;).</summary>
    public string? Reference { get; init; }

    /// <summary><c>-m</c>: the comment of the new history entry.</summary>
    public string? Message { get; init; }

    /// <summary><c>-a</c>: the image's author (image-spec config.md <c>author</c>), also on the history entry.</summary>
    public string? Author { get; init; }

    /// <summary><c>--change</c>: Dockerfile instructions, applied in order (<see cref="CommitChanges"/>).</summary>
    public IReadOnlyList<string> Changes { get; init; } = [];
}

/// <summary>The Dockerfile instructions <c>docker commit --change</c> accepts, applied to an image config: CMD,
/// ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME and WORKDIR, in the forms of the Dockerfile reference (the exec form
/// as a JSON array of strings, otherwise the shell form run by <c>/bin/sh -c</c>; <c>KEY=VALUE</c> pairs with
/// quotes, or the older <c>ENV KEY VALUE</c>).</summary>
public static class CommitChanges
{
    /// <summary>The instructions a commit can apply (Docker refuses the others: they need a build).</summary>
    public static readonly IReadOnlyList<string> Instructions = ["CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR"];

    /// <summary>Applies each instruction of <paramref name="changes"/> to <paramref name="config"/> in order.</summary>
    public static void Apply(ImageConfig config, IEnumerable<string> changes)
    {
        foreach (string change in changes)
        {
            ApplyOne(config, change);
        }
    }

    private static void ApplyOne(ImageConfig config, string change)
    {
        string text = change.Trim();
        int space = text.IndexOfAny([' ', '\t']);
        string instruction = (space < 0 ? text : text[..space]).ToUpperInvariant();
        string arguments = space < 0 ? "" : text[(space + 1)..].Trim();
        if (!Instructions.Contains(instruction))
        {
            throw new ContainerEngineException($"--change '{change}': {(instruction.Length == 0 ? "empty" : instruction)} is not an instruction commit can apply; use one of {string.Join(", ", Instructions)}");
        }
        if (arguments.Length == 0)
        {
            throw new ContainerEngineException($"--change '{change}': {instruction} needs arguments (for example --change 'CMD [\"sh\"]')");
        }
        switch (instruction)
        {
            case "CMD":
                config.Cmd = CommandWords(arguments);
                break;
            case "ENTRYPOINT":
                config.Entrypoint = CommandWords(arguments);
                break;
            case "ENV":
                var environment = config.Env ?? [];
                foreach (var (key, value) in Pairs(change, arguments, allowSpaceForm: true))
                {
                    environment.RemoveAll(existing => existing.StartsWith(key + "=", StringComparison.Ordinal) || existing == key);
                    environment.Add($"{key}={value}");
                }
                config.Env = environment;
                break;
            case "LABEL":
                var labels = config.Labels ?? [];
                foreach (var (key, value) in Pairs(change, arguments, allowSpaceForm: false))
                {
                    labels[key] = value;
                }
                config.Labels = labels;
                break;
            case "EXPOSE":
                var ports = config.ExposedPorts ?? [];
                foreach (string port in Words(change, arguments))
                {
                    ports[ExposedPort(change, port)] = EmptyObject();
                }
                config.ExposedPorts = ports;
                break;
            case "VOLUME":
                var volumes = config.Volumes ?? [];
                foreach (string volume in JsonArray(arguments) ?? Words(change, arguments))
                {
                    volumes[volume] = EmptyObject();
                }
                config.Volumes = volumes;
                break;
            case "USER":
                config.User = Words(change, arguments).Single();
                break;
            case "WORKDIR":
                string directory = Words(change, arguments).Single();
                // Dockerfile reference, WORKDIR: a relative path is relative to the previous WORKDIR.
                config.WorkingDir = directory.StartsWith('/') ? directory : Path.Combine("/" + (config.WorkingDir ?? "").Trim('/'), directory);
                break;
        }
    }

    /// <summary>The exec form (a JSON array of strings) as it is; anything else is the shell form, run by
    /// <c>/bin/sh -c</c> (Dockerfile reference, "Shell and exec form").</summary>
    private static List<string> CommandWords(string arguments) => JsonArray(arguments) ?? ["/bin/sh", "-c", arguments];

    private static List<string>? JsonArray(string arguments)
    {
        if (!arguments.StartsWith('['))
        {
            return null;
        }
        try
        {
            using var document = JsonDocument.Parse(arguments);
            if (document.RootElement.ValueKind != JsonValueKind.Array
                || document.RootElement.EnumerateArray().Any(element => element.ValueKind != JsonValueKind.String))
            {
                return null;
            }
            return [.. document.RootElement.EnumerateArray().Select(element => element.GetString()!)];
        }
        catch (JsonException)
        {
            return null; // not JSON: Docker takes it as the shell form too
        }
    }

    /// <summary><c>80</c>, <c>80/tcp</c> or <c>53/udp</c> as the config's key (<c>80/tcp</c>).</summary>
    private static string ExposedPort(string change, string port)
    {
        string[] parts = port.Split('/');
        string protocol = parts.Length > 1 ? parts[1].ToLowerInvariant() : "tcp";
        if (parts.Length > 2 || !ushort.TryParse(parts[0], out ushort number) || number == 0 || protocol is not ("tcp" or "udp" or "sctp"))
        {
            throw new ContainerEngineException($"--change '{change}': bad port '{port}'; give PORT or PORT/tcp|udp|sctp, PORT from 1 to 65535");
        }
        return $"{number}/{protocol}";
    }

    /// <summary>ENV and LABEL pairs: <c>KEY=VALUE …</c>, each part possibly quoted; ENV also takes the older
    /// <c>KEY VALUE</c> where the value is the rest of the line.</summary>
    private static List<(string Key, string Value)> Pairs(string change, string arguments, bool allowSpaceForm)
    {
        var words = Words(change, arguments);
        if (allowSpaceForm && !words[0].Contains('='))
        {
            int space = arguments.IndexOfAny([' ', '\t']);
            if (space < 0)
            {
                throw new ContainerEngineException($"--change '{change}': ENV needs a value (ENV KEY=VALUE or ENV KEY VALUE)");
            }
            return [(words[0], string.Join(' ', Words(change, arguments[(space + 1)..].Trim())))];
        }
        var pairs = new List<(string, string)>();
        foreach (string word in words)
        {
            int equals = word.IndexOf('=');
            if (equals <= 0)
            {
                throw new ContainerEngineException($"--change '{change}': '{word}' is not KEY=VALUE");
            }
            pairs.Add((word[..equals], word[(equals + 1)..]));
        }
        return pairs;
    }

    /// <summary>Words separated by blanks, with double or single quotes grouping and a backslash escaping the next
    /// character outside single quotes (the Dockerfile's word rules, without variable expansion).</summary>
    private static List<string> Words(string change, string text)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        bool inWord = false;
        char quote = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (quote != '\0')
            {
                if (c == quote)
                {
                    quote = '\0';
                }
                else if (c == '\\' && quote == '"' && i + 1 < text.Length)
                {
                    word.Append(text[++i]);
                }
                else
                {
                    word.Append(c);
                }
            }
            else if (c is ' ' or '\t')
            {
                if (inWord)
                {
                    words.Add(word.ToString());
                    word.Clear();
                    inWord = false;
                }
            }
            else
            {
                inWord = true;
                if (c is '"' or '\'')
                {
                    quote = c;
                }
                else if (c == '\\' && i + 1 < text.Length)
                {
                    word.Append(text[++i]);
                }
                else
                {
                    word.Append(c);
                }
            }
        }
        if (quote != '\0')
        {
            throw new ContainerEngineException($"--change '{change}': a quote ({quote}) is not closed");
        }
        if (inWord)
        {
            words.Add(word.ToString());
        }
        return words;
    }

    /// <summary>The empty JSON object that ExposedPorts and Volumes map each key to (image-spec config.md).</summary>
    private static JsonElement EmptyObject()
    {
        using var document = JsonDocument.Parse("{}");
        return document.RootElement.Clone();
    }
}
