using System.Security.Cryptography;
using System.Text.RegularExpressions;

namespace Nestor.Containers.Engine;

/// <summary>Container ids and names as Docker makes them: an id is 32 random bytes in hexadecimal (64 digits, shown
/// truncated to 12); a name not given with <c>--name</c> is an adjective and a scientist's surname joined by an
/// underscore; a given name matches <c>[a-zA-Z0-9][a-zA-Z0-9_.-]+</c>.</summary>
public static partial class ContainerNames
{
    private static readonly string[] Adjectives =
    [
        "brave", "calm", "clever", "curious", "eager", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nimble",
        "patient", "quiet", "quick", "serene", "sharp", "steady", "tender", "vivid", "wise", "witty", "zealous", "bold",
    ];

    private static readonly string[] Surnames =
    [
        "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "faraday", "gauss", "hopper", "kepler",
        "knuth", "lamarr", "liskov", "lovelace", "maxwell", "meitner", "newton", "noether", "pascal", "ritchie",
        "shannon", "thompson", "turing",
    ];

    /// <summary>A new id: 64 hexadecimal digits. Like Docker, an id whose first 12 digits are all decimal is drawn
    /// again, so that a short id is never mistaken for a number.</summary>
    public static string NewId()
    {
        while (true)
        {
            string id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
            if (!id[..12].All(char.IsAsciiDigit))
            {
                return id;
            }
        }
    }

    /// <summary>A random name not in <paramref name="taken"/>; after a few collisions a digit is appended, as Docker
    /// does.</summary>
    public static string NewName(IReadOnlySet<string> taken)
    {
        for (int attempt = 0; ; attempt++)
        {
            string name = $"{Adjectives[RandomNumberGenerator.GetInt32(Adjectives.Length)]}_{Surnames[RandomNumberGenerator.GetInt32(Surnames.Length)]}";
            if (attempt >= 3)
            {
                name += RandomNumberGenerator.GetInt32(10).ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            if (!taken.Contains(name))
            {
                return name;
            }
        }
    }

    /// <summary>Whether <paramref name="name"/> is a valid container name.</summary>
    public static bool IsValid(string name) => ValidName().IsMatch(name);

    [GeneratedRegex("^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")]
    private static partial Regex ValidName();
}
