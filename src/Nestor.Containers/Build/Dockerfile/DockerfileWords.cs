using System.Text;
using System.Text.Json;

namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>How the Dockerfile reference splits an instruction's arguments before any expansion: words at white
/// space with quotes and escapes kept in the word (ENV, LABEL, ARG), plain white-space splitting (COPY, EXPOSE),
/// and the JSON array of the exec form.</summary>
internal static class DockerfileWords
{
    /// <summary>Splits at white space outside quotes. Quotes and escape characters stay in the words (expansion
    /// removes them later); an escape makes the next character part of the word, even a quote or a space.</summary>
    public static List<string> SplitQuoted(string text, char escape)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        bool inWord = false;
        bool quoted = false;
        char quote = '\0';
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (!inWord)
            {
                if (char.IsWhiteSpace(c))
                {
                    continue;
                }
                inWord = true;
            }
            if (quote != '\0')
            {
                if (c == quote)
                {
                    quote = '\0';
                }
                else if (c == escape && quote != '\'')
                {
                    // Inside double quotes the escape keeps the next character (a quote) in the quoted text.
                    if (i + 1 == text.Length)
                    {
                        continue;
                    }
                    word.Append(c);
                    c = text[++i];
                }
                word.Append(c);
                continue;
            }
            if (char.IsWhiteSpace(c))
            {
                if (quoted || word.Length > 0)
                {
                    words.Add(word.ToString());
                }
                word.Clear();
                inWord = false;
                quoted = false;
                continue;
            }
            if (c is '\'' or '"')
            {
                quote = c;
                quoted = true;
            }
            else if (c == escape)
            {
                if (i + 1 == text.Length)
                {
                    continue;
                }
                word.Append(c);
                c = text[++i];
            }
            word.Append(c);
        }
        if (inWord && (quoted || word.Length > 0))
        {
            words.Add(word.ToString());
        }
        return words;
    }

    /// <summary>Splits at runs of white space, nothing else (COPY, ADD, EXPOSE, VOLUME, FROM arguments).</summary>
    public static List<string> SplitWhiteSpace(string text) =>
        [.. text.Split([' ', '\t', '\v', '\f', '\r', '\n'], StringSplitOptions.RemoveEmptyEntries)];

    /// <summary>The text as a JSON array of strings, or null when it is not one (the caller then uses shell form,
    /// as Docker does for <c>CMD [ 'single quotes' ]</c>).</summary>
    public static List<string>? TryJsonArray(string text)
    {
        if (!text.StartsWith('['))
        {
            return null;
        }
        try
        {
            using var document = JsonDocument.Parse(text);
            if (document.RootElement.ValueKind != JsonValueKind.Array)
            {
                return null;
            }
            var items = new List<string>();
            foreach (var element in document.RootElement.EnumerateArray())
            {
                if (element.ValueKind != JsonValueKind.String)
                {
                    return null;
                }
                items.Add(element.GetString()!);
            }
            return items;
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
