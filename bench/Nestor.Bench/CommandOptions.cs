using System.Globalization;

namespace Nestor.Bench;

/// <summary>The command line of one benchmark mode: <c>--write</c>, <c>--help</c>, and <c>--name value</c> options
/// (those the mode accepts, or any when it accepts all), one of which may repeat.</summary>
internal sealed class CommandOptions
{
    private readonly Dictionary<string, string> values = new(StringComparer.Ordinal);

    public bool Write { get; private set; }

    /// <summary>Every value given to the repeatable option, in order.</summary>
    public List<string> Repeated { get; } = [];

    /// <summary>Parses <paramref name="args"/>. Returns null after printing the usage (for --help, exit 0) or an error
    /// (exit 2), with the status in <paramref name="exitCode"/>.</summary>
    public static CommandOptions? Parse(string[] args, string command, string usage, IReadOnlyCollection<string>? valueOptions,
        string? repeatedOption, out int exitCode)
    {
        var o = new CommandOptions();
        exitCode = 0;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (a == "--write")
            {
                o.Write = true;
            }
            else if (a is "-h" or "--help")
            {
                Console.WriteLine(usage);
                return null;
            }
            else if (a == repeatedOption && i + 1 < args.Length)
            {
                o.Repeated.Add(args[++i]);
            }
            else if (a.StartsWith("--", StringComparison.Ordinal) && i + 1 < args.Length &&
                     (valueOptions is null || valueOptions.Contains(a)))
            {
                o.values[a] = args[++i];
            }
            else
            {
                Console.Error.WriteLine($"{command}: unexpected argument '{a}'\n{usage}");
                exitCode = 2;
                return null;
            }
        }
        return o;
    }

    public bool TryGet(string name, out string value) => values.TryGetValue(name, out value!);

    public string Get(string name, string fallback) => values.GetValueOrDefault(name, fallback);

    /// <summary>A whole number of at least <paramref name="minimum"/>, or <paramref name="fallback"/> when not given.</summary>
    public int Whole(string name, int fallback, int minimum)
    {
        if (!values.TryGetValue(name, out var text))
        {
            return fallback;
        }
        return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value >= minimum
            ? value
            : throw new BenchmarkException($"{name} needs a whole number of at least {minimum}, not '{text}'");
    }
}
