using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace Nestor.Cli.Commands;

/// <summary>Options whose values are numbers, parsed by Nestor rather than by System.CommandLine's converters,
/// whose errors name .NET types ("as expected type 'System.Nullable`1[System.Double]'"): every message says what
/// the option wants, in the option's own terms.</summary>
internal static class TypedOptions
{
    /// <summary>A time limit in seconds: any positive number, however large (a limit longer than a timer can wait
    /// is waited for in steps), including fractions.</summary>
    public static Option<double?> Seconds(string name, string description) => new(name)
    {
        Description = description,
        CustomParser = result =>
        {
            string text = Single(result);
            if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) || double.IsNaN(seconds))
            {
                result.AddError($"{name} '{text}' is not a number of seconds: give e.g. {name} 10 (or 0.5)");
                return null;
            }
            if (seconds <= 0)
            {
                result.AddError($"{name} {text} is not a positive number of seconds: give e.g. {name} 10");
                return null;
            }
            return seconds;
        },
    };

    /// <summary>A number of <paramref name="unit"/> (fractions allowed), at least <paramref name="minimum"/>.</summary>
    public static Option<double?> Quantity(string name, string description, double minimum, string unit, string example) => new(name)
    {
        Description = description,
        CustomParser = result =>
        {
            string text = Single(result);
            if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !double.IsFinite(value) || value < minimum)
            {
                result.AddError($"{name} '{text}' is not a number of {unit} of at least {minimum.ToString(CultureInfo.InvariantCulture)}: give e.g. {name} {example}");
                return null;
            }
            return value;
        },
    };

    /// <summary>A whole number from <paramref name="minimum"/> to <paramref name="maximum"/>;
    /// <paramref name="expected"/> says what it is in errors ("a number of entries from 0 to 4096").</summary>
    public static Option<int?> Integer(string name, string description, int minimum, int maximum, string expected, string example) => new(name)
    {
        Description = description,
        CustomParser = result => (int?)Whole(result, name, minimum, maximum, expected, example),
    };

    /// <summary>A whole number from <paramref name="minimum"/> to <paramref name="maximum"/>, 64-bit.</summary>
    public static Option<long?> Long(string name, string description, long minimum, long maximum, string expected, string example) => new(name)
    {
        Description = description,
        CustomParser = result => Whole(result, name, minimum, maximum, expected, example),
    };

    /// <summary>Seconds as a <see cref="TimeSpan"/>: a limit beyond half of what TimeSpan holds (about 14,600
    /// years) is as good as none and becomes the largest TimeSpan.</summary>
    public static TimeSpan ToTimeSpan(double seconds) =>
        seconds < TimeSpan.MaxValue.TotalSeconds / 2 ? TimeSpan.FromSeconds(seconds) : TimeSpan.MaxValue;

    private static long? Whole(ArgumentResult result, string name, long minimum, long maximum, string expected, string example)
    {
        string text = Single(result);
        if (!long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long value) || value < minimum || value > maximum)
        {
            result.AddError($"{name} '{text}' is not {expected}: give e.g. {name} {example}");
            return null;
        }
        return value;
    }

    private static string Single(ArgumentResult result) => result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
}
