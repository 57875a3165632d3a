using System.Text;
using System.Text.RegularExpressions;

namespace Nestor.Containers.Build.Dockerfiles;

/// <summary>A path pattern as <c>.dockerignore</c> and COPY sources use them: Go's <c>filepath.Match</c> syntax
/// (<c>*</c> any run of characters but <c>/</c>, <c>?</c> one character but <c>/</c>, <c>[a-z]</c> and
/// <c>[^a-z]</c> classes, <c>\</c> quoting the next character) plus <c>**</c>, any number of directories (zero
/// included), as Docker's pattern matcher adds. Paths are relative, slash-separated.</summary>
public sealed class PathPattern
{
    private readonly Regex regex;

    private PathPattern(string text, Regex regex, bool hasWildcards)
    {
        Text = text;
        this.regex = regex;
        HasWildcards = hasWildcards;
        Segments = text.Split('/').Length;
    }

    /// <summary>The pattern as given.</summary>
    public string Text { get; }

    /// <summary>True when the pattern has <c>*</c>, <c>?</c> or <c>[</c> that are not quoted.</summary>
    public bool HasWildcards { get; }

    /// <summary>The number of path segments in the pattern.</summary>
    public int Segments { get; }

    /// <summary>True when <paramref name="path"/> matches the whole pattern.</summary>
    public bool IsMatch(string path) => regex.IsMatch(path);

    /// <summary>Compiles <paramref name="pattern"/>; throws <see cref="FormatException"/> for a malformed class
    /// (Go's <c>ErrBadPattern</c>).</summary>
    public static PathPattern Parse(string pattern)
    {
        var text = new StringBuilder("^");
        bool wildcards = false;
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            switch (c)
            {
                case '*':
                    wildcards = true;
                    if (i + 1 < pattern.Length && pattern[i + 1] == '*')
                    {
                        i++;
                        if (i + 1 < pattern.Length && pattern[i + 1] == '/')
                        {
                            i++;
                            text.Append("(?:.*/)?");
                        }
                        else
                        {
                            text.Append(".*");
                        }
                    }
                    else
                    {
                        text.Append("[^/]*");
                    }
                    break;
                case '?':
                    wildcards = true;
                    text.Append("[^/]");
                    break;
                case '[':
                    wildcards = true;
                    i = AppendClass(pattern, i, text);
                    break;
                case '\\':
                    if (i + 1 == pattern.Length)
                    {
                        throw new FormatException($"the pattern '{pattern}' ends in a lone '\\'");
                    }
                    text.Append(Regex.Escape(pattern[++i].ToString()));
                    break;
                default:
                    text.Append(Regex.Escape(c.ToString()));
                    break;
            }
        }
        text.Append('$');
        return new PathPattern(pattern, new Regex(text.ToString(), RegexOptions.CultureInvariant | RegexOptions.Singleline),
            wildcards);
    }

    /// <summary>Appends the class starting at <paramref name="start"/> (<c>[</c>) and returns the index of its <c>]</c>.</summary>
    private static int AppendClass(string pattern, int start, StringBuilder text)
    {
        int i = start + 1;
        text.Append('[');
        if (i < pattern.Length && pattern[i] == '^')
        {
            text.Append('^');
            i++;
        }
        bool empty = true;
        for (; i < pattern.Length; i++)
        {
            char c = pattern[i];
            if (c == ']' && !empty)
            {
                // A class never matches the separator (filepath.Match's classes are within one segment).
                text.Append("-[/]]");
                return i;
            }
            if (c == '\\')
            {
                if (++i == pattern.Length)
                {
                    break;
                }
                c = pattern[i];
            }
            else if (c == '-' && !empty && i + 1 < pattern.Length && pattern[i + 1] != ']')
            {
                text.Append('-');
                continue;
            }
            else if (c is '/' or ']' or '-')
            {
                throw new FormatException($"bad character class in the pattern '{pattern}'");
            }
            text.Append(c is '\\' or ']' or '[' or '^' or '-' ? "\\" + c : c.ToString());
            empty = false;
        }
        throw new FormatException($"the character class in the pattern '{pattern}' has no closing ']'");
    }
}
