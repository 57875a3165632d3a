using System.Text;

namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>Pieces of canonical instruction text: JSON arrays, quoted words, heredoc bodies.</summary>
internal static class CanonicalText
{
    /// <summary>A compact JSON array of strings (<c>["a","b"]</c>), escaped as RFC 8259 §7 requires.</summary>
    public static string JsonArray(IEnumerable<string> items)
    {
        var text = new StringBuilder("[");
        bool first = true;
        foreach (string item in items)
        {
            if (!first)
            {
                text.Append(',');
            }
            first = false;
            JsonString(text, item);
        }
        return text.Append(']').ToString();
    }

    private static void JsonString(StringBuilder text, string value)
    {
        text.Append('"');
        foreach (char c in value)
        {
            switch (c)
            {
                case '"': text.Append("\\\""); break;
                case '\\': text.Append("\\\\"); break;
                case '\n': text.Append("\\n"); break;
                case '\r': text.Append("\\r"); break;
                case '\t': text.Append("\\t"); break;
                default:
                    if (c < 0x20)
                    {
                        text.Append("\\u").Append(((int)c).ToString("x4", System.Globalization.CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        text.Append(c);
                    }
                    break;
            }
        }
        text.Append('"');
    }

    /// <summary>A literal value as one shell word that Docker's word lexer reads back as the same value: bare when
    /// it has nothing special in it, else in double quotes with <c>"</c>, <c>$</c> and the escape character
    /// escaped.</summary>
    public static string Quote(string value, char escape)
    {
        bool plain = value.Length > 0;
        foreach (char c in value)
        {
            if (char.IsWhiteSpace(c) || c is '"' or '\'' or '$' or '=' || c == escape)
            {
                plain = false;
                break;
            }
        }
        if (plain)
        {
            return value;
        }
        var text = new StringBuilder("\"");
        foreach (char c in value)
        {
            if (c is '"' or '$' || c == escape)
            {
                text.Append(escape);
            }
            text.Append(c);
        }
        return text.Append('"').ToString();
    }

    /// <summary>The heredoc bodies that follow a line: for each, a newline, its content, its delimiter.</summary>
    public static string Bodies(IReadOnlyList<Heredoc> heredocs)
    {
        if (heredocs.Count == 0)
        {
            return "";
        }
        var text = new StringBuilder();
        foreach (var heredoc in heredocs)
        {
            text.Append('\n').Append(heredoc.Content).Append(heredoc.Name);
        }
        return text.ToString();
    }
}
